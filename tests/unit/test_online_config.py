"""The online loop takes the trainer's sections whole and trains with the trainer's own step.

The step runs for real (a tiny Llama, LoRA, the shared PolicyUpdate); only the canary's
Generate and the reward service's Score are stand-ins returning fixed protos.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from rlhf.v1 import policy_pb2, reward_pb2
from services.common.config import load_config
from services.online.config import TRAINER_ONLY_SECTIONS, OnlineConfig
from services.online.loop import OnlineTrainer
from services.online.prompts import LivePrompt
from services.trainer import lora, update
from services.trainer.config import TrainerConfig
from tests.support.tiny_models import save_tiny_llama


def _sections(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.metadata.get("section")}


def test_online_config_holds_every_trainer_section_but_the_listed_ones():
    missing = _sections(TrainerConfig) - _sections(OnlineConfig) - set(TRAINER_ONLY_SECTIONS)
    assert not missing, f"add these TrainerConfig sections to OnlineConfig (or say why not): {sorted(missing)}"
    assert set(TRAINER_ONLY_SECTIONS) <= _sections(TrainerConfig), "a listed section no longer exists"
    config = load_config(OnlineConfig, ["--objective.tis-cap", "1.5", "--optimizer.learning-rate", "0.02"])
    trainer = config.trainer_config("/m")
    for name in _sections(OnlineConfig) & _sections(TrainerConfig):
        assert getattr(trainer, name) is getattr(config, name), name  # the same objects, nothing copied by hand
    assert (trainer.objective.tis_cap, trainer.optimizer.learning_rate) == (1.5, 0.02)


def test_online_config_refuses_what_its_loop_cannot_do():
    with pytest.raises(SystemExit):
        load_config(OnlineConfig, ["--push.scope", "changed", "--lora.rank", "4"])
    with pytest.raises(SystemExit):
        load_config(OnlineConfig, ["--rewards.models", "a,b"])
    with pytest.raises(SystemExit):  # the trainer's own cross-section check: rloo compares samples of a prompt
        load_config(OnlineConfig, ["--objective.algorithm", "rloo", "--sampling.samples-per-prompt", "1"])


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama", with_tokenizer=True)


class _Canary:
    """Stands in for the canary replica's Generate: fixed completions at weight version 0."""

    def __init__(self) -> None:
        self.requests: list[policy_pb2.GenerateRequest] = []

    def generate(self, request: policy_pb2.GenerateRequest) -> policy_pb2.GenerateResponse:
        self.requests.append(request)
        results = []
        for p, prompt in enumerate(request.prompts):
            samples = [
                policy_pb2.Sample(
                    index=i,
                    text=f"s{p}{i}",
                    token_ids=[10 + i, 20 + p, 30 + i][: 2 + i % 2],
                    logprobs=[-1.0] * (2 + i % 2),
                    weight_version=0,
                )
                for i in range(request.sampling.n)
            ]
            results.append(policy_pb2.PromptResult(prompt_token_ids=list(prompt.token_ids), samples=samples))
        return policy_pb2.GenerateResponse(results=results)

    def close(self) -> None:
        pass


class _Scorer:
    def score(self, model: str, items: list) -> reward_pb2.ScoreResponse:
        return reward_pb2.ScoreResponse(
            scores=[float(i % 3) for i in range(len(items))], model=model, model_version="1"
        )

    def close(self) -> None:
        pass


def test_online_step_uses_the_algorithm_and_lora_set_in_the_online_config(tiny_model, tmp_path, monkeypatch):
    argv = [
        "--model", tiny_model, "--run.output-dir", str(tmp_path / "online"),
        "--objective.algorithm", "rloo", "--objective.kl-target", "0.01",
        "--lora.rank", "4", "--lora.targets", "q_proj,v_proj",
        "--sampling.prompts-per-step", "2", "--sampling.samples-per-prompt", "3", "--sampling.max-tokens", "3",
        "--optimizer.learning-rate", "0.05",
    ]  # fmt: skip
    config = load_config(OnlineConfig, argv, env_prefix="RLHF_ONLINE_")
    seen: list[str] = []
    real = update.compute_advantages

    def spy(algorithm, *args, **kwargs):
        seen.append(algorithm)
        return real(algorithm, *args, **kwargs)

    monkeypatch.setattr(update, "compute_advantages", spy)
    trainer = OnlineTrainer(config)
    try:
        assert lora.is_lora(trainer.learner.policy) and trainer.learner.reference is None
        trainable = {n for n, p in trainer.learner.policy.named_parameters() if p.requires_grad}
        assert trainable and all("lora" in n and ("q_proj" in n or "v_proj" in n) for n in trainable)
        trainer.canary, trainer.scorer = _Canary(), _Scorer()
        for ids in ((2, 3), (4, 5, 6)):
            trainer.prompts.add(LivePrompt(text=f"prompt {ids}", token_ids=ids))
        before = {n: p.detach().clone() for n, p in trainer.learner.policy.named_parameters()}
        record = trainer.rl_step(0, trainer.updates)
        trainer.save_checkpoint()
    finally:
        trainer.close()
    assert trainer.update.kl.value != 0.05  # the adaptive KL controller (objective.kl_target) moved
    resumed = OnlineTrainer(config)  # same output_dir: resumes, the step's state included
    try:
        assert resumed.resumed_from is not None and resumed.update.kl.value == trainer.update.kl.value
    finally:
        resumed.close()
    assert seen == ["rloo"]  # the trainer's step computed RLOO advantages
    assert not record["dropped"] and record["algorithm"] == "rloo" and record["lora_rank"] == 4
    sampling = trainer.canary.requests[0].sampling
    assert (sampling.n, sampling.max_tokens, len(trainer.canary.requests[0].prompts)) == (3, 3, 2)
    after = dict(trainer.learner.policy.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert changed and changed <= trainable  # only the adapters moved; the base stays the reference
