"""`python -m services.online demo` (`make demo-online`): online RLHF on one machine, for a bounded time.

Starts the experience service, a stable and a canary policy replica (recording into
the store, hosting FeedbackService for their users) and the reward service; runs the
traffic simulator (users as fast as the engines serve them; canary users judge
interleaved stable-vs-canary pairs) and the online loop side by side for what
`wall_budget_s` leaves after start-up (at most `duration_s`); the loop's last
`evaluation_s` start no round, so the final stable version serves users alone. The
policy replicas run at a higher niceness, so the trainer gets the cores while it
computes (`priority.py`). After `bad_candidate_after_round` rounds the demo hands the canary one
deliberately bad candidate (weights that repeat one token) through the same gate:
the canary's sequential test, not the demo, has to roll it back. At the end it
writes `<output_dir>/summary.json` (hidden utility per version with 95% intervals,
every canary decision with n, effect, interval and statistic, the reward model's
held-out accuracy per round, requests/s, judgements per version) and
`<output_dir>/utility.png`, and stops everything.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import grpc
import torch

from rlhf.v1 import reward_pb2
from services.clients.reward import RewardClient, publish_checkpoint
from services.common.config import option, section
from services.common.model_store import DEFAULT_CACHE, prepare_smollm2
from services.common.process import ServerProcess, free_port
from services.common.sections import Endpoints, Lora, Optimizer, Run, Sampling
from services.feedback_web.launch import demo_token_file, start_feedback_web
from services.online import demo_report
from services.online.canary import PROMOTE, CanarySettings, Stopped
from services.online.config import OnlineConfig
from services.online.loop import OnlineTrainer
from services.online.priority import lower_priority
from services.online.simulator import SimulatorConfig, TrafficSimulator
from services.online.warm_start import warm_start
from services.reward.training.simulated_preference import HiddenPreference

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OnlineDemoConfig:
    """Run the online loop with simulated users against real services for a bounded time."""

    output_dir: str = option(
        "runs/demo-online", "Logs, store, checkpoints, reward models and summary.json (cleared first)."
    )
    duration_s: float = option(
        780.0, "Longest the online loop runs (the services' start-up comes on top); wall_budget_s may end it sooner."
    )
    wall_budget_s: float = option(
        850.0,
        "The whole demo ends within this, start-up (and a warm start not cached yet) included: the loop gets what "
        "start-up leaves, less finish_s. The issue allows 15 minutes; python and make start-up come on top.",
    )
    finish_s: float = option(
        50.0, "Kept at the end for scoring each version's samples, writing the summary and stopping the services."
    )
    evaluation_s: float = option(
        30.0,
        "The loop's last stretch starts no round (a round starts only if it is expected, by the longest round so "
        "far, to end before it): the final stable version serves users alone, so its hidden utility is measured on "
        "more samples, and no round is cut off at the end with its canary half judged.",
    )
    engine_niceness: int = option(
        10,
        "CPU niceness of the two policy replicas (0: as the demo). On a 2-core box the trainer's step then gets the "
        "cores while it runs (54 s -> about 20 s per step) and users are served in its gaps, instead of three "
        "programs sharing every second evenly.",
    )
    model: str = option("", "Policy checkpoint for both replicas. Empty: SmolLM2-135M-Instruct from the model cache.")
    rm_base_model: str = option("", "Backbone of the first reward model. Empty: the packaged all-MiniLM-L6-v2.")
    model_cache: str = option(str(DEFAULT_CACHE), "Where the packaged policy is converted to on first use.")
    users: int = option(40, "Simulated users.")
    request_rate: float = option(
        float("inf"), "Simulated requests per second (inf: as fast as max_concurrency slots free up)."
    )
    max_concurrency: int = option(
        48,
        "Simulated requests in flight at most (vLLM batches them; each replica runs at most 64 sequences, so an RL "
        "step's batch finds free slots on the canary).",
    )
    canary_fraction: float = option(
        1.0,
        "Share of users on the canary replica (their requests give the paired judgements). All of them: every "
        "request is then answered by both replicas and judged as a pair, a quarter more judgements a second than "
        "with 0.8, and the canary decides sooner.",
    )
    interleave_probability: float = option(
        1.0, "Chance a canary user's request is answered by both replicas and judged as a pair."
    )
    pairwise_probability: float = option(0.9, "Chance a user who got two completions says which is better.")
    adversarial_fraction: float = option(0.1, "Share of users who answer the opposite of what they think.")
    rating_noise: float = option(0.1, "Rater noise (utility units).")
    user_max_tokens: int = option(24, "Tokens per completion users get.")
    target_words: int = option(15, "Hidden preference: the length users like, in words.")
    steps_per_round: int = option(
        1,
        "RL steps per round (one canary candidate per round). One larger step per candidate instead of two small "
        "ones: as much learning (see prompts_per_step), one fewer sampling pass, and on-policy samples.",
    )
    prompts_per_step: int = option(
        12,
        "Prompts per RL step. 12 x 4 samples: Adam's first steps move every adapter weight by about the learning "
        "rate whatever the batch, so a larger batch buys a better direction at the same drift (with 4 x 4 a step "
        "raised the KL to 0.75 and moved the hidden utility by +0.009).",
    )
    samples_per_prompt: int = option(4, "Samples per prompt (GRPO group).")
    max_tokens: int = option(24, "Tokens per RL sample.")
    learning_rate: float = option(
        1e-3, "Policy learning rate (of the LoRA adapter; bench/learning_bench.py learns with 1e-3 at this size)."
    )
    lora_rank: int = option(16, "LoRA rank of the online trainer (0: full fine-tuning, about 2 GB more memory).")
    rm_min_new_pairs: int = option(
        200, "New preference pairs that trigger a reward-model retraining (about every other round here)."
    )
    rm_max_fresh_pairs: int = option(128, "Newest fresh pairs one retraining takes (bounds its time on the busy CPU).")
    rm_replay_pairs: int = option(64, "Older pairs replayed in each retraining.")
    rm_epochs: int = option(1, "Epochs of each retraining.")
    warm_start_files: tuple[str, ...] = option(
        ("data/online_preferences.jsonl",),
        "Preference files the online reward model is trained on before any live feedback, then published (empty: no "
        "warm start; the first model waits for live pairs). The default: completions SmolLM2 served in an earlier "
        "demo run, judged as the simulated users' gold expert judges (services/online/warm_start_data.py).",
    )
    warm_start_heldout_files: tuple[str, ...] = option(
        ("data/online_preferences_heldout.jsonl",), "Held-out files of the warm start."
    )
    rm_heldout_share: float = option(
        0.2, "Share of live pairs kept out of reward-model training to measure its accuracy."
    )
    gold_probability: float = option(
        0.2, "Share of pairs a noise-free expert also answers (how adversarial raters are found)."
    )
    gold_min_gap: float = option(0.1, "The expert answers only pairs whose hidden utilities differ by at least this.")
    canary: CanarySettings = section(
        CanarySettings(delta=0.15, window_s=180.0, max_judgements=300, tuned_judgements=100, poll_s=2.0),
        "The canary's sequential test (alpha, delta, window). delta 0.15 lets an equal candidate be promoted after "
        "about a hundred judgements (~1.5 min of this box's traffic), a better one after about 60; in a 180 s window "
        "(~180 judgements) an equal one is promoted 87% of the time, a delta-worse one at most alpha "
        "(tests/unit/test_canary_demo.py).",
    )
    bad_candidate_after_round: int = option(
        1, "After this many rounds, put one deliberately bad candidate through the canary (0: never)."
    )
    start_timeout_s: float = option(600.0, "How long the services may take to report SERVING.")
    seed: int = option(0, "Seed.")
    log_level: str = option("INFO", "Python logging level.")

    def __post_init__(self) -> None:
        shares = {
            name: getattr(self, name)
            for name in (
                "canary_fraction",
                "interleave_probability",
                "pairwise_probability",
                "adversarial_fraction",
                "rm_heldout_share",
                "gold_probability",
            )
        }
        outside = {name: value for name, value in shares.items() if not 0.0 <= value <= 1.0}
        if outside:
            raise ValueError(f"these are shares and must lie in [0, 1]: {outside}")
        if self.duration_s <= 0 or self.users < 1 or self.max_concurrency < 1 or self.request_rate <= 0:
            raise ValueError("duration_s and request_rate must be > 0, users and max_concurrency >= 1")
        if self.wall_budget_s <= 0 or self.finish_s < 0 or self.evaluation_s < 0 or not 0 <= self.engine_niceness <= 19:
            raise ValueError("wall_budget_s must be > 0, finish_s and evaluation_s >= 0, engine_niceness in [0, 19]")
        if self.steps_per_round < 1 or self.prompts_per_step < 1 or self.samples_per_prompt < 2:
            raise ValueError("steps_per_round and prompts_per_step must be >= 1, samples_per_prompt >= 2")
        if min(self.max_tokens, self.user_max_tokens) < 1 or self.learning_rate <= 0 or self.lora_rank < 0:
            raise ValueError("max_tokens and user_max_tokens must be >= 1, learning_rate > 0, lora_rank >= 0")
        if self.rm_min_new_pairs < 2 or self.bad_candidate_after_round < 0:
            raise ValueError("rm_min_new_pairs must be >= 2 (one is held out), bad_candidate_after_round >= 0")


def _say(text: str) -> None:
    print(f"[demo-online] {text}", flush=True)


def _start_services(
    config: OnlineDemoConfig, out: Path, model_dir: str, processes: dict[str, ServerProcess]
) -> dict[str, str]:
    """Starts every service into `processes` (filled as they start, so the caller can stop them on any failure)."""
    db_url = f"sqlite:///{out / 'experience.db'}"
    ports = {name: free_port() for name in ("experience", "reward", "stable", "canary")}
    addresses = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    policy_flags = [
        "--model",
        model_dir,
        "--metrics-port",
        "0",
        "--max-model-len",
        "1024",
        "--cpu-kvcache-gib",
        "1",
        "--drain-timeout-s",
        "20",
        "--keep-versions",
        "1",
        "--experience-db",
        db_url,
    ]
    cores = os.cpu_count() or 1
    pinning = (
        {"stable": ["--cpu-threads-bind", "0"], "canary": ["--cpu-threads-bind", str(min(1, cores - 1))]}
        if cores <= 4
        else {}
    )
    processes.update(
        {
            "experience": ServerProcess(
                "services.experience",
                ["--db", db_url, "--port", str(ports["experience"]), "--metrics-port", "0"],
                out / "experience.log",
            ),
            "reward": ServerProcess(
                "services.reward", ["--port", str(ports["reward"]), "--metrics-port", "0"], out / "reward.log"
            ),
            # On a small CPU each replica gets one core of its own instead of both fighting over all of them.
            **{
                name: ServerProcess(
                    "services.policy",
                    [*policy_flags, "--port", str(ports[name]), *pinning.get(name, [])],
                    out / f"{name}.log",
                )
                for name in ("stable", "canary")
            },
        }
    )
    processes["experience"].start(addresses["experience"], config.start_timeout_s)  # migrates the store once
    for name in ("reward", "stable", "canary"):
        _say(f"starting {name} on {addresses[name]} (log: {processes[name].log_path})")
        processes[name].launch()
        if name in ("stable", "canary") and config.engine_niceness:  # before it starts threads: they inherit it
            lower_priority(processes[name].process.pid, config.engine_niceness)
    for name in ("reward", "stable", "canary"):
        processes[name].wait_serving(addresses[name], config.start_timeout_s, progress=f"[demo-online] {name}")
    if config.engine_niceness:  # and every thread of the engines' process trees, however they were started
        for name in ("stable", "canary"):
            changed = lower_priority(processes[name].process.pid, config.engine_niceness)
            log.info("%s replica runs at niceness %d (%d threads changed now)", name, config.engine_niceness, changed)
    # People can judge the same live traffic as the simulated users: the feedback pages, beside the services.
    token_file, tokens = demo_token_file(
        out / "web", {"expert": ("generate", "feedback", "admin"), "rater": ("generate", "feedback")}
    )
    processes["web"], url = start_feedback_web(
        addresses["stable"],
        addresses["experience"],
        token_file,
        out / "web.log",
        canary_address=addresses["canary"],
        online_dir=str(out / "online"),
        state_dir=str(out / "web"),
    )
    _say(
        f"feedback pages: {url}/ (sign in with the token in {out / 'web' / 'rater.token'}; "
        f"gold feedback: {out / 'web' / 'expert.token'})"
    )
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
        rows.append(
            {
                **stats,
                "served_samples": int(utility[1]) if utility else 0,
                "mean_hidden_utility": round(utility[0] / utility[1], 4) if utility else None,
                "canary": verdicts.get(version, "start" if version == 0 else ""),
            }
        )
    return rows


def bad_weights(tensors: list[tuple[str, torch.Tensor]], token_id: int) -> list[tuple[str, torch.Tensor]]:
    """A deliberately bad candidate: valid shapes, finite values, but it says one token forever.

    Attention and MLP outputs are zeroed, so the last hidden state is the input
    embedding; every embedding row is the same vector and `token_id`'s is ten times
    longer, so every position's logits favour `token_id`.
    """
    bad = []
    for name, tensor in tensors:
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            tensor = torch.zeros_like(tensor)
        elif name.endswith("norm.weight"):
            tensor = torch.ones_like(tensor)
        elif name.endswith("embed_tokens.weight"):
            tensor = torch.ones_like(tensor)
            tensor[token_id] *= 10.0
        bad.append((name, tensor))
    return bad


def _online_config(
    config: OnlineDemoConfig, addresses: dict[str, str], model_dir: str, out: Path, rm_base_model: str
) -> OnlineConfig:
    return OnlineConfig(
        canary_address=addresses["canary"],
        model=model_dir,
        duration_s=config.duration_s,
        rm_base_model=rm_base_model,
        rm_min_new_pairs=config.rm_min_new_pairs,
        rm_max_length=128,
        rm_max_fresh_pairs=config.rm_max_fresh_pairs,
        rm_replay_pairs=config.rm_replay_pairs,
        rm_epochs=config.rm_epochs,
        rm_heldout_share=config.rm_heldout_share,
        steps_per_round=config.steps_per_round,
        max_version_lag=config.steps_per_round - 1,
        canary=config.canary,
        sampling=Sampling(
            prompts_per_step=config.prompts_per_step,
            samples_per_prompt=config.samples_per_prompt,
            max_tokens=config.max_tokens,
        ),
        optimizer=Optimizer(learning_rate=config.learning_rate),
        lora=Lora(rank=config.lora_rank),
        endpoints=Endpoints(policy=addresses["stable"], reward=addresses["reward"], feedback=addresses["experience"]),
        run=Run(output_dir=str(out / "online"), seed=config.seed, log_level=config.log_level),
    )


class _ScoreCache:
    """Scores each (prompt, completion) once per reward-model version: the held-out pairs grow every round."""

    def __init__(self, scorer: RewardClient | None) -> None:
        self.scorer, self.version, self.scores = scorer, None, {}

    def for_version(self, version: str | None) -> _ScoreCache:
        if version != self.version:
            self.version, self.scores = version, {}
        return self

    def score(self, model: str, items: list) -> SimpleNamespace:
        keys = [(item.prompt, item.completion) for item in items]
        missing = [key for key in dict.fromkeys(keys) if key not in self.scores]
        if missing:
            reply = self.scorer.score(model, [reward_pb2.ScoreItem(prompt=p, completion=c) for p, c in missing])
            self.scores.update(zip(missing, reply.scores))
        return SimpleNamespace(scores=[self.scores[key] for key in keys])


class DemoRounds:
    """The online loop's rounds, with the demo's additions: one bad candidate, the reward model's held-out accuracy
    after every round (and the warm start's before the first), and a last stretch in which no round starts."""

    def __init__(
        self,
        config: OnlineDemoConfig,
        trainer: OnlineTrainer,
        scorer: RewardClient | None,
        warm_heldout: list[dict] | None = None,
    ) -> None:
        self.config, self.trainer, self.scorer = config, trainer, scorer
        self.preference = HiddenPreference(SimulatorConfig(target_words=config.target_words).preference())
        self.warm_heldout = warm_heldout or []  # the warm start's held-out pairs: gold answers on clear cases
        self.rounds: list[dict] = []
        self.decisions: list[dict] = []
        self.accuracy: list[dict] = []
        self.final_stretch: dict | None = None  # the last part of the loop, without rounds
        self.bad_injected = False
        self._scores = _ScoreCache(scorer)
        self._checked: tuple | None = None  # (model version, held-out set, pairs) of the newest accuracy row

    def run(self, stop: threading.Event, loop_s: float | None = None) -> None:
        """Rounds for `loop_s` (default duration_s); a round starts only if it is expected to end evaluation_s before."""
        trainer, c = self.trainer, self.config
        loop_s = c.duration_s if loop_s is None else loop_s
        loop_end = time.monotonic() + loop_s
        rounds_end = loop_end - min(c.evaluation_s, loop_s / 2)
        hard_stop = threading.Timer(loop_s, stop.set)  # a round that runs past the end is stopped there
        hard_stop.daemon = True
        hard_stop.start()
        trainer.sync_replicas()
        if self.warm_heldout:
            self.check_reward_model(0, None, self.warm_heldout, "warm start held-out file", "before the first round")
        longest = 0.0  # the longest round so far: what the next one is expected to take
        while not stop.is_set() and not trainer.rollout.halted:
            if time.monotonic() + longest > rounds_end:
                self.serve_final_stable(stop, loop_end)
                break
            try:
                record = trainer.run_round(stop)
                if record is None:
                    stop.wait(trainer.config.idle_s)
                    continue
                longest = max(longest, record["seconds"])
                self.rounds.append(record)
                if record["decision"]:
                    self.decisions.append({**record["decision"], "round": record["round"], "injected_bad": False})
                self.check_reward_model(record["round"], record["reward_model_trained"])
                if (
                    c.bad_candidate_after_round
                    and not self.bad_injected
                    and len(self.rounds) >= c.bad_candidate_after_round
                ):
                    self.inject_bad_candidate(stop)
            except Stopped as exc:
                log.info("%s", exc)
                # The stopped round's record is lost, not its reward-model refresh: it is the last round's model.
                trained = trainer.last_reward_model
                if trained and trained["version"] not in {row["reward_model_version"] for row in self.accuracy}:
                    self.check_reward_model(trainer.round + 1, trained)
                break
        hard_stop.cancel()
        # The model at the end, on every held-out pair collected (skipped when the newest row already says it).
        self.check_reward_model(trainer.round, None, at="end of the loop")

    def serve_final_stable(self, stop: threading.Event, loop_end: float) -> None:
        left = max(0.0, loop_end - time.monotonic())
        self.final_stretch = {"stable_version": self.trainer.stable_version, "seconds": round(left, 1)}
        _say(f"no time for another round: stable version {self.trainer.stable_version} serves users for {left:.0f} s")
        stop.wait(left)

    def check_reward_model(
        self,
        round_no: int,
        trained: dict | None,
        pairs: list[dict] | None = None,
        heldout: str = "live",
        at: str = "end of the round",
    ) -> None:
        """One accuracy row: the reward model now hosted (`trained`: this round's refresh) on held-out pairs."""
        model, latest = self.trainer.config.rewards.model, self.trainer.last_reward_model
        pairs = list(self.trainer.book.heldout.values()) if pairs is None else pairs
        try:
            version = (trained or latest or {}).get("version") or self.scorer.hosted(model)
            if (version, heldout, len(pairs)) == self._checked:
                return  # same model, same pairs: the row would repeat the newest one
            self._checked = (version, heldout, len(pairs))
            scores = self._scores.for_version(version)
            result = demo_report.reward_model_accuracy(scores, model, pairs, self.preference, self.config.gold_min_gap)
            # the same model on the warm start's fixed gold pairs too: does it drift from them?
            fixed = (
                demo_report.reward_model_accuracy(
                    scores, model, self.warm_heldout, self.preference, self.config.gold_min_gap
                )
                if heldout == "live" and self.warm_heldout
                else None
            )
        except grpc.RpcError:  # a missed check is reported as missing; it must not end the loop
            log.exception("could not score the held-out pairs with the reward model (round %d)", round_no)
            return
        row = {
            "round": round_no,
            "at": at,
            "heldout_set": heldout,
            "reward_model_version": version,
            "trained_pairs": trained["pairs"] if trained else None,
            "trainer_heldout_accuracy": trained["heldout_accuracy"] if trained else None,
            **result,
        }
        if fixed is not None:
            row["warm_heldout_accuracy"] = fixed["hidden_accuracy"]
        self.accuracy.append(row)
        _say(
            f"round {round_no}: reward model {version}"
            + (f" (retrained on {trained['pairs']} pairs)" if trained else "")
            + f"; on {result['pairs']} held-out pairs ({heldout}) it ranks as the hidden preference "
            f"{result['hidden_accuracy']} of the time, agrees with gold {result['gold_agreement']} "
            f"({result['gold_pairs']} clear pairs)"
        )

    def inject_bad_candidate(self, stop: threading.Event) -> None:
        trainer = self.trainer
        self.bad_injected = True
        from transformers import AutoTokenizer

        token = AutoTokenizer.from_pretrained(trainer.model_dir).encode(" book", add_special_tokens=False)[0]
        _say(f"injecting a deliberately bad candidate (repeats token {token}); the canary has to catch it")
        decision = trainer.rollout.deploy(
            bad_weights(trainer._weights(), token), "deliberately bad candidate (demo)", trainer.stable_version, stop
        )
        self.decisions.append({**decision.as_dict(), "round": len(self.rounds), "injected_bad": True})
        if decision.action == PROMOTE:  # the gate failed: say so loudly and put the trainer's weights back everywhere
            log.error("the canary PROMOTED the deliberately bad candidate %d", decision.candidate_version)
            trainer.stable_version = decision.candidate_version
            trainer.sync_replicas()


def run_demo(config: OnlineDemoConfig) -> dict:
    out = Path(config.output_dir)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    model_dir = config.model or str(prepare_smollm2(Path(config.model_cache)))
    started = time.time()
    processes: dict[str, ServerProcess] = {}
    simulated: dict = {}
    report: dict = {}
    try:
        # The warm start trains before the services start (or comes from the cache): alone it takes about a minute,
        # beside the serving engines several.
        warm = (
            warm_start(config.warm_start_files, config.warm_start_heldout_files, Path(config.model_cache))
            if config.warm_start_files
            else None
        )
        report["warm_start"] = warm
        rm_base = warm["path"] if warm else config.rm_base_model
        addresses = _start_services(config, out, model_dir, processes)
        startup_s = time.time() - started
        _say(f"services SERVING after {startup_s:.0f} s; simulated users start")
        simulator = TrafficSimulator(
            SimulatorConfig(
                stable_address=addresses["stable"],
                canary_address=addresses["canary"],
                canary_fraction=config.canary_fraction,
                users=config.users,
                adversarial_fraction=config.adversarial_fraction,
                rating_noise=config.rating_noise,
                request_rate=config.request_rate,
                max_concurrency=config.max_concurrency,
                duration_s=config.duration_s + 600,
                max_requests=1_000_000,
                max_tokens=config.user_max_tokens,
                target_words=config.target_words,
                pairwise_probability=config.pairwise_probability,
                interleave_probability=config.interleave_probability,
                gold_probability=config.gold_probability,
                gold_min_gap=config.gold_min_gap,
                rpc_timeout_s=120,
                seed=config.seed,
            )
        )
        stop_users, stop_loop = threading.Event(), threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):  # Ctrl-C ends the loop at its next check, then stops everything
            signal.signal(sig, lambda *_: stop_loop.set())
        users = threading.Thread(target=lambda: simulated.update(simulator.run(stop_users)), name="simulator")
        users.start()
        if warm:
            publish_checkpoint(addresses["reward"], OnlineConfig().rewards.model, Path(warm["path"]))
            _say(
                f"warm-start reward model published ({'cached' if warm['cached'] else 'trained'} in "
                f"{warm['seconds']:.0f} s; held-out accuracy on {', '.join(config.warm_start_heldout_files)} "
                f"{warm['heldout_accuracy']:.3f})"
            )
        trainer = OnlineTrainer(_online_config(config, addresses, model_dir, out, rm_base))
        scorer = RewardClient(addresses["reward"], 300.0, 3)
        rounds = DemoRounds(config, trainer, scorer, _read_pairs(config.warm_start_heldout_files) if warm else None)
        _wait_for_prompts(trainer, config.prompts_per_step, timeout_s=60.0)
        # The loop gets what start-up left of the wall budget, less the finish (scoring, summary, stopping).
        loop_s = min(config.duration_s, config.wall_budget_s - (time.time() - started) - config.finish_s)
        report["loop_s"] = round(loop_s, 1)
        _say(f"the online loop runs for {loop_s:.0f} s (wall budget {config.wall_budget_s:.0f} s)")
        if loop_s < 120:
            log.warning("only %.0f s are left for the online loop: not enough for a round and its canary", loop_s)
        try:
            rounds.run(stop_loop, max(1.0, loop_s))
        except Exception as exc:  # the summary still says what the loop did until then, and why it ended
            log.exception("the online loop failed")
            report["loop_error"] = f"{type(exc).__name__}: {exc}"
        finally:
            stop_users.set()
            users.join()
            simulator.close()
        try:
            report["proxy_by_version"] = demo_report.proxy_by_version(
                scorer, trainer.config.rewards.model, trainer.reader
            )
        except Exception:
            log.exception("could not score the versions' samples with the final reward model")
            report["proxy_by_version"] = {}
        report["judgements_from_store"] = {f"v{v}": n for v, n in trainer.rollout.judgements.per_version().items()}
        report["stable_version"] = trainer.stable_version
        report["rl_halted"] = trainer.rollout.halted
        report["quality"] = [s.as_dict() for s in trainer.quality.table()]
        trainer.close()
        scorer.close()
    finally:
        codes = {name: process.stop() for name, process in processes.items()}
        _say(f"services stopped (exit codes {codes})")
    return _write_summary(config, out, rounds, simulated, report, startup_s, time.time() - started)


def _wait_for_prompts(trainer: OnlineTrainer, count: int, timeout_s: float) -> None:
    """Until the store holds `count` distinct live prompts: the first step should not draw two prompts six times."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        trainer.prompts.refresh(trainer.reader)
        if len(trainer.prompts) >= count:
            break
        time.sleep(1.0)
    log.info("%d distinct live prompts in the store before the first round", len(trainer.prompts))


def _read_pairs(files: tuple[str, ...]) -> list[dict]:
    """Preference pairs ({prompt, chosen, rejected} per JSONL line) from files."""
    pairs = []
    for name in files:
        with open(name, encoding="utf-8") as handle:
            pairs += [json.loads(line) for line in handle if line.strip()]
    return pairs


def _write_summary(
    config: OnlineDemoConfig,
    out: Path,
    rounds: DemoRounds,
    simulated: dict,
    report: dict,
    startup_s: float,
    wall_s: float,
) -> dict:
    utility = demo_report.utility_by_version(simulated.get("by_replica_version", {}))
    by_version = {row["version"]: row for row in utility}
    stable = report["stable_version"]
    gain = (
        demo_report.difference(by_version[stable], by_version[0]) if stable in by_version and 0 in by_version else None
    )
    decisions = [
        {
            key: d[key]
            for key in (
                "candidate_version",
                "baseline_version",
                "action",
                "n",
                "effect",
                "ci_low",
                "ci_high",
                "statistic",
                "threshold",
                "round",
                "injected_bad",
                "reason",
                "seconds",
            )
        }
        for d in rounds.decisions
    ]
    result = {
        "utility_by_version": [{k: v for k, v in row.items() if k != "variance"} for row in utility],
        "stable_version": stable,
        "stable_gain_over_v0": gain,
        "canary_decisions": decisions,
        "promoted": sum(d["action"] == PROMOTE for d in decisions),
        "bad_candidate_rolled_back": any(d["injected_bad"] and d["action"] != PROMOTE for d in decisions),
        "reward_model_accuracy_by_round": rounds.accuracy,
        "requests_per_s": simulated.get("requests_per_s"),
        "user_requests": simulated.get("requests_sent"),
        "judgements_per_version": simulated.get("judgements_per_version", {}),
        "paired_judgements_per_version": report["judgements_from_store"],
        "judgements_by_pair": simulated.get("judgements", {}),
        "proxy_reward_by_version": report["proxy_by_version"],
        "quality": quality_table(report["quality"], simulated, rounds.decisions),
        "rounds": rounds.rounds,
        "simulator": simulated,
        "startup_s": round(startup_s, 1),
        "demo_wall_s": round(wall_s, 1),
        "canary_settings": dataclasses.asdict(config.canary),
        "wall_budget_s": config.wall_budget_s,
        "loop_s": report.get("loop_s"),
        "final_stretch": rounds.final_stretch,
        "loop_error": report.get("loop_error", ""),
        "rl_halted": report["rl_halted"],
        "warm_start": report.get("warm_start"),
    }
    result["plot"] = str(demo_report.plot(utility, report["proxy_by_version"], decisions, out / "utility.png") or "")
    (out / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    print("\n version  canary    n judged  effect [95% CS]           served  hidden utility [95% CI]")
    verdicts = {d["candidate_version"]: d for d in decisions}
    for row in utility:
        d = verdicts.get(row["version"])
        verdict = (
            f"{d['action']:<9} {d['n']:>8}  "
            + (
                f"{d['effect']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"
                if d["effect"] is not None
                else "-".ljust(24)
            )
            if d
            else f"{'start' if row['version'] == 0 else '':<9} {'':>8}  {'':<24}"
        )
        print(
            f" {row['version']:>7}  {verdict}  {row['n']:>6}  {row['mean']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
        )
    for d in decisions:
        print(
            f" canary {d['action']:<8} v{d['candidate_version']}{' (injected bad)' if d['injected_bad'] else ''}: {d['reason']}"
        )
    for row in rounds.accuracy:
        print(
            f" round {row['round']}: reward model {row['reward_model_version']} on {row['heldout_set']} held-out pairs: "
            f"accuracy vs hidden preference {row['hidden_accuracy']} ({row['hidden_pairs']} pairs), gold agreement "
            f"{row['gold_agreement']} ({row['gold_pairs']} clear pairs)"
        )
    if gain:
        _say(
            f"stable v0 -> v{stable}: hidden utility {by_version[0]['mean']:.3f} (n={by_version[0]['n']}) -> "
            f"{by_version[stable]['mean']:.3f} (n={by_version[stable]['n']}), difference {gain['difference']:+.3f} "
            f"[{gain['ci_low']:+.3f}, {gain['ci_high']:+.3f}]"
        )
    _say(
        f"{simulated.get('requests_per_s')} generate calls/s; judgements per version {result['judgements_per_version']}"
    )
    _say(f"summary: {out / 'summary.json'}; plot: {result['plot']}; wall {wall_s:.0f} s (start-up {startup_s:.0f} s)")
    return result
