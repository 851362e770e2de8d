"""Classifier reward on a tiny random BERT sequence classifier built at test time."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import BertConfig, BertModel  # noqa: E402

from services.reward.backend import RewardItem  # noqa: E402
from services.reward.classifier import ClassifierReward  # noqa: E402
from tests.integration.reward_fixtures import build_tiny_classifier  # noqa: E402

ITEMS = [
    RewardItem("Recommend a book.", "Try Dune."),
    RewardItem("Say hi.", "Hello there, how are you doing on this fine and sunny afternoon?"),
    RewardItem("", ""),
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_tiny_classifier(tmp_path_factory.mktemp("tiny-rm"))


@pytest.fixture(scope="module")
def reward(checkpoint):
    return ClassifierReward("tiny-rm", checkpoint)


def test_scores_are_the_raw_logit_of_the_text_pair(reward):
    scores = reward.score(ITEMS)
    assert len(scores) == len(ITEMS)
    for item, score in zip(ITEMS, scores, strict=True):
        encoded = reward.tokenizer([item.prompt], [item.completion], return_tensors="pt")  # one pair, unpadded
        with torch.inference_mode():
            logit = reward.model(**encoded).logits[0, 0].item()
        assert score == pytest.approx(logit, abs=1e-5)


def test_metadata_and_version(reward, checkpoint, tmp_path):
    assert (reward.kind, reward.uses_reference) == ("classifier", False)
    assert len(reward.version) == 12
    assert reward.version == ClassifierReward("again", checkpoint).version
    other = build_tiny_classifier(tmp_path / "other", seed=1)
    assert ClassifierReward("other", other).version != reward.version


def test_long_inputs_are_truncated(reward):
    (score,) = reward.score([RewardItem("word " * 500, "word " * 500)])
    assert isinstance(score, float)


def test_more_than_one_label_is_refused(tmp_path):
    path = build_tiny_classifier(tmp_path / "two-labels", num_labels=2)
    with pytest.raises(ValueError, match="num_labels=2"):
        ClassifierReward("bad", path)


def test_checkpoint_without_a_score_head_is_refused(tmp_path, checkpoint):
    path = tmp_path / "trunk-only"
    BertModel(BertConfig.from_pretrained(checkpoint)).save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        (path / name).write_bytes((checkpoint / name).read_bytes())
    with pytest.raises(ValueError, match="missing from the checkpoint"):
        ClassifierReward("bad", path)


def test_missing_or_pickled_checkpoints_are_refused(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        ClassifierReward("bad", tmp_path / "absent")
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="no \\*.safetensors"):
        ClassifierReward("bad", tmp_path)
