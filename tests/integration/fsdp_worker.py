"""A few learner updates on a fixed synthetic rollout; run plainly or under torchrun (test_fsdp.py).

`python tests/integration/fsdp_worker.py MODEL_DIR OUT_DIR` writes OUT_DIR/weights.safetensors
(the final full weights, gathered by rank 0 under torchrun) and OUT_DIR/stats.json
(per-step learner stats and, sharded, the share of the weights rank 0 holds).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from services.common.config import build
from services.trainer.advantages import compute_advantages
from services.trainer.config import TrainerConfig
from services.trainer.distributed import world_from_env
from services.trainer.rollout import Rollout
from services.trainer.sharded import build_learner, follow

STEPS = 3
GROUP = 4


def synthetic_rollout(vocab: int = 49152, rows: int = 8) -> tuple[Rollout, torch.Tensor]:
    """Prompts and completions of different lengths (so rows pad differently), engine logprobs, scores."""
    g = torch.Generator().manual_seed(1234)
    sequences = []
    for row in range(rows):
        prompt = torch.randint(1, vocab, (5 + row % 3,), generator=g).tolist()
        completion = torch.randint(1, vocab, (4 + (row * 5) % 7,), generator=g).tolist()
        logprobs = (-3.0 * torch.rand(len(completion), generator=g) - 8.0).tolist()
        sequences.append((prompt, completion, logprobs))
    scores = torch.randn(rows, generator=g)
    return Rollout(sequences, pad_id=0), scores


def main(model_dir: str, out_dir: str) -> None:
    config = build(
        TrainerConfig,
        {  # checked when made: under torchrun, against what sharding supports
            "model": model_dir,
            "sampling.prompts_per_step": 2,
            "sampling.samples_per_prompt": GROUP,
            "steps": STEPS,
            "optimizer.learning_rate": 1e-3,
            "optimizer.micro_batch_size": 2,
            "objective.ppo_epochs": 2,
            "objective.kl_coef": 0.05,
            "optimizer.max_grad_norm": 1.0,
        },
    )
    torch.manual_seed(0)
    if world_from_env().rank > 0:
        follow(config)
        return
    learner = build_learner(config, model_dir, torch.device("cpu"))
    rollout, scores = synthetic_rollout()
    records = []
    for _ in range(STEPS):
        prepared = learner.prepare(rollout)
        advantages, _ = compute_advantages("grpo", scores, rollout.mask, GROUP)
        records.append(learner.update(rollout, prepared, advantages, None, config.objective.kl_coef))
    weights = dict(learner.push_tensors(None, torch.float32))
    local = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in learner.policy.parameters())
    learner.close()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out / "weights.safetensors"))
    full = sum(t.numel() for t in weights.values())
    (out / "stats.json").write_text(json.dumps({"steps": records, "local_share": local / full}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
