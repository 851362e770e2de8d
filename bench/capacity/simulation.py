"""Discrete-event simulation (SimPy) of the service topology, driven by the capacity model's phase times.

The analytic model adds averages; this one lets them collide. Policy replicas generate their share
of each batch and pause while a push lands (the canary first, then the rest); their samples queue
at reward replicas that batch pairs dynamically next to the live traffic (canary requests scored
twice); the trainer takes batches, drops those older than the staleness cap, trains and pushes.
Every phase gets seeded log-normal jitter, so the same seed gives the same report.
Live requests are drawn per tick (Poisson counts), which keeps a run at a few thousand events.
"""

from __future__ import annotations

import math
import random
import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field

import simpy

CHUNKS = 8  # a replica checks for a push between chunks of its generation (pause granularity)


@dataclass(frozen=True)
class SimConfig:
    """One simulated run: the topology, the phase times (seconds) and the traffic."""

    generate_s: float = field(metadata={"help": "One batch's generation on each replica (its share)."})
    train_s: float = field(metadata={"help": "One optimizer step."})
    push_s: float = field(metadata={"help": "One push to one replica group (canary or the stable replicas)."})
    pairs_per_batch: int = field(metadata={"help": "Pairs a batch sends to the reward service."})
    reward_pair_s: float = field(metadata={"help": "Forward seconds per pair on one reward replica."})
    reward_call_s: float = field(default=0.0, metadata={"help": "Fixed seconds per reward batch."})
    policy_replicas: int = field(default=1, metadata={"help": "Policy replicas (one is the canary if canary)."})
    reward_replicas: int = field(default=1, metadata={"help": "Reward replicas behind one queue."})
    reward_max_batch: int = field(default=64, metadata={"help": "Most pairs per reward forward."})
    live_requests_per_s: float = field(default=0.0, metadata={"help": "Live traffic scored besides the rollouts."})
    canary_share: float = field(default=0.0, metadata={"help": "Live share on the canary (scored twice)."})
    canary: bool = field(default=True, metadata={"help": "Pushes land on one canary replica before the rest."})
    async_rollouts: bool = field(default=True, metadata={"help": "Generate ahead while the trainer trains."})
    max_staleness: int = field(default=1, metadata={"help": "Drop batches older than this many versions."})
    steps: int = field(default=30, metadata={"help": "Optimizer steps simulated."})
    warmup: int = field(default=2, metadata={"help": "Steps left out of the statistics."})
    jitter_cv: float = field(default=0.1, metadata={"help": "Coefficient of variation of every phase time."})
    live_tick_s: float = field(default=0.1, metadata={"help": "Live arrivals are drawn once per tick."})
    seed: int = field(default=0, metadata={"help": "Seed of every random draw."})


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class _Topology:
    def __init__(self, config: SimConfig) -> None:
        self.c = config
        self.env = simpy.Environment()
        self.rng = random.Random(config.seed)
        self.version = 0
        self.push_done = self.env.event().succeed()  # open gate: no push in progress
        self.ready = simpy.Store(self.env)
        depth = max(1, config.max_staleness)  # batches in production or waiting: never older than the cap
        self.slots = simpy.Container(self.env, capacity=depth, init=depth)
        self.trained = self.env.event()
        self.queue: list[dict] = []
        self.wake = self.env.event()
        self.policy_busy = 0.0
        self.reward_busy = 0.0
        self.waits: dict[str, list[float]] = {"rollout": [], "live": []}
        self.steps: list[dict] = []
        self.dropped = 0
        self.live_pairs = 0

    def jitter(self, seconds: float) -> float:
        if seconds <= 0 or self.c.jitter_cv <= 0:
            return max(0.0, seconds)
        sigma = math.sqrt(math.log(1 + self.c.jitter_cv**2))
        return seconds * self.rng.lognormvariate(-(sigma**2) / 2, sigma)

    # ---- reward service -------------------------------------------------------

    def enqueue(self, pairs: int, kind: str, arrived: float, done: simpy.Event | None) -> None:
        counter = {"left": math.ceil(pairs / self.c.reward_max_batch), "done": done}
        while pairs > 0:
            part = min(pairs, self.c.reward_max_batch)
            self.queue.append({"pairs": part, "kind": kind, "arrived": arrived, "counter": counter})
            pairs -= part
        if not self.wake.triggered:
            self.wake.succeed()

    def live_traffic(self):
        rate = self.c.live_requests_per_s * (1 + self.c.canary_share)
        while rate > 0:
            yield self.env.timeout(self.c.live_tick_s)
            count = _poisson(self.rng, rate * self.c.live_tick_s)
            if count:
                self.live_pairs += count
                self.enqueue(count, "live", self.env.now - self.c.live_tick_s / 2, None)

    def reward_replica(self):
        while True:
            if not self.queue:
                if self.wake.triggered:
                    self.wake = self.env.event()
                yield self.wake
                continue
            batch, pairs = [], 0
            while self.queue and pairs + self.queue[0]["pairs"] <= self.c.reward_max_batch:
                item = self.queue.pop(0)
                batch.append(item)
                pairs += item["pairs"]
            for item in batch:
                self.waits[item["kind"]].extend([self.env.now - item["arrived"]] * item["pairs"])
            seconds = self.jitter(self.c.reward_call_s + pairs * self.c.reward_pair_s)
            yield self.env.timeout(seconds)
            self.reward_busy += seconds
            for item in batch:
                counter = item["counter"]
                counter["left"] -= 1
                if counter["left"] == 0 and counter["done"] is not None:
                    counter["done"].succeed()

    # ---- policy replicas and the rollout producer --------------------------------

    def replica_share(self, pairs: int):
        """One replica generates its share in chunks, pausing while a push lands, then sends it to be scored."""
        for _ in range(CHUNKS):
            yield self.push_done
            seconds = self.jitter(self.c.generate_s / CHUNKS)
            yield self.env.timeout(seconds)
            self.policy_busy += seconds
        scored = self.env.event()
        self.enqueue(pairs, "rollout", self.env.now, scored)
        yield scored

    def producer(self):
        index = 0
        share = max(1, self.c.pairs_per_batch // self.c.policy_replicas)
        while True:
            if not self.c.async_rollouts and index > 0:
                yield self.trained
            yield self.slots.get(1)
            yield self.push_done
            sampled_with, started = self.version, self.env.now
            yield self.env.all_of([self.env.process(self.replica_share(share)) for _ in range(self.c.policy_replicas)])
            yield self.ready.put({"version": sampled_with, "produced_s": self.env.now - started})
            index += 1

    # ---- trainer ------------------------------------------------------------------

    def trainer(self):
        last = self.env.now
        while len(self.steps) < self.c.steps:
            waited_from = self.env.now
            batch = yield self.ready.get()
            yield self.slots.put(1)
            wait = self.env.now - waited_from
            staleness = self.version - batch["version"]
            if staleness > self.c.max_staleness:
                self.dropped += 1
                continue
            train = self.jitter(self.c.train_s)
            yield self.env.timeout(train)
            pushed_from = self.env.now
            self.push_done = self.env.event()
            groups = 2 if self.c.canary and self.c.policy_replicas > 1 else 1
            for _ in range(groups):  # the canary's push, then the stable replicas' (in parallel)
                yield self.env.timeout(self.jitter(self.c.push_s))
            self.version += 1
            self.push_done.succeed()
            push = self.env.now - pushed_from
            self.steps.append(
                {
                    "step_s": self.env.now - last,
                    "wait": wait,
                    "train": train,
                    "push": push,
                    "generate_score": batch["produced_s"],
                    "staleness": staleness,
                }
            )
            last = self.env.now
            if not self.c.async_rollouts:
                self.trained.succeed()
                self.trained = self.env.event()

    def run(self) -> dict:
        for _ in range(self.c.reward_replicas):
            self.env.process(self.reward_replica())
        self.env.process(self.live_traffic())
        self.env.process(self.producer())
        done = self.env.process(self.trainer())
        self.env.run(until=done)
        horizon = self.env.now
        kept = self.steps[self.c.warmup :] or self.steps
        times = [s["step_s"] for s in kept]
        return {
            "config": asdict(self.c),
            "simulated_s": round(horizon, 3),
            "steps": len(self.steps),
            "step_s": {
                "mean": statistics.fmean(times),
                "p50": _quantile(times, 0.5),
                "p90": _quantile(times, 0.9),
                "p99": _quantile(times, 0.99),
                "min": min(times),
                "max": max(times),
            },
            "phase_mean_s": {
                k: statistics.fmean(s[k] for s in kept) for k in ("wait", "train", "push", "generate_score")
            },
            "policy_utilisation": self.policy_busy / (horizon * self.c.policy_replicas),
            "reward_utilisation": self.reward_busy / (horizon * self.c.reward_replicas),
            "reward_queue_wait_s": {
                kind: {"p50": _quantile(v, 0.5), "p99": _quantile(v, 0.99), "pairs": len(v)}
                for kind, v in self.waits.items()
            },
            "staleness": dict(sorted(Counter(s["staleness"] for s in self.steps).items())),
            "dropped_batches": self.dropped,
            "live_pairs": self.live_pairs,
        }


def _poisson(rng: random.Random, mean: float) -> int:
    """Poisson draw (Knuth for small means, a rounded normal for large ones: the tick counts only)."""
    if mean > 50:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def simulate(config: SimConfig) -> dict:
    """Runs one configuration to `config.steps` optimizer steps and reports its distributions."""
    return _Topology(config).run()
