"""Multi-task training: task files, weighted per-task drawing that resumes, per-task rewards and metrics."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest
import torch

from rlhf.v1 import policy_pb2
from services.common.config import load_config
from services.common.prompts import PromptRow
from services.trainer import metrics
from services.trainer.config import TrainerConfig
from services.trainer.tasks import (
    RunData,
    TaskRewards,
    TaskSampler,
    TaskScorer,
    TaskSpec,
    load_tasks,
    score_key,
    task_record,
)

TASKS = {
    "similarity": TaskSpec("similarity", ("similarity",), 3.0),
    "rules": TaskSpec("rules", ("length", "format"), 1.0, "critic"),
}
ROWS = [PromptRow(f"s{i}", None, "similarity") for i in range(5)] + [
    PromptRow(f"r{i}", None, "rules") for i in range(3)
]


def test_task_files_load_and_bad_ones_name_the_problem(tmp_path):
    path = tmp_path / "tasks.toml"
    path.write_text(
        '[tasks.a]\nreward_models = ["x", "y"]\nweight = 2\ntemplate = "t"\n[tasks.b]\nreward_models = "z"\n'
    )
    assert load_tasks(path) == {"a": TaskSpec("a", ("x", "y"), 2.0, "t"), "b": TaskSpec("b", ("z",), 1.0, "")}
    for text, message in [
        ("[tasks.a]\nweight = 1\n", "reward_models must be a non-empty list"),
        ("[tasks.a]\nreward_models = ['x']\nweight = 0\n", "weight must be a number > 0"),
        ("[tasks.a]\nreward_models = ['x']\nmodel = 'y'\n", "unknown keys \\['model'\\]"),
        ("[other]\n", "no \\[tasks.<name>\\] tables"),
    ]:
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            load_tasks(path)


def test_prompts_are_drawn_per_task_by_weight():
    sampler = TaskSampler(ROWS, TASKS, seed=0)
    drawn = [row.task for row in sampler.next_batch(400)]
    assert Counter(drawn)["similarity"] == 300  # weight 3 of 4, exactly
    # smooth: after every draw each task is within one draw of its share, so a run compared with a
    # single-task run "at the same number of samples" gave each task exactly its share
    for n in range(1, 401):
        assert abs(drawn[:n].count("similarity") - 0.75 * n) < 1
    even = {"a": TaskSpec("a", ("x",)), "b": TaskSpec("b", ("y",))}
    rows = [PromptRow("p", None, "a"), PromptRow("q", None, "b")]
    assert [row.task for row in TaskSampler(rows, even, seed=5).next_batch(8)] == ["a", "b"] * 4
    # each task visits its own rows in epochs: the first 5 similarity draws are its 5 rows
    fresh = TaskSampler(ROWS, TASKS, seed=0)
    similarity = [row.prompt for row in fresh.next_batch(40) if row.task == "similarity"][:5]
    assert sorted(similarity) == [f"s{i}" for i in range(5)]


def test_the_draw_count_alone_resumes_the_sampler():
    straight = TaskSampler(ROWS, TASKS, seed=3)
    straight.next_batch(13)
    expected = straight.next_batch(9)
    resumed = TaskSampler(ROWS, TASKS, seed=3)
    resumed.position = 13
    assert resumed.next_batch(9) == expected and resumed.position == 22


def test_rows_and_tasks_must_match():
    with pytest.raises(ValueError, match="tasks \\['\\(none\\)'\\] that the tasks file does not define"):
        TaskSampler([*ROWS, PromptRow("x", None)], TASKS, 0)
    with pytest.raises(ValueError, match="tasks \\['rules'\\] have no prompt rows"):
        TaskSampler(ROWS[:5], TASKS, 0)


def response_of(texts_per_prompt):
    return policy_pb2.GenerateResponse(
        results=[
            policy_pb2.PromptResult(samples=[policy_pb2.Sample(text=t, token_ids=[len(t), 1]) for t in texts])
            for texts in texts_per_prompt
        ]
    )


def test_each_sample_is_scored_by_its_tasks_models_only():
    calls = []

    def score(model, items):
        calls.append((model, [item.prompt for item in items]))
        return SimpleNamespace(scores=[float(len(item.completion)) for item in items], model=model, model_version="1")

    rows = [ROWS[0], ROWS[5]]
    scores, versions = TaskScorer(SimpleNamespace(score=score), TASKS)(
        rows, response_of([["a", "bb"], ["ccc", "dddd"]])
    )
    assert calls == [("similarity", ["s0", "s0"]), ("length", ["r0", "r0"]), ("format", ["r0", "r0"])]
    assert torch.equal(scores[score_key("rules", "length")][2:], torch.tensor([3.0, 4.0]))
    assert torch.isnan(scores[score_key("rules", "length")][:2]).all()
    assert versions == {"similarity": "similarity@1", "length": "length@1", "format": "format@1"}


def columns(similarity, length, fmt):
    nan = [float("nan")] * 2
    return {
        score_key("similarity", "similarity"): torch.tensor(similarity + nan),
        score_key("rules", "length"): torch.tensor(nan + length),
        score_key("rules", "format"): torch.tensor(nan + fmt),
    }


def test_rewards_are_combined_and_standardized_per_task():
    rewards = TaskRewards(TASKS, "mean", 1.0, "none", 0.0, "running")
    # similarity on [0, 1]; rules on [0, 10] (mean of length and format)
    out = rewards(columns([0.2, 0.4], [0.0, 10.0], [2.0, 8.0]))
    assert rewards.last_raw == pytest.approx({"similarity": 0.3, "rules": 5.0})
    # each task standardized by its own statistics: (x - mean) / std within the task -> -1, +1 for both
    assert out.tolist() == pytest.approx([-1.0, 1.0, -1.0, 1.0], abs=1e-4)
    plain = TaskRewards(TASKS, "mean", 1.0, "none", 0.0, "none")
    assert plain(columns([0.2, 0.4], [0.0, 10.0], [2.0, 8.0])).tolist() == pytest.approx([0.2, 0.4, 1.0, 9.0])


def test_task_statistics_round_trip_through_a_checkpoint():
    first = TaskRewards(TASKS, "mean", 1.0, "running", 0.0)
    first(columns([0.2, 0.4], [0.0, 10.0], [2.0, 8.0]))
    second = TaskRewards(TASKS, "mean", 1.0, "running", 0.0)
    second.load_state_dict(first.state_dict())
    later = columns([0.9, 0.1], [3.0, 4.0], [1.0, 1.0])
    assert torch.equal(first(later), second(later))


def test_the_step_record_and_prometheus_carry_the_task():
    rows = [ROWS[0], ROWS[5]]
    response = response_of([["a", "a"], ["ccc", "dddd"]])
    record = task_record(rows, response, torch.tensor([0.5, 0.5, -1.0, 1.0]), {"similarity": 0.3, "rules": 5.0}, 1)
    assert record["similarity"] == {
        "samples": 2,
        "reward_mean": 0.3,
        "reward_standardized_mean": 0.5,
        "distinct_n": 0.25,
        "zero_signal_groups": 1.0,
    }  # token ids [1, 1] twice
    assert record["rules"]["zero_signal_groups"] == 0.0 and record["rules"]["distinct_n"] == 0.75
    metrics.observe_step(
        {
            "step": 1,
            "weight_version": 1,
            "reward_mean": 0.0,
            "reward_std": 0.0,
            "kl": 0.0,
            "loss": 0.0,
            "entropy": 0.0,
            "policy_version_lag": 0,
            "seconds": {},
            "temperature": 0.9,
            "distinct_n": 0.6,
            "zero_signal_groups": 0.5,
            "tasks": record,
        },
        [],
    )
    assert metrics.TASK_REWARD_MEAN.labels("rules")._value.get() == 5.0
    assert metrics.ZERO_SIGNAL_GROUPS.labels("similarity")._value.get() == 1.0
    assert metrics.DISTINCT_N.labels("all")._value.get() == 0.6


def test_run_data_checks_names_at_start(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a", "task": "sim"}\n{"prompt": "b", "task": "rules"}\n')
    tasks = tmp_path / "tasks.toml"
    tasks.write_text(
        '[tasks.sim]\nreward_models = ["similarity"]\n[tasks.rules]\nreward_models = ["length"]\ntemplate = "t"\n'
    )
    templates = tmp_path / "templates.toml"
    templates.write_text('[templates.t]\nformat = "Rules: {prompt}"\n')
    argv = ["--prompts-file", str(prompts), "--tasks.file", str(tasks), "--templates.file", str(templates)]
    data = RunData.from_config(load_config(TrainerConfig, argv))
    config = load_config(TrainerConfig, argv)
    assert data.reward_models(config) == ("similarity", "length")
    prompt = data.templates.prompt(PromptRow("b", None, "rules"), apply_chat_template=True)
    assert (prompt.text, prompt.template) == ("Rules: b", "t")
    assert isinstance(data.rewards(config), TaskRewards)
    with pytest.raises(ValueError, match="rows name tasks \\['rules', 'sim'\\] but tasks.file is not set"):
        RunData.from_config(load_config(TrainerConfig, ["--prompts-file", str(prompts)]))
    with pytest.raises(ValueError, match="task rules: unknown template 't'"):
        RunData.from_config(load_config(TrainerConfig, argv[:4]))


def test_task_settings_are_validated(capsys):
    with pytest.raises(SystemExit):
        load_config(TrainerConfig, ["--tasks.normalize", "batch"])
    assert "tasks.normalize must be one of ['running', 'none']" in capsys.readouterr().err


def test_the_train_command_lists_the_settings_and_refuses_bad_files_in_one_line(tmp_path, capsys):
    """`rlhf-trainer train`: exploration, template and task settings in --help; a wrong data file stops the
    command before any model loads, with one line naming the file and the problem (not a traceback)."""
    from services.trainer.__main__ import main

    with pytest.raises(SystemExit) as help_exit:
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert help_exit.value.code == 0
    for flag in ("--exploration.temperature-schedule", "--templates.file", "--tasks.file", "--tasks.normalize"):
        assert flag in out
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a", "task": "ghost"}\n')
    tasks = tmp_path / "tasks.toml"
    tasks.write_text('[tasks.sim]\nreward_models = ["similarity"]\n')
    for argv, message in [
        (["--tasks.file", str(tmp_path / "missing.toml")], "missing.toml: cannot read it"),
        (["--prompts-file", str(prompts), "--tasks.file", str(tasks)], "rows name tasks \\['ghost'\\]"),
    ]:
        with pytest.raises(SystemExit, match=f"rlhf-trainer train: error: .*{message}"):
            main(["train", *argv])
