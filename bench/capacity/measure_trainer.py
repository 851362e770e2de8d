"""Trainer throughput on this machine, measured alone: one RL update of the step's shape, no services.

    flock /tmp/heavy.lock .venv/bin/python -m bench.capacity.measure_trainer

The capacity model predicts `make bench-step`'s train phase from a per-component
rate, so that rate must come from a run that is not the step benchmark itself: here
the same Learner (reference forward, policy forward/backward, AdamW) updates on a
synthetic rollout of the step's shape (prompts from the training file through the
chat template, `max_tokens` completion tokens, GRPO groups). Writes
bench/results/capacity.trainer.json: sequence tokens per second of one update.

Run it on a quiet machine (the lock keeps other benchmarks off; `load_average_at_start/end` say
how quiet it was) with torch's default threads, as the trainer in bench-step runs: the model takes
`tokens_per_s`, the wall rate. `tokens_per_cpu_s` is recorded beside it; with `--threads 1` on a
loaded machine it was the fallback, and scaling it to both cores overpredicted the step's train
phase by 25%.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from pathlib import Path

import torch

from bench.machine import RESULTS, machine
from services.common.model_store import DEFAULT_CACHE, prepare_smollm2
from services.trainer.advantages import compute_advantages
from services.trainer.config import TrainerConfig
from services.trainer.learner import Learner
from services.trainer.rollout import Rollout

log = logging.getLogger(__name__)
OUT = RESULTS / "capacity.trainer.json"


def setting(config, name: str):
    """A setting by name, at the top of the config or in one of its sections (the config is being composed)."""
    if hasattr(config, name):
        return getattr(config, name)
    for value in vars(config).values():
        if hasattr(value, "__dataclass_fields__") and hasattr(value, name):
            return getattr(value, name)
    raise AttributeError(f"TrainerConfig has no setting {name!r}")


def synthetic_rollout(tokenizer, prompts: list[str], samples: int, max_tokens: int, seed: int) -> Rollout:
    """The step's batch shape: real chat-templated prompts, random completion tokens of full length."""
    generator = torch.Generator().manual_seed(seed)
    sequences = []
    for prompt in prompts:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for _ in range(samples):
            completion = torch.randint(0, tokenizer.vocab_size, (max_tokens,), generator=generator).tolist()
            sequences.append((ids, completion, [-1.0] * max_tokens))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return Rollout(sequences, pad)


def update_once(learner: Learner, config: TrainerConfig, rollout: Rollout, seed: int) -> None:
    """What the train phase of a step does: reference logprobs, advantages, one optimizer step."""
    rewards = torch.randn(len(rollout), generator=torch.Generator().manual_seed(seed))
    prepared = learner.prepare(rollout)
    advantages, returns = compute_advantages(
        setting(config, "algorithm"),
        rewards,
        rollout.mask,
        setting(config, "samples_per_prompt"),
        None,
        prepared.values,
        setting(config, "gamma"),
        setting(config, "gae_lambda"),
    )
    learner.update(rollout, prepared, advantages, returns, setting(config, "kl_coef"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="Updates timed (the first one warms up and is left out).")
    parser.add_argument("--threads", type=int, default=0, help="torch threads of the update (0: torch's default).")
    parser.add_argument("--out", type=Path, default=OUT, help="Result file.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    from transformers import AutoTokenizer

    cores = os.cpu_count() or 1
    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = str(prepare_smollm2(DEFAULT_CACHE))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = TrainerConfig(model=model_dir)
    per_step, samples = setting(config, "prompts_per_step"), setting(config, "samples_per_prompt")
    max_tokens = setting(config, "max_tokens")
    learner = Learner(config, model_dir, torch.device("cpu"))
    with open(config.prompts_file, encoding="utf-8") as handle:
        rows = [json.loads(line)["prompt"] for line in handle if line.strip()]
    seconds, tokens, cpu = [], [], []
    load_start = os.getloadavg()
    for index in range(args.rounds):
        prompts = rows[index * per_step : (index + 1) * per_step]
        rollout = synthetic_rollout(tokenizer, prompts, samples, max_tokens, index)
        started, cpu_started = time.perf_counter(), time.process_time()
        update_once(learner, config, rollout, index)
        seconds.append(time.perf_counter() - started)
        cpu.append(time.process_time() - cpu_started)
        tokens.append(int(rollout.attention_mask.sum()))
        log.info("update %d: %.2f s wall, %.2f s CPU, %d sequence tokens", index, seconds[-1], cpu[-1], tokens[-1])
    timed, counted, cpu_timed = seconds[1:], tokens[1:], cpu[1:]
    threads = torch.get_num_threads()
    result = {
        "benchmark": "capacity.trainer",
        "command": "flock /tmp/heavy.lock .venv/bin/python -m bench.capacity.measure_trainer",
        "machine": machine(),
        "what": "one RL update (reference forward + policy forward/backward + AdamW), SmolLM2-135M fp32, no services",
        "shape": {
            "sequences": per_step * samples,
            "completion_tokens": max_tokens,
            "sequence_tokens_mean": round(statistics.fmean(counted), 1),
            "micro_batch_size": setting(config, "micro_batch_size"),
        },
        "seconds": [round(s, 3) for s in seconds],
        "update_s_mean": round(statistics.fmean(timed), 3),
        "update_s_min": round(min(timed), 3),
        "update_s_stdev": round(statistics.stdev(timed), 3) if len(timed) > 1 else 0.0,
        "cpu_seconds": [round(s, 3) for s in cpu],
        "torch_threads": threads,
        "machine_cores": cores,
        "tokens_per_cpu_s": round(sum(counted) / sum(cpu_timed), 1),
        "tokens_per_s": round(sum(counted) / sum(timed), 1),  # the model's input
        "load_average_at_start": load_start,
        "load_average_at_end": os.getloadavg(),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    log.info(
        "trainer: %.1f tokens/s on %d threads (%.1f tokens per CPU second, load %.2f) -> %s",
        result["tokens_per_s"],
        threads,
        result["tokens_per_cpu_s"],
        load_start[0],
        args.out,
    )


if __name__ == "__main__":
    main()
