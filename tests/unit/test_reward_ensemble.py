"""Ensemble aggregation rules, validation and the [[ensembles]] tables of the models file."""

from __future__ import annotations

import numpy as np
import pytest

from services.reward.ensemble import EnsembleSpec, MemberRef, aggregate, ensemble_version
from services.reward.registry import ModelsFileError, parse_declarations

SCORES = [[1.0, 0.0, 3.0], [3.0, 0.0, -1.0], [2.0, 3.0, 1.0]]


def test_aggregations():
    array = np.array(SCORES)
    assert aggregate(SCORES, "mean") == pytest.approx(array.mean(axis=0).tolist())
    assert aggregate(SCORES, "min") == [1.0, 0.0, -1.0]
    assert aggregate(SCORES, "mean_minus_std", k=2.0) == pytest.approx(
        (array.mean(axis=0) - 2.0 * array.std(axis=0)).tolist()
    )
    # Agreeing members are not penalized; disagreeing ones are.
    assert aggregate([[1.0], [1.0]], "mean_minus_std") == [1.0]
    assert aggregate([[0.0], [2.0]], "mean_minus_std") == [0.0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"members": (MemberRef("a"),)}, "needs 2 to 16 members"),
        ({"members": (MemberRef("a"), MemberRef("a"))}, "must be distinct"),
        ({"aggregation": "median"}, "aggregation must be one of"),
        ({"k": -1.0}, "k must be a finite number >= 0"),
    ],
)
def test_invalid_ensembles(kwargs, message):
    values = {"name": "e", "members": (MemberRef("a"), MemberRef("b")), **kwargs}
    with pytest.raises(ValueError, match=message):
        EnsembleSpec(**values)


def test_a_model_twice_at_different_versions_is_allowed_and_versions_name_members():
    spec = EnsembleSpec("e", (MemberRef("a", "v1"), MemberRef("a", "v2")), "min")
    assert "a@v1" in spec.describe() and "minimum" in spec.describe()
    assert ensemble_version([("a", "v1"), ("b", "v2")], "mean", 1.0) != ensemble_version(
        [("a", "v1"), ("b", "v3")], "mean", 1.0
    )


MODELS = [{"name": "a", "kind": "rules", "target_words": 3}, {"name": "b", "kind": "rules", "target_words": 5}]


def test_models_file_ensembles():
    declared = parse_declarations(
        {
            "models": MODELS,
            "ensembles": [{"name": "ab", "members": ["a", "b"], "aggregation": "mean_minus_std", "k": 0.5}],
        }
    )
    (ensemble,) = declared.ensembles
    assert ensemble == EnsembleSpec("ab", (MemberRef("a"), MemberRef("b")), "mean_minus_std", 0.5)


@pytest.mark.parametrize(
    ("ensembles", "message"),
    [
        ([{"name": "ab", "members": ["a", "zzz"]}], "members \\['zzz'\\] are not declared"),
        ([{"name": "a", "members": ["a", "b"]}], "names must be unique; repeated: \\['a'\\]"),
        ([{"name": "ab", "members": ["a", "b"], "weights": [1, 2]}], "unknown keys \\['weights'\\]"),
        ([{"name": "ab", "members": "a,b"}], "members must be a list"),
        ([{"name": "ab", "members": ["a", "b"], "aggregation": "max"}], "aggregation must be one of"),
        ([{"name": "ab", "members": ["a"]}], "needs 2 to 16 members"),
        ({"name": "ab"}, "declare ensembles as \\[\\[ensembles\\]\\] tables"),
    ],
)
def test_invalid_models_file_ensembles(ensembles, message):
    with pytest.raises(ModelsFileError, match=message):
        parse_declarations({"models": MODELS, "ensembles": ensembles})


def test_per_model_batching_overrides():
    declared = parse_declarations(
        {"models": [{**MODELS[0], "max_batch_size": 8, "max_wait_ms": 1, "max_batch_tokens": 0}]}
    )
    spec = declared.models[0]
    assert (spec.max_batch_size, spec.max_wait_ms, spec.max_batch_tokens) == (8, 1.0, 0)
    with pytest.raises(ModelsFileError, match="max_batch_size must be an integer >= 1"):
        parse_declarations({"models": [{**MODELS[0], "max_batch_size": 0}]})
