"""The prompt data sets: well-formed JSONL, no duplicate prompts, held-out disjoint from training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[2] / "data"
TRAIN = DATA / "book_reviews.jsonl"
HELDOUT = DATA / "book_reviews_heldout.jsonl"


def _load(path: Path) -> list[dict]:
    raw = path.read_bytes()
    raw.decode("ascii")  # plain ASCII throughout
    rows = []
    for number, line in enumerate(raw.decode("ascii").splitlines(), start=1):
        assert line.strip(), f"{path.name}:{number}: blank line"
        row = json.loads(line)
        assert isinstance(row, dict), f"{path.name}:{number}: not an object"
        rows.append(row)
    return rows


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


@pytest.mark.parametrize(("path", "count"), [(TRAIN, 48), (HELDOUT, 16)])
def test_rows_are_well_formed(path: Path, count: int) -> None:
    rows = _load(path)
    assert len(rows) == count
    for number, row in enumerate(rows, start=1):
        assert set(row) == {"prompt", "reference"}, f"{path.name}:{number}: keys {sorted(row)}"
        for key in ("prompt", "reference"):
            assert isinstance(row[key], str) and row[key].strip() == row[key] and row[key], (
                f"{path.name}:{number}: {key}"
            )
        assert 10 <= len(row["prompt"]) <= 200, f"{path.name}:{number}: prompt length"
        assert 80 <= len(row["reference"]) <= 700, f"{path.name}:{number}: reference length"
        assert row["reference"].endswith((".", "!")), f"{path.name}:{number}: reference is not whole sentences"


@pytest.mark.parametrize("path", [TRAIN, HELDOUT])
def test_no_duplicates(path: Path) -> None:
    rows = _load(path)
    prompts = [_norm(row["prompt"]) for row in rows]
    references = [_norm(row["reference"]) for row in rows]
    assert len(set(prompts)) == len(prompts), "duplicate prompts"
    assert len(set(references)) == len(references), "duplicate references"


def test_heldout_disjoint_from_training() -> None:
    train = {_norm(row["prompt"]) for row in _load(TRAIN)}
    heldout = {_norm(row["prompt"]) for row in _load(HELDOUT)}
    assert not train & heldout
    train_refs = {_norm(row["reference"]) for row in _load(TRAIN)}
    assert not train_refs & {_norm(row["reference"]) for row in _load(HELDOUT)}


def test_prompts_use_varied_phrasing() -> None:
    openings = {" ".join(row["prompt"].split()[:3]).lower() for row in _load(TRAIN)}
    assert len(openings) >= 8
