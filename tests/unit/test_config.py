"""The config loader: defaults < TOML < environment < flags, for flat settings and for sections."""

from dataclasses import dataclass

import pytest

from services.common.config import build, describe, env_names, load_config, option, section, to_flags
from services.online.config import OnlineConfig
from services.trainer.config import TrainerConfig


@dataclass(frozen=True)
class Example:
    """Example settings."""

    name: str = option("a", "a name")
    count: int = option(1, "a count")
    ratio: float = option(0.5, "a ratio")
    enabled: bool = option(False, "a switch")


@dataclass(frozen=True)
class Inner:
    """A section."""

    max_tokens: int = option(48, "tokens")
    tags: tuple[str, ...] = option(("x",), "tags")

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError("inner.max_tokens must be >= 1")


@dataclass(frozen=True)
class Outer:
    """Settings with sections."""

    steps: int = option(3, "steps")
    sampling: Inner = section(Inner(max_tokens=16), "the sampling section, with this config's defaults")


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
    assert "unknown setting 'colour' at the top level" in capsys.readouterr().err
    monkeypatch.setenv("X_ENABLED", "maybe")
    with pytest.raises(SystemExit):
        load_config(Example, [], env_prefix="X_")


def test_section_precedence_default_toml_env_flag(tmp_path, monkeypatch):
    path = tmp_path / "c.toml"
    path.write_text('steps = 5\n[sampling]\nmax_tokens = 20\ntags = ["a", "b"]\n')
    assert load_config(Outer, []).sampling == Inner(max_tokens=16)  # the composing config's default
    assert load_config(Outer, ["--config", str(path)]).sampling == Inner(max_tokens=20, tags=("a", "b"))
    monkeypatch.setenv("P_SAMPLING__MAX_TOKENS", "30")
    from_env = load_config(Outer, ["--config", str(path)], env_prefix="P_")
    assert (from_env.steps, from_env.sampling.max_tokens, from_env.sampling.tags) == (5, 30, ("a", "b"))
    from_flag = load_config(Outer, ["--config", str(path), "--sampling.max-tokens", "40"], env_prefix="P_")
    assert from_flag.sampling.max_tokens == 40
    assert "  sampling.max_tokens=40" in describe(from_flag).splitlines()


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            "[sampling]\nmax_token = 1\n",
            "unknown setting 'sampling.max_token' at [sampling] (known there: max_tokens, tags)",
        ),
        ("[sampler]\nmax_tokens = 1\n", "unknown setting 'sampler' at the top level"),
        ("sampling = 3\n", "sampling is a section: write it as a table [sampling]"),
        ("[steps]\nx = 1\n", "steps is a setting, not a table"),
        ("[sampling]\nmax_tokens = 0\n", "inner.max_tokens must be >= 1"),
    ],
)
def test_bad_tables_are_refused_with_the_path(tmp_path, capsys, toml, message):
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(SystemExit):
        load_config(Outer, ["--config", str(path)])
    assert message in capsys.readouterr().err


def test_help_lists_every_setting_with_default_and_env(capsys):
    with pytest.raises(SystemExit):
        load_config(TrainerConfig, ["--help"], env_prefix="RLHF_TRAINER_", prog="rlhf-trainer train")
    text = " ".join(capsys.readouterr().out.split())
    for env, dotted in env_names(TrainerConfig, "RLHF_TRAINER_").items():
        flag = "--" + dotted.replace("_", "-")
        assert flag in text and f"env {env};" in text, dotted
    assert "--sampling.max-tokens INT" in text and "[env RLHF_TRAINER_SAMPLING__MAX_TOKENS; default 48]" in text
    assert "--lora.rank INT" in text and "--objective.algorithm STR" in text and "--steps INT" in text


def test_trainer_flag_toml_table_and_env_set_the_same_field(tmp_path, monkeypatch):
    """Acceptance: `rlhf-trainer train --sampling.max-tokens 64`, `[sampling] max_tokens = 64` and
    RLHF_TRAINER_SAMPLING__MAX_TOKENS=64 all set TrainerConfig.sampling.max_tokens."""

    def parse(argv: list[str]) -> TrainerConfig:
        return load_config(TrainerConfig, argv, env_prefix="RLHF_TRAINER_", prog="rlhf-trainer train")

    assert parse([]).sampling.max_tokens == 48
    by_flag = parse(["--sampling.max-tokens", "64"])
    path = tmp_path / "train.toml"
    path.write_text("[sampling]\nmax_tokens = 64\n")
    by_file = parse(["--config", str(path)])
    monkeypatch.setenv("RLHF_TRAINER_SAMPLING__MAX_TOKENS", "64")
    by_env = parse([])
    assert by_flag == by_file == by_env == build(TrainerConfig, {"sampling.max_tokens": 64})
    assert by_flag.sampling.max_tokens == 64 and by_flag.sampling.temperature == 1.0  # the rest keeps its defaults


def test_sections_keep_each_programs_defaults():
    """Run is one section class; the online loop gives it its own output directory."""
    assert TrainerConfig().run.output_dir == "runs/train"
    online = load_config(OnlineConfig, ["--run.seed", "7"], env_prefix="RLHF_ONLINE_")
    assert (online.run.output_dir, online.run.seed) == ("runs/online", 7)
    assert online.rewards.model == "online-rm"


def test_build_refuses_unknown_paths_and_runs_the_checks():
    with pytest.raises(ValueError, match=r"has no settings \['sampling.max_token'\]"):
        build(TrainerConfig, {"sampling.max_token": 3})
    with pytest.raises(ValueError, match="sampling.temperature must be > 0"):
        build(TrainerConfig, {"sampling.temperature": 0.0})
    assert build(Outer, {"sampling.max_tokens": 2}).sampling == Inner(max_tokens=2)


def test_env_names_use_the_section_separator():
    names = env_names(TrainerConfig, "RLHF_TRAINER_")
    assert names["RLHF_TRAINER_SAMPLING__MAX_TOKENS"] == "sampling.max_tokens"
    assert names["RLHF_TRAINER_PUSH__NCCL_MASTER_PORT"] == "push.nccl_master_port"
    assert names["RLHF_TRAINER_STEPS"] == "steps"


def test_section_needs_an_instance():
    with pytest.raises(TypeError):
        section(Inner, "a class, not an instance")


def test_to_flags_round_trips_every_setting():
    """What a test or demo uses to start a program with a config it built."""
    online = build(
        OnlineConfig,
        {
            "objective.algorithm": "rloo",
            "lora.rank": 4,
            "lora.targets": ("q_proj",),
            "resume": False,
            "canary.window_s": 30.0,
            "run.output_dir": "/tmp/x y",
        },
    )
    assert load_config(OnlineConfig, to_flags(online)) == online
    assert "--lora.targets=q_proj" in to_flags(online) and "--no-resume" in to_flags(online)
    trainer = TrainerConfig()
    assert load_config(TrainerConfig, to_flags(trainer)) == trainer


def test_the_trainer_cli_reads_section_flags(capsys):
    """`rlhf-trainer train --sampling.max-tokens ...` goes through the nested loader (the check fires before any
    model or service is touched)."""
    from services.trainer.__main__ import main

    with pytest.raises(SystemExit):
        main(["train", "--sampling.max-tokens", "0"])
    assert "sampling.prompts_per_step, samples_per_prompt and max_tokens must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--max-tokens", "64"])  # the old flat flag is gone, not silently ignored
    assert "unrecognized arguments: --max-tokens 64" in capsys.readouterr().err
