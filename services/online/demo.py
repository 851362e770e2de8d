"""`python -m services.online demo` (`make demo-online`): online RLHF on one machine, for a bounded time.

Starts the experience service, a stable and a canary policy replica (recording into
the store, hosting FeedbackService for their users) and the reward service; runs the
traffic simulator and the online loop side by side for `duration_s`; then prints, per
weight version, the feedback-measured quality (the store's denoised ratings), the
simulator's hidden utility of what that version served (the truth the ratings
estimate), and every canary decision; writes `<output_dir>/summary.json`; stops
everything.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from services.common.config import option
from services.common.model_store import DEFAULT_CACHE, prepare_smollm2
from services.common.process import ServerProcess, free_port
from services.online.config import OnlineConfig
from services.online.loop import OnlineTrainer
from services.online.simulator import SimulatorConfig, TrafficSimulator

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OnlineDemoConfig:
    """Run the online loop with simulated users against real services for a bounded time."""

    output_dir: str = option("runs/demo-online", "Logs, store, checkpoints, reward models and summary.json (cleared first).")
    duration_s: float = option(420.0, "How long the online loop runs (the services' start-up comes on top).")
    model: str = option("", "Policy checkpoint for both replicas. Empty: SmolLM2-135M-Instruct from the model cache.")
    rm_base_model: str = option("", "Backbone of the first reward model. Empty: the packaged all-MiniLM-L6-v2.")
    model_cache: str = option(str(DEFAULT_CACHE), "Where the packaged policy is converted to on first use.")
    users: int = option(40, "Simulated users.")
    request_rate: float = option(0.3, "Simulated requests per second (two SmolLM2 replicas on a 2-core CPU serve about this many).")
    canary_fraction: float = option(0.5, "Share of users on the canary replica (high, so a verdict comes within minutes).")
    adversarial_fraction: float = option(0.1, "Share of users who answer the opposite of what they think.")
    rating_noise: float = option(0.1, "Rater noise (utility units).")
    user_max_tokens: int = option(32, "Tokens per completion users get.")
    target_words: int = option(25, "Hidden preference: the length users like, in words.")
    steps_per_round: int = option(2, "RL steps per round (one canary candidate per round).")
    prompts_per_step: int = option(2, "Prompts per RL step.")
    samples_per_prompt: int = option(4, "Samples per prompt (GRPO group).")
    max_tokens: int = option(32, "Tokens per RL sample.")
    learning_rate: float = option(5e-5, "Policy learning rate (of the LoRA adapter).")
    lora_rank: int = option(16, "LoRA rank of the online trainer (0: full fine-tuning, about 2 GB more memory).")
    rm_min_new_pairs: int = option(16, "New preference pairs that trigger a reward-model retraining.")
    canary_min_ratings: int = option(12, "Rated samples per version (by raters who rated both) before a canary decision.")
    canary_margin: float = option(0.1, "Rollback margin on the mean score (0-1); with ~12 ratings the noise is about 0.06.")
    gold_probability: float = option(0.2, "Share of pairs a noise-free expert also answers (how adversarial raters are found).")
    canary_window_s: float = option(240.0, "Longest wait for a canary decision.")
    start_timeout_s: float = option(600.0, "How long the services may take to report SERVING.")
    seed: int = option(0, "Seed.")
    log_level: str = option("INFO", "Python logging level.")


def _say(text: str) -> None:
    print(f"[demo-online] {text}", flush=True)


def _start_services(config: OnlineDemoConfig, out: Path, model_dir: str, processes: dict[str, ServerProcess]) -> dict[str, str]:
    """Starts every service into `processes` (filled as they start, so the caller can stop them on any failure)."""
    db_url = f"sqlite:///{out / 'experience.db'}"
    ports = {name: free_port() for name in ("experience", "reward", "stable", "canary")}
    addresses = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    policy_flags = ["--model", model_dir, "--metrics-port", "0", "--max-model-len", "1024", "--cpu-kvcache-gib", "1",
                    "--drain-timeout-s", "20", "--keep-versions", "1", "--experience-db", db_url]
    cores = os.cpu_count() or 1
    pinning = {"stable": ["--cpu-threads-bind", "0"], "canary": ["--cpu-threads-bind", str(min(1, cores - 1))]} if cores <= 4 else {}
    processes.update({
        "experience": ServerProcess("services.experience", ["--db", db_url, "--port", str(ports["experience"]),
                                                            "--metrics-port", "0"], out / "experience.log"),
        "reward": ServerProcess("services.reward", ["--port", str(ports["reward"]), "--metrics-port", "0"], out / "reward.log"),
        # On a small CPU each replica gets one core of its own instead of both fighting over all of them.
        **{name: ServerProcess("services.policy", [*policy_flags, "--port", str(ports[name]), *pinning.get(name, [])],
                               out / f"{name}.log") for name in ("stable", "canary")},
    })
    processes["experience"].start(addresses["experience"], config.start_timeout_s)  # migrates the store once
    for name in ("reward", "stable", "canary"):
        _say(f"starting {name} on {addresses[name]} (log: {processes[name].log_path})")
        processes[name].launch()
    for name in ("reward", "stable", "canary"):
        processes[name].wait_serving(addresses[name], config.start_timeout_s, progress=f"[demo-online] {name}")
    return addresses


def quality_table(trainer_quality: list[dict], simulated: dict, decisions: list[dict]) -> list[dict]:
    """One row per weight version: store-measured score, hidden utility, and what the canary decided."""
    hidden: dict[int, list[float]] = {}
    for key, tally in simulated.get("by_replica_version", {}).items():
        version = int(key.rsplit(":v", 1)[1])
        if tally["samples"]:
            entry = hidden.setdefault(version, [0.0, 0.0])
            entry[0] += tally["mean_hidden_utility"] * tally["samples"]
            entry[1] += tally["samples"]
    verdicts = {d["candidate_version"]: d["action"] for d in decisions}
    rows = []
    for stats in trainer_quality:
        version = stats["version"]
        utility = hidden.get(version)
        rows.append({**stats, "served_samples": int(utility[1]) if utility else 0,
                     "mean_hidden_utility": round(utility[0] / utility[1], 4) if utility else None,
                     "canary": verdicts.get(version, "start" if version == 0 else "")})
    return rows


def run_demo(config: OnlineDemoConfig) -> dict:
    out = Path(config.output_dir)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    model_dir = config.model or str(prepare_smollm2(Path(config.model_cache)))
    started = time.time()
    processes: dict[str, ServerProcess] = {}
    simulated: dict = {}
    try:
        addresses = _start_services(config, out, model_dir, processes)
        _say(f"services SERVING after {time.time() - started:.0f} s; simulated users and the online loop run for "
             f"{config.duration_s:.0f} s")
        simulator = TrafficSimulator(SimulatorConfig(
            stable_address=addresses["stable"], canary_address=addresses["canary"], canary_fraction=config.canary_fraction,
            users=config.users, adversarial_fraction=config.adversarial_fraction, rating_noise=config.rating_noise,
            request_rate=config.request_rate, duration_s=config.duration_s + 600, max_requests=100_000,
            max_tokens=config.user_max_tokens, target_words=config.target_words, gold_probability=config.gold_probability,
            rpc_timeout_s=120, seed=config.seed,
        ))
        stop_users, stop_loop = threading.Event(), threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):  # Ctrl-C ends the loop at its next check, then stops everything
            signal.signal(sig, lambda *_: stop_loop.set())
        users = threading.Thread(target=lambda: simulated.update(simulator.run(stop_users)), name="simulator")
        users.start()
        trainer = OnlineTrainer(OnlineConfig(
            stable_address=addresses["stable"], canary_address=addresses["canary"],
            feedback_address=addresses["experience"], reward_address=addresses["reward"], model=model_dir,
            output_dir=str(out / "online"), duration_s=config.duration_s, rm_base_model=config.rm_base_model,
            rm_min_new_pairs=config.rm_min_new_pairs, rm_max_length=128, steps_per_round=config.steps_per_round,
            max_version_lag=config.steps_per_round - 1, prompts_per_step=config.prompts_per_step,
            samples_per_prompt=config.samples_per_prompt, max_tokens=config.max_tokens,
            learning_rate=config.learning_rate, lora_rank=config.lora_rank, canary_min_ratings=config.canary_min_ratings,
            canary_margin=config.canary_margin, canary_window_s=config.canary_window_s, seed=config.seed,
            log_level=config.log_level,
        ))
        try:
            summary = trainer.run(stop_loop)
        finally:
            trainer.close()
            stop_users.set()
            users.join()
            simulator.close()
    finally:
        codes = {name: process.stop() for name, process in processes.items()}
        _say(f"services stopped (exit codes {codes})")
    rows = quality_table(summary["quality"], simulated, summary["decisions"])
    result = {**summary, "versions": rows, "simulator": simulated, "demo_wall_s": round(time.time() - started, 1)}
    (out / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    print("\n version  canary    rated  feedback score (0-1)  served  hidden utility (0-1)")
    for row in rows:
        score = "-" if row["mean_score"] is None else f"{row['mean_score']:.3f}"
        utility = "-" if row["mean_hidden_utility"] is None else f"{row['mean_hidden_utility']:.3f}"
        print(f" {row['version']:>7}  {row['canary']:<8} {row['rated_samples']:>6}  {score:>20}  {row['served_samples']:>6}  {utility:>20}")
    for decision in summary["decisions"]:
        print(f" canary {decision['action']:<8} v{decision['candidate_version']}: {decision['reason']}")
    for trained in summary["reward_models"]:
        print(f" reward model {trained['version']} on {trained['pairs']} pairs: held-out accuracy "
              f"{trained['heldout_accuracy_before']} -> {trained['heldout_accuracy']}, published={trained['published']}")
    by_version = {r["version"]: r for r in rows}
    start, end = by_version.get(0), by_version.get(summary["stable_version"])
    if start and end and start["mean_score"] is not None and end["mean_score"] is not None:
        _say(f"stable replica: v0 -> v{end['version']}; feedback-measured quality {start['mean_score']:.3f} -> "
             f"{end['mean_score']:.3f}, hidden utility (the truth the feedback estimates) "
             f"{start['mean_hidden_utility']} -> {end['mean_hidden_utility']}")
    _say(f"summary: {out / 'summary.json'}")
    return result
