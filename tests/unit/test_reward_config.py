"""RewardConfig loading and the models TOML validation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from services.common.config import load_config
from services.reward.__main__ import main
from services.reward.config import RewardConfig
from services.reward.registry import DEFAULT_SPECS, ModelsFileError, build_model, load_specs, parse_specs
from services.reward.rules import RulesConfig, RulesReward


def _load(argv: list[str]) -> RewardConfig:
    return load_config(RewardConfig, argv, "RLHF_REWARD_", prog="rlhf-reward")


def test_defaults_flags_and_environment(monkeypatch):
    config = _load([])
    assert (config.port, config.metrics_port, config.device, config.models_file) == (50052, 9102, "cpu", "")
    assert (config.max_batch_size, config.max_wait_ms, config.max_queue_items) == (32, 5.0, 4096)
    assert (config.max_items_per_request, config.max_text_chars) == (1024, 20000)
    monkeypatch.setenv("RLHF_REWARD_MAX_BATCH_SIZE", "8")
    config = _load(["--max-wait-ms", "2.5", "--models-file", "m.toml"])
    assert (config.max_batch_size, config.max_wait_ms, config.models_file) == (8, 2.5, "m.toml")


def test_every_field_is_documented():
    assert all(f.metadata.get("help") for f in dataclasses.fields(RewardConfig))


@pytest.mark.parametrize(
    "argv",
    [
        ["--max-batch-size", "0"],
        ["--max-wait-ms", "-1"],
        ["--max-items-per-request", "5000"],  # more than max_queue_items could ever hold
        ["--max-text-chars", "many"],
    ],
)
def test_invalid_settings_stop_with_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _load(argv)
    assert exit_info.value.code == 2
    assert "rlhf-reward: error:" in capsys.readouterr().err


def test_empty_models_file_hosts_only_similarity():
    assert load_specs("") == DEFAULT_SPECS
    assert [(s.name, s.kind, s.path) for s in DEFAULT_SPECS] == [("similarity", "similarity", None)]


def test_models_file_is_parsed_with_paths_relative_to_it(tmp_path: Path):
    models_file = tmp_path / "models.toml"
    models_file.write_text(
        """
[[models]]
name = "similarity"
kind = "similarity"
path = ""

[[models]]
name = "rm"
kind = "classifier"
path = "checkpoints/rm"
description = "our reward model"

[[models]]
name = "length"
kind = "rules"
target_words = 60
required_words = ["book"]
banned_words = ["hate"]
"""
    )
    similarity, rm, length = load_specs(str(models_file))
    assert (similarity.kind, similarity.path) == ("similarity", None)
    assert (rm.kind, rm.path, rm.description) == (
        "classifier",
        (tmp_path / "checkpoints/rm").resolve(),
        "our reward model",
    )
    assert length.rules == RulesConfig(target_words=60, required_words=("book",), banned_words=("hate",))
    assert isinstance(build_model(length), RulesReward)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({}, "expected at least one \\[\\[models\\]\\] table"),
        ({"models": []}, "expected at least one"),
        ({"model": [{"name": "a", "kind": "rules"}]}, "unknown top-level keys \\['model'\\]"),
        ({"models": [{"kind": "similarity"}]}, "models\\[0\\]: name must be"),
        ({"models": [{"name": "a b", "kind": "similarity"}]}, "name must be"),
        ({"models": [{"name": "a", "kind": "magic"}]}, "models\\[0\\] \\('a'\\): kind must be one of"),
        (
            {"models": [{"name": "a", "kind": "similarity", "pth": "x"}]},
            "unknown keys \\['pth'\\] for kind 'similarity'",
        ),
        ({"models": [{"name": "a", "kind": "classifier"}]}, "a classifier needs path"),
        ({"models": [{"name": "a", "kind": "classifier", "path": 3}]}, "path must be a string"),
        (
            {"models": [{"name": "a", "kind": "rules", "path": "x", "target_words": 3}]},
            "unknown rules keys \\['path'\\]",
        ),
        ({"models": [{"name": "a", "kind": "rules", "target_words": "3"}]}, "models\\[0\\] \\('a'\\): target_words"),
        ({"models": [{"name": "a", "kind": "rules"}]}, "declares no rules"),
        ({"models": [{"name": "a", "kind": "similarity", "description": 1}]}, "description must be a string"),
        (
            {"models": [{"name": "a", "kind": "similarity"}, {"name": "a", "kind": "similarity"}]},
            "must be unique; repeated: \\['a'\\]",
        ),
    ],
)
def test_invalid_models_files_are_rejected(document, message):
    with pytest.raises(ModelsFileError, match=message):
        parse_specs(document, source="models.toml")


def test_unreadable_models_files_are_rejected(tmp_path: Path):
    with pytest.raises(ModelsFileError, match="No such file"):
        load_specs(str(tmp_path / "absent.toml"))
    broken = tmp_path / "broken.toml"
    broken.write_text("[[models]\nname=")
    with pytest.raises(ModelsFileError, match="broken.toml"):
        load_specs(str(broken))


def test_main_refuses_a_bad_models_file_before_serving(tmp_path: Path, caplog):
    bad = tmp_path / "models.toml"
    bad.write_text('[[models]]\nname = "x"\nkind = "classifier"\n')
    assert main(["--models-file", str(bad), "--port", "0", "--metrics-port", "0"]) == 2
    assert "a classifier needs path" in caplog.text


def test_unavailable_cuda_stops_startup():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        build_model(DEFAULT_SPECS[0], device="cuda")


def test_bad_quotas_file_stops_startup(tmp_path: Path, caplog):
    bad = tmp_path / "quotas.toml"
    bad.write_text("[tenants.a]\nrate = 3\n")
    assert main(["--quotas-file", str(bad), "--port", "0", "--metrics-port", "0"]) == 2
    assert "tenants.a: unknown keys ['rate']" in caplog.text


@pytest.mark.parametrize(
    "argv",
    [
        ["--max-batch-tokens", "-1"],
        ["--keep-previous-versions", "-1"],
        ["--drain-timeout-s", "0"],
        ["--tenant-items-per-s", "-5"],
        ["--tenant-max-concurrent-requests", "-1"],
        ["--torch-threads", "-2"],
    ],
)
def test_invalid_new_settings_stop_with_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _load(argv)
    assert exit_info.value.code == 2
    assert "rlhf-reward: error:" in capsys.readouterr().err


def test_versioning_and_quota_defaults():
    config = _load([])
    assert (config.max_batch_tokens, config.keep_previous_versions, config.admin) == (16384, 1, True)
    assert (config.tenant_items_per_s, config.tenant_burst_items, config.tenant_max_concurrent_requests) == (0, 0, 0)
