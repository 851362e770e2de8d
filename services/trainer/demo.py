"""`python -m services.trainer demo`: the whole loop on one machine, end to end.

Starts the policy and reward services as separate processes, trains a few GRPO
steps against them over gRPC (pushing weights into the running vLLM engine after
every step), shows a sample before and after, writes a summary, and stops the
services with SIGTERM.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from rlhf.v1 import policy_pb2
from services.common.config import option, section
from services.common.model_store import DEFAULT_CACHE, prepare_smollm2
from services.common.process import ServerProcess, free_port
from services.common.prompts import load_prompts
from services.common.sections import Endpoints, Optimizer, Run, Sampling
from services.trainer.config import Rewards, TrainerConfig
from services.trainer.loop import Trainer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoConfig:
    """Run the policy and reward services and a short training run against them."""

    steps: int = option(4, "Training steps.")
    prompts_file: str = option("data/book_reviews.jsonl", "Training prompts.")
    heldout_file: str = option(
        "data/book_reviews_heldout.jsonl", "Prompt for the before/after sample is the first line."
    )
    model_cache: str = option(str(DEFAULT_CACHE), "Where the packaged policy is converted to on first use.")
    start_timeout_s: float = option(600.0, "How long the services may take to report SERVING.")
    sampling: Sampling = section(Sampling(), "What each training step generates.")
    rewards: Rewards = section(Rewards(), "The reward model used for training.")
    optimizer: Optimizer = section(Optimizer(learning_rate=2e-5), "The policy's optimizer.")
    run: Run = section(
        Run(output_dir="runs/demo"), "Seed, device, where logs, metrics, checkpoints and summary.json go."
    )

    def __post_init__(self) -> None:
        if self.steps < 1 or self.start_timeout_s <= 0:
            raise ValueError("steps must be >= 1 and start_timeout_s > 0")


def _sample(trainer: Trainer, prompt: str, max_tokens: int) -> dict:
    reply = trainer.policy_client.generate(
        policy_pb2.GenerateRequest(
            prompts=[policy_pb2.Prompt(text=prompt, apply_chat_template=True)],
            sampling=policy_pb2.SamplingParams(n=1, max_tokens=max_tokens, temperature=0.0),
        )
    )
    sample = reply.results[0].samples[0]
    return {"prompt": prompt, "text": sample.text, "weight_version": sample.weight_version}


def run_demo(config: DemoConfig) -> dict:
    out = Path(config.run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("metrics.jsonl", "summary.json"):
        (out / stale).unlink(missing_ok=True)
    print("[demo] preparing models (one-time GGUF -> safetensors conversion)...", flush=True)
    model_dir = prepare_smollm2(Path(config.model_cache))
    policy_port, reward_port = free_port(), free_port()
    policy_address, reward_address = f"127.0.0.1:{policy_port}", f"127.0.0.1:{reward_port}"
    policy = ServerProcess(
        "services.policy",
        ["--model", str(model_dir), "--port", str(policy_port), "--metrics-port", str(free_port())],
        out / "policy.log",
    )
    reward = ServerProcess(
        "services.reward", ["--port", str(reward_port), "--metrics-port", str(free_port())], out / "reward.log"
    )
    started = time.time()
    try:
        print(
            f"[demo] starting policy service on {policy_address} (vLLM engine, ~30-60 s; log: {policy.log_path})",
            flush=True,
        )
        policy.launch()
        print(f"[demo] starting reward service on {reward_address} (log: {reward.log_path})", flush=True)
        reward.launch()
        reward.wait_serving(reward_address, config.start_timeout_s, progress="[demo] reward service")
        policy.wait_serving(policy_address, config.start_timeout_s, progress="[demo] policy service")
        print(f"[demo] both services SERVING after {time.time() - started:.0f} s", flush=True)

        trainer_config = TrainerConfig(
            model=str(model_dir),
            prompts_file=config.prompts_file,
            steps=config.steps,
            sampling=config.sampling,
            rewards=config.rewards,
            optimizer=config.optimizer,
            endpoints=Endpoints(policy=policy_address, reward=reward_address),
            run=config.run,
        )
        trainer = Trainer(trainer_config)
        probe = load_prompts(config.heldout_file)[0].prompt
        before = _sample(trainer, probe, config.sampling.max_tokens)
        print(f"[demo] before (version {before['weight_version']}): {before['text']!r}", flush=True)
        summary = trainer.run()
        after = _sample(trainer, probe, config.sampling.max_tokens)
        print(f"[demo] after  (version {after['weight_version']}): {after['text']!r}", flush=True)
        trainer.close()
    finally:
        codes = {"policy": policy.stop(), "reward": reward.stop()}
        print(f"[demo] services stopped (exit codes {codes})", flush=True)
    summary.update(
        sample_before=before, sample_after=after, service_exit_codes=codes, demo_wall_s=round(time.time() - started, 1)
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print("\n step  version  reward_mean  reward_std        kl    seconds(gen/score/train/push)")
    for r in summary["steps"]:
        s = r["seconds"]
        print(
            f" {r['step']:>4}  {r['weight_version']:>7}  {r['reward_mean']:>11.4f}  {r['reward_std']:>10.4f}  {r['kl']:>8.5f}"
            f"    {s['generate']:.1f}/{s['score']:.1f}/{s['train']:.1f}/{s['push']:.1f}"
        )
    print(f"\n[demo] summary: {out / 'summary.json'}", flush=True)
    return summary
