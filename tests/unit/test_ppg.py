"""PPG: the auxiliary loss against hand-computed values, the phase schedule, LoRA pushes and exact save/load."""

from __future__ import annotations

import math

import pytest
import torch

from services.common.config import load_config
from services.common.sections import Lora, Optimizer, Sampling
from services.trainer import lora
from services.trainer.advantages import compute_advantages
from services.trainer.config import Objective, TrainerConfig
from services.trainer.learner import Learner
from services.trainer.ppg import PPGSettings, aux_token_losses
from services.trainer.rollout import Rollout, sequence_logprobs
from tests.support.tiny_models import save_tiny_llama

# ---- the auxiliary loss by hand ---------------------------------------------------


def test_aux_value_term_is_half_the_squared_error():
    values, returns = torch.tensor([[1.0, 0.0, -1.0]]), torch.tensor([[0.0, 2.0, -1.0]])
    same = torch.zeros(1, 3, 2)
    value_loss, clone_kl = aux_token_losses(values, returns, same, same, 1.0)
    assert torch.allclose(value_loss, torch.tensor([[0.5, 2.0, 0.0]]))
    assert torch.allclose(clone_kl, torch.zeros(1, 3))  # an unmoved policy costs nothing


def test_clone_kl_is_kl_from_the_old_to_the_new_distribution():
    # old: p = (1/2, 1/2); new: logits (ln 3, 0) -> q = (3/4, 1/4)
    # KL(p || q) = 1/2 ln((1/2)/(3/4)) + 1/2 ln((1/2)/(1/4)) = 1/2 ln(4/3) = 0.143841
    old = torch.zeros(1, 1, 2)
    new = torch.tensor([[[math.log(3.0), 0.0]]])
    _, clone_kl = aux_token_losses(torch.zeros(1, 1), torch.zeros(1, 1), old, new, 1.0)
    assert clone_kl.item() == pytest.approx(0.5 * math.log(4 / 3), abs=1e-6)
    # the direction matters: KL(q || p) = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.130812
    _, reverse = aux_token_losses(torch.zeros(1, 1), torch.zeros(1, 1), new, old, 1.0)
    assert reverse.item() == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5), abs=1e-6)


def test_clone_kl_uses_the_sampling_temperature():
    # at T = 2 the new logits (2 ln 3, 0) are the T = 1 logits (ln 3, 0): the same 0.143841
    old, new = torch.zeros(1, 1, 2), torch.tensor([[[2 * math.log(3.0), 0.0]]])
    _, clone_kl = aux_token_losses(torch.zeros(1, 1), torch.zeros(1, 1), old, new, 2.0)
    assert clone_kl.item() == pytest.approx(0.5 * math.log(4 / 3), abs=1e-6)


def test_gradients_reach_the_value_and_the_new_logits_only():
    values = torch.tensor([[1.0]], requires_grad=True)
    old = torch.zeros(1, 1, 2, requires_grad=True)
    new = torch.tensor([[[math.log(3.0), 0.0]]], requires_grad=True)
    value_loss, clone_kl = aux_token_losses(values, torch.tensor([[3.0]]), old, new, 1.0)
    (value_loss + clone_kl).sum().backward()
    assert values.grad.item() == pytest.approx(-2.0)  # d/dV 0.5 (V - R)^2 = V - R
    # d KL / d new_logits = q - p = (3/4 - 1/2, 1/4 - 1/2)
    assert torch.allclose(new.grad, torch.tensor([[[0.25, -0.25]]]))
    assert old.grad is None


# ---- settings -------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad", [{"policy_phases": 0}, {"aux_epochs": 0}, {"beta_clone": -1.0}, {"aux_learning_rate": -1e-3}]
)
def test_settings_refuse_bad_values(bad):
    with pytest.raises(ValueError, match="ppg"):
        PPGSettings(**bad)


def test_settings_are_flags(capsys):
    config = load_config(
        TrainerConfig, ["--objective.algorithm", "ppg", "--ppg.policy-phases", "3", "--ppg.beta-clone", "0.5"]
    )
    assert config.objective.algorithm == "ppg" and config.ppg.policy_phases == 3 and config.ppg.beta_clone == 0.5
    with pytest.raises(SystemExit):
        load_config(TrainerConfig, ["--help"])
    assert "--ppg.aux-epochs" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        load_config(TrainerConfig, ["--ppg.aux-epochs", "0"])
    assert "ppg.policy_phases and ppg.aux_epochs must be >= 1" in capsys.readouterr().err


# ---- the learner with a phase ------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama")


def make_learner(model_dir: str, lora_rank: int = 0, **ppg) -> Learner:
    config = TrainerConfig(
        model=model_dir,
        optimizer=Optimizer(learning_rate=1e-2, micro_batch_size=2, max_grad_norm=0.0),
        sampling=Sampling(samples_per_prompt=2),
        objective=Objective(algorithm="ppg", critic_learning_rate=1e-2),
        lora=Lora(rank=lora_rank),
        ppg=PPGSettings(**{"policy_phases": 2, "aux_epochs": 2, **ppg}),
    )
    torch.manual_seed(0)
    return Learner(config, model_dir, torch.device("cpu"))


def make_rollout(learner: Learner) -> Rollout:
    sequences = [([1, 2, 3], [4, 5, 6]), ([1, 2, 3], [7, 8]), ([9, 10], [11, 12, 13, 14]), ([9, 10], [15])]
    rollout = Rollout([(p, c, [0.0] * len(c)) for p, c in sequences], pad_id=0)
    with torch.no_grad():
        rollout.behaviour_logp = (
            sequence_logprobs(learner.policy, rollout.input_ids, rollout.attention_mask, 1.0) * rollout.mask
        )
    return rollout


def one_step(learner: Learner, rollout: Rollout, scores=(1.0, 0.0, 0.0, 1.0)) -> dict:
    prepared = learner.prepare(rollout)
    advantages, returns = compute_advantages("ppg", torch.tensor(scores), rollout.mask, 2, values=prepared.values)
    return learner.update(rollout, prepared, advantages, returns, 0.05)


def aux_values(learner: Learner, rollout: Rollout) -> torch.Tensor:
    with torch.no_grad():
        out = learner.policy(
            input_ids=rollout.input_ids, attention_mask=rollout.attention_mask, output_hidden_states=True
        )
        return learner.ppg.head(out.hidden_states[-1][:, :-1]).squeeze(-1) * rollout.mask


def test_the_auxiliary_phase_runs_every_n_pi_updates_and_fits_the_returns(model_dir):
    learner = make_learner(model_dir, policy_phases=2, aux_epochs=4)
    rollout = make_rollout(learner)
    first = one_step(learner, rollout)
    assert first["aux_phase"] == 0.0 and len(learner.ppg.buffer) == 1
    assert torch.equal(aux_values(learner, rollout), torch.zeros_like(rollout.mask))  # the head starts at 0
    second = one_step(learner, rollout)
    assert second["aux_phase"] == 1.0 and learner.ppg.phases == 1 and learner.ppg.buffer == []
    assert second["aux_value_loss"] > 0 and second["aux_critic_loss"] > 0 and second["aux_clone_kl"] >= 0
    # the policy's value head moved toward the critic's targets (the sample rewards, gamma = 1)
    values = aux_values(learner, rollout)
    assert float((values * rollout.mask).sum()) != 0.0
    third = one_step(learner, rollout)
    assert third["aux_phase"] == 0.0 and len(learner.ppg.buffer) == 1


def test_beta_clone_holds_the_policy_where_it_was(model_dir):
    def drift(beta: float) -> float:
        learner = make_learner(model_dir, policy_phases=1, aux_epochs=3, beta_clone=beta, aux_learning_rate=5e-2)
        rollout = make_rollout(learner)
        prepared = learner.prepare(rollout)
        advantages, returns = compute_advantages(
            "ppg", torch.tensor([1.0, 0.0, 0.0, 1.0]), rollout.mask, 2, values=prepared.values
        )
        before = {n: p.detach().clone() for n, p in learner.policy.named_parameters()}
        learner.update(rollout, prepared, torch.zeros_like(advantages), returns, 0.0)  # no policy-phase move
        with torch.no_grad():
            logits_before = torch.func.functional_call(learner.policy, before, (rollout.input_ids,)).logits
            logits_after = learner.policy(rollout.input_ids).logits
        _, kl = aux_token_losses(torch.zeros(1), torch.zeros(1), logits_before[:, :-1], logits_after[:, :-1], 1.0)
        return float((kl * rollout.mask).sum() / rollout.mask.sum())

    assert drift(10.0) < drift(0.0)


def test_lora_pushes_only_the_policy_and_the_value_head_trains(model_dir):
    learner = make_learner(model_dir, lora_rank=4, policy_phases=1)
    plain = make_learner(model_dir, lora_rank=4)
    plain_names = [name for name, _ in plain.push_tensors()]
    head_before = learner.ppg.head.weight.detach().clone()
    adapters_before = {k: v.detach().clone() for k, v in lora.adapter_state(learner.policy).items()}
    stats = one_step(learner, make_rollout(learner))
    assert stats["aux_phase"] == 1.0
    assert not torch.equal(learner.ppg.head.weight, head_before)
    assert any(not torch.equal(adapters_before[k], v) for k, v in lora.adapter_state(learner.policy).items())
    pushed = learner.push_tensors()
    assert [name for name, _ in pushed] == plain_names  # no value-head tensor ever goes to the policy
    merged = dict(lora.merged_tensors(learner.policy))
    assert all(torch.equal(tensor, merged[name]) for name, tensor in pushed)


@pytest.mark.parametrize("lora_rank", [0, 4], ids=["full", "lora"])
def test_save_and_load_mid_buffer_continue_identically(model_dir, tmp_path, lora_rank):
    first = make_learner(model_dir, lora_rank=lora_rank, policy_phases=3)
    rollout = make_rollout(first)
    one_step(first, rollout)
    one_step(first, rollout, scores=(0.0, 1.0, 1.0, 0.0))
    first.save(tmp_path)
    second = make_learner(model_dir, lora_rank=lora_rank, policy_phases=3)
    second.load(tmp_path)
    assert len(second.ppg.buffer) == 2 and second.ppg.phases == 0
    a, b = one_step(first, rollout), one_step(second, rollout)  # the third update runs the auxiliary phase
    assert a["aux_phase"] == b["aux_phase"] == 1.0
    assert a == b
    for (name, x), (_, y) in zip(first.policy.named_parameters(), second.policy.named_parameters()):
        assert torch.equal(x, y), name
    assert torch.equal(first.ppg.head.weight, second.ppg.head.weight)


def test_loading_a_checkpoint_without_the_auxiliary_state_fails_clearly(model_dir, tmp_path):
    ppo = make_learner(model_dir)
    ppo.ppg = None
    ppo.save(tmp_path)
    with pytest.raises(FileNotFoundError, match="not written by a ppg run"):
        make_learner(model_dir).load(tmp_path)
