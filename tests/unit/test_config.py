from dataclasses import dataclass

import pytest

from services.common.config import describe, load_config, option


@dataclass(frozen=True)
class Example:
    """Example settings."""

    name: str = option("a", "a name")
    count: int = option(1, "a count")
    ratio: float = option(0.5, "a ratio")
    enabled: bool = option(False, "a switch")


def test_defaults_file_env_flags_precedence(tmp_path, monkeypatch):
    path = tmp_path / "c.toml"
    path.write_text('name = "file"\ncount = 2\nratio = 0.25\n')
    monkeypatch.setenv("X_COUNT", "3")
    config = load_config(Example, ["--config", str(path), "--ratio", "0.75", "--enabled"], env_prefix="X_")
    assert config == Example(name="file", count=3, ratio=0.75, enabled=True)
    assert "count=3" in describe(config)


def test_bad_values_and_unknown_keys_fail_clearly(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit):
        load_config(Example, ["--count", "many"])
    assert "count: cannot read 'many' as int" in capsys.readouterr().err
    path = tmp_path / "c.toml"
    path.write_text("colour = 1\n")
    with pytest.raises(SystemExit):
        load_config(Example, ["--config", str(path)])
    assert "unknown settings ['colour']" in capsys.readouterr().err
    monkeypatch.setenv("X_ENABLED", "maybe")
    with pytest.raises(SystemExit):
        load_config(Example, [], env_prefix="X_")
