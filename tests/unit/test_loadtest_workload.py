"""What the load test sends: seeded requests from the shipped prompts or synthetic lengths."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from services.loadtest.config import DEFAULT_PROMPTS
from services.loadtest.workload import SYNTHETIC, PolicyWorkload, RewardWorkload, draw_length, load_rows


def test_draw_length_stays_in_range() -> None:
    rng = np.random.default_rng(0)
    lengths = [draw_length(100, 0.2, rng) for _ in range(2000)]
    assert min(lengths) >= 80 and max(lengths) <= 120
    assert min(lengths) < 85 and max(lengths) > 115  # the whole range is used
    assert {draw_length(64, 0.0, rng) for _ in range(50)} == {64}
    assert draw_length(1, 0.9, rng) >= 1


def test_synthetic_policy_requests() -> None:
    workload = PolicyWorkload(SYNTHETIC, vocab_size=500, input_len=32, output_len=16, range_ratio=0.5, seed=1)
    requests = [workload.next_request() for _ in range(50)]
    for request in requests:
        (prompt,) = request.prompts
        assert not prompt.text and 16 <= len(prompt.token_ids) <= 48
        assert all(0 <= t < 500 for t in prompt.token_ids)
        assert 8 <= request.sampling.max_tokens <= 24 and request.sampling.n == 1
    assert len({r.request_id for r in requests}) == 50
    again = PolicyWorkload(SYNTHETIC, vocab_size=500, input_len=32, output_len=16, range_ratio=0.5, seed=1)
    assert [again.next_request() for _ in range(50)] == requests


def test_dataset_policy_requests_cycle_through_every_prompt() -> None:
    rows = load_rows(DEFAULT_PROMPTS)
    workload = PolicyWorkload(DEFAULT_PROMPTS, vocab_size=10, output_len=24, temperature=0.5, seed=0)
    texts = [workload.next_request().prompts[0] for _ in range(len(rows))]
    assert sorted(p.text for p in texts) == sorted(r.prompt for r in rows)
    assert all(p.apply_chat_template for p in texts)
    request = workload.next_request()
    assert request.sampling.max_tokens == 24
    assert request.sampling.temperature == pytest.approx(0.5)
    plain = PolicyWorkload(DEFAULT_PROMPTS, vocab_size=10, chat_template=False)
    assert not plain.next_request().prompts[0].apply_chat_template


def test_reward_requests() -> None:
    workload = RewardWorkload(DEFAULT_PROMPTS, "similarity", items_per_request=4, seed=0)
    request = workload.next_request()
    assert request.model == "similarity" and len(request.items) == 4
    assert all(item.prompt and item.completion and item.HasField("reference") for item in request.items)
    synthetic = RewardWorkload(SYNTHETIC, "length", input_len=20, seed=0).next_request()
    assert len(synthetic.items[0].completion.split()) == 20


def test_load_rows_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"prompt": "ok"}) + "\n" + json.dumps({"text": "no prompt key"}) + "\n")
    with pytest.raises(ValueError, match=r"prompts.jsonl:2"):
        load_rows(path)
    with pytest.raises(ValueError, match="cannot read"):
        load_rows(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="no prompts"):
        load_rows(tmp_path / "empty.jsonl")
