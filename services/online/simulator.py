"""Simulated users: live traffic to a stable and a canary policy, and feedback on what they got.

Each user has a rater personality (`preference.Rater`: noise, maybe adversarial) and
is routed to the stable or the canary replica by `routing.CanaryRouter`. Requests
arrive open-loop (gamma gaps, like `vllm bench serve`) at `request_rate`, bounded by
`duration_s` and `max_requests`, with at most `max_concurrency` in flight. A request
asks for `samples_per_request` completions with recording on; after a short think
time the user rates some samples (1-5) and, when there are two, picks the better one.
Feedback goes to the FeedbackService of the replica the user talked to (a policy with
`--experience-db` hosts it) unless `feedback_address` names another.

A canary user's request is, with `interleave_probability`, answered by both replicas
at once (one completion each, shown in random order, the pattern of search-ranking
interleaving): the user's pick is a paired stable-vs-canary judgement, the input of
the canary's sequential test. Run with `request_rate=inf` and a large
`max_concurrency`, users keep as many requests in flight as the engine batches.

Serving failures (a replica restarting) are counted, not fatal. Every acknowledged
feedback record can be appended to `acked_log` (JSONL), so a crash test can check
that the store kept each one. The summary reports, per weight version, the hidden
utility of what it served (the truth the feedback estimates) and the ratings given.

Each sample is rated by one user only, so the store's filters cannot find adversarial
raters by consensus; a noise-free expert's gold answers on a share of the pairs
(`gold_probability`, clear cases only) are what lets them down-weight those raters.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from rlhf.v1 import feedback_pb2 as fb
from rlhf.v1 import feedback_pb2_grpc, policy_pb2, policy_pb2_grpc
from services.common.arrivals import arrival_gaps
from services.common.client import open_channel, require_loopback
from services.common.config import option
from services.common.prompts import PromptRow, load_prompts
from services.online.routing import CANARY, STABLE, CanaryRouter
from services.reward.training.simulated_preference import (
    HiddenPreference,
    PreferenceSpec,
    Rater,
)

log = logging.getLogger(__name__)

GOLD_RATER = "gold-expert"


@dataclass(frozen=True)
class SimulatorConfig:
    """Simulated users send prompts to the policy replicas and give feedback from a hidden preference."""

    stable_address: str = option("127.0.0.1:50051", "Stable policy replica (host:port, loopback only).")
    canary_address: str = option("", "Canary policy replica (loopback only); empty: every user goes to the stable one.")
    canary_fraction: float = option(0.2, "Share of users (sticky by user id) routed to the canary.")
    feedback_address: str = option(
        "", "FeedbackService to submit to; empty: the replica the user talked to (policy started with --experience-db)."
    )
    prompts_file: str = option("data/book_reviews.jsonl", "JSONL prompts ({prompt, ...} per line).")
    users: int = option(40, "Simulated users (each is also a rater).")
    adversarial_fraction: float = option(0.1, "Share of users who report the opposite of what they think.")
    rating_noise: float = option(0.1, "Std of the noise on what a rater perceives, in utility units ([0, 1] scale).")
    request_rate: float = option(2.0, "Requests per second over all users (open loop; inf = as fast as slots free up).")
    burstiness: float = option(1.0, "Gamma shape of the gaps between requests (1 = Poisson).")
    duration_s: float = option(60.0, "Stop sending after this many seconds.")
    max_requests: int = option(1000, "Stop after this many requests.")
    max_concurrency: int = option(8, "Requests in flight at most (later arrivals wait for a slot).")
    samples_per_request: int = option(2, "Completions per request (2 or more allows pairwise choices).")
    max_tokens: int = option(48, "Tokens per completion.")
    temperature: float = option(1.0, "Sampling temperature users get.")
    apply_chat_template: bool = option(True, "Send prompts through the model's chat template.")
    rating_probability: float = option(0.8, "Chance a user rates a given sample (1-5).")
    pairwise_probability: float = option(0.6, "Chance a user picks the better of the first two samples.")
    interleave_probability: float = option(
        0.5,
        "Chance a canary user's request is answered by both replicas (one completion each, random order) and judged as a stable-vs-canary pair.",
    )
    gold_probability: float = option(
        0.1,
        "Chance a noise-free expert also answers a request's pair as gold (SubmitGoldFeedback, scope admin); gold lets the store's filters find adversarial raters.",
    )
    gold_min_gap: float = option(
        0.1, "Gold answers are given only on clear cases: hidden utilities at least this far apart."
    )
    think_time_s: float = option(
        0.3, "Delay between a reply and the user's feedback (lets the policy's recorder store the samples)."
    )
    target_words: int = option(40, "Hidden preference: the completion length users like, in words.")
    title_weight: float = option(1.0, "Hidden preference: weight of naming the book asked about.")
    length_weight: float = option(1.0, "Hidden preference: weight of being near target_words long.")
    diversity_weight: float = option(1.0, "Hidden preference: weight of not repeating words.")
    seed: int = option(0, "Seed for users, prompts, noise and arrivals.")
    rpc_timeout_s: float = option(60.0, "Deadline of each Generate / feedback call.")
    acked_log: str = option("", "Append every acknowledged feedback record here (JSONL); empty: none.")
    output: str = option("", "Write the summary JSON here; empty: only log it.")
    log_level: str = option("INFO", "Python logging level.")

    def __post_init__(self) -> None:
        for name in (
            "canary_fraction",
            "adversarial_fraction",
            "rating_probability",
            "pairwise_probability",
            "gold_probability",
            "interleave_probability",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.users < 1 or self.max_concurrency < 1 or self.samples_per_request < 1 or self.max_tokens < 1:
            raise ValueError("users, max_concurrency, samples_per_request and max_tokens must be >= 1")
        if self.duration_s <= 0 or self.max_requests < 1:
            raise ValueError("duration_s must be > 0 and max_requests >= 1 (traffic is always bounded)")

    def preference(self) -> PreferenceSpec:
        return PreferenceSpec(self.target_words, self.title_weight, self.length_weight, self.diversity_weight)


@dataclass(frozen=True)
class SimUser:
    user_id: str
    rater: Rater
    replica: str


def make_users(config: SimulatorConfig) -> list[SimUser]:
    rng = random.Random(config.seed)
    router = CanaryRouter(config.canary_fraction if config.canary_address else 0.0)
    ids = [f"user-{i:04d}" for i in range(config.users)]
    adversarial = set(rng.sample(ids, round(config.adversarial_fraction * len(ids))))
    return [SimUser(u, Rater(u, config.rating_noise, u in adversarial), router.route(u)) for u in ids]


@dataclass
class VersionTally:
    """What one weight version of one replica served and how it was judged."""

    samples: int = 0
    utility_sum: float = 0.0
    utility_sq_sum: float = 0.0
    ratings: int = 0
    rating_sum: float = 0.0

    def add(self, utility: float) -> None:
        self.samples += 1
        self.utility_sum += utility
        self.utility_sq_sum += utility * utility

    def as_dict(self) -> dict:
        return {
            "samples": self.samples,
            "mean_hidden_utility": round(self.utility_sum / self.samples, 4) if self.samples else None,
            "hidden_utility_sq_sum": round(self.utility_sq_sum, 6),
            "ratings": self.ratings,
            "mean_rating": round(self.rating_sum / self.ratings, 4) if self.ratings else None,
        }


@dataclass
class Tally:
    requests: Counter = field(default_factory=Counter)  # (replica, outcome)
    feedback: Counter = field(default_factory=Counter)  # kind -> acknowledged
    rejected: Counter = field(default_factory=Counter)  # status code name -> count
    versions: dict = field(default_factory=lambda: defaultdict(VersionTally))  # (replica, version) -> VersionTally
    judgements: Counter = field(default_factory=Counter)  # (version, version), sorted -> acknowledged pairwise choices


class TrafficSimulator:
    def __init__(self, config: SimulatorConfig) -> None:
        for address in filter(None, (config.stable_address, config.canary_address, config.feedback_address)):
            require_loopback(address)
        self.config = config
        self.rows: list[PromptRow] = load_prompts(config.prompts_file)
        self.users = make_users(config)
        self.preference = HiddenPreference(config.preference())
        self.addresses = {STABLE: config.stable_address, CANARY: config.canary_address or config.stable_address}
        self._channels = {name: open_channel(address) for name, address in self.addresses.items()}
        self._policy = {name: policy_pb2_grpc.PolicyServiceStub(ch) for name, ch in self._channels.items()}
        if config.feedback_address:
            self._channels["feedback"] = open_channel(config.feedback_address)
            shared = feedback_pb2_grpc.FeedbackServiceStub(self._channels["feedback"])
            self._feedback = dict.fromkeys(self.addresses, shared)
        else:
            self._feedback = {name: feedback_pb2_grpc.FeedbackServiceStub(ch) for name, ch in self._channels.items()}
        self.tally = Tally()
        self._lock = threading.Lock()
        self._acked = open(config.acked_log, "a", encoding="utf-8") if config.acked_log else None

    # ---- one request ---------------------------------------------------------

    def _request(self, index: int, user: SimUser, row: PromptRow, rng: random.Random) -> None:
        c = self.config
        interleaved = user.replica == CANARY and bool(c.canary_address) and rng.random() < c.interleave_probability

        def request(n: int, suffix: str = "") -> policy_pb2.GenerateRequest:
            return policy_pb2.GenerateRequest(
                prompts=[policy_pb2.Prompt(text=row.prompt, apply_chat_template=c.apply_chat_template)],
                # No per-request seed: users do not need reproducible samples, and vLLM 0.32's CPU runner fails on
                # seeded requests whose prefill is chunked under load ("CPU Generator does not use offset").
                sampling=policy_pb2.SamplingParams(n=n, max_tokens=c.max_tokens, temperature=c.temperature),
                request_id=f"sim-{c.seed}-{index}{suffix}",
                recording=policy_pb2.RECORDING_MODE_ON,
            )

        # (replica, pending reply): an interleaved request goes to both replicas at once, one completion each
        calls = (
            [
                (name, self._policy[name].Generate.future(request(1, f"-{name}"), timeout=c.rpc_timeout_s))
                for name in (CANARY, STABLE)
            ]
            if interleaved
            else [
                (
                    user.replica,
                    self._policy[user.replica].Generate.future(request(c.samples_per_request), timeout=c.rpc_timeout_s),
                )
            ]
        )
        served: list[tuple[str, policy_pb2.Sample]] = []
        for name, call in calls:
            try:
                served += [(name, sample) for sample in call.result().results[0].samples]
            except grpc.RpcError as exc:
                self._count_request(name, exc.code().name)
                return
            self._count_request(name, "ok")
        if interleaved:
            rng.shuffle(served)  # the user does not know which side is the canary
        samples = [sample for _, sample in served]
        utilities = [self.preference.utility(row.prompt, s.text) for s in samples]
        with self._lock:
            for (name, sample), utility in zip(served, utilities):
                self.tally.versions[(name, sample.weight_version)].add(utility)
        time.sleep(c.think_time_s)
        stub = self._feedback[user.replica]
        for (name, sample), utility in zip(served, utilities):
            if rng.random() < c.rating_probability:
                value = user.rater.rating(utility, rng)
                body = fb.FeedbackBody(
                    rating=fb.Rating(sample_id=sample.sample_id, value=value, scale_min=1, scale_max=5)
                )
                if self._submit(stub.SubmitFeedback, user, body, "rating", [sample], user.replica):
                    with self._lock:
                        tally = self.tally.versions[(name, sample.weight_version)]
                        tally.ratings += 1
                        tally.rating_sum += value
        if len(samples) >= 2 and samples[0].text != samples[1].text:
            if rng.random() < c.pairwise_probability:
                first = user.rater.prefers_first(utilities[0], utilities[1], rng)
                kind = "interleaved" if interleaved else "pairwise"
                if self._submit(stub.SubmitFeedback, user, _pairwise(samples, first), kind, samples[:2], user.replica):
                    with self._lock:
                        self.tally.judgements[
                            tuple(sorted((samples[0].weight_version, samples[1].weight_version)))
                        ] += 1
            if rng.random() < c.gold_probability and abs(utilities[0] - utilities[1]) >= c.gold_min_gap:
                gold = SimUser(GOLD_RATER, Rater(GOLD_RATER, 0.0), user.replica)
                self._submit(
                    stub.SubmitGoldFeedback,
                    gold,
                    _pairwise(samples, utilities[0] > utilities[1]),
                    "gold",
                    samples[:2],
                    user.replica,
                )

    def _submit(self, method, user: SimUser, body: fb.FeedbackBody, kind: str, samples, replica: str) -> bool:
        request = fb.SubmitFeedbackRequest(rater_id=user.user_id, body=body)
        for attempt in range(4):
            try:
                reply = method(request, timeout=self.config.rpc_timeout_s)
                break
            except grpc.RpcError as exc:
                # NOT_FOUND: the replica's recorder has not written the sample yet; retry briefly.
                if exc.code() == grpc.StatusCode.NOT_FOUND and attempt < 3:
                    time.sleep(0.25 * 2**attempt)
                    continue
                with self._lock:
                    self.tally.rejected[exc.code().name] += 1
                return False
        with self._lock:
            self.tally.feedback[kind] += 1
            if self._acked is not None:
                self._acked.write(
                    json.dumps(
                        {
                            "feedback_id": reply.feedback_id,
                            "kind": kind,
                            "rater_id": user.user_id,
                            "replica": replica,
                            "sample_ids": [s.sample_id for s in samples],
                            "weight_versions": [s.weight_version for s in samples],
                        }
                    )
                    + "\n"
                )
                self._acked.flush()
        return True

    def _count_request(self, replica: str, outcome: str) -> None:
        with self._lock:
            self.tally.requests[(replica, outcome)] += 1

    # ---- the run -----------------------------------------------------------------

    def run(self, stop: threading.Event | None = None) -> dict:
        """Sends traffic until duration_s, max_requests or `stop`; returns the summary."""
        c = self.config
        stop = stop or threading.Event()
        rng = random.Random(c.seed + 1)
        gaps = arrival_gaps(c.request_rate, c.burstiness, c.seed)
        slots = threading.BoundedSemaphore(c.max_concurrency)
        started = time.monotonic()
        deadline = started + c.duration_s
        sent = 0
        log.info(
            "simulating %d users (%d on the canary, %d adversarial) at %.3g req/s for up to %.0f s / %d requests",
            len(self.users),
            sum(u.replica == CANARY for u in self.users),
            sum(u.rater.adversarial for u in self.users),
            c.request_rate,
            c.duration_s,
            c.max_requests,
        )

        def job(index: int, user: SimUser, row: PromptRow, seed: int) -> None:
            try:
                self._request(index, user, row, random.Random(seed))
            except Exception:
                log.exception("simulated request %d failed", index)
            finally:
                slots.release()

        def slot() -> bool:
            """Waits for a free slot; False when the run should end instead."""
            while not slots.acquire(timeout=0.2):
                if stop.is_set() or time.monotonic() >= deadline:
                    return False
            return True

        next_at = started
        with ThreadPoolExecutor(c.max_concurrency, thread_name_prefix="sim-user") as pool:
            while sent < c.max_requests and not stop.is_set():
                next_at += next(gaps)
                if next_at >= deadline or stop.wait(max(0.0, next_at - time.monotonic())) or not slot():
                    break
                pool.submit(job, sent, rng.choice(self.users), rng.choice(self.rows), rng.getrandbits(48))
                sent += 1
        return self.summary(time.monotonic() - started, sent)

    def summary(self, seconds: float, sent: int) -> dict:
        with self._lock:
            requests = {f"{r}:{o}": n for (r, o), n in sorted(self.tally.requests.items())}
            versions = {f"{r}:v{v}": t.as_dict() for (r, v), t in sorted(self.tally.versions.items())}
            return {
                "seconds": round(seconds, 2),
                "requests_sent": sent,
                "requests": requests,
                "feedback_acknowledged": dict(self.tally.feedback),
                "feedback_rejected": dict(self.tally.rejected),
                "by_replica_version": versions,
                "requests_per_s": round(sum(n for (_, o), n in self.tally.requests.items() if o == "ok") / seconds, 3)
                if seconds > 0
                else None,
                "judgements": {f"v{a}-v{b}": n for (a, b), n in sorted(self.tally.judgements.items())},
                "judgements_per_version": judgements_per_version(self.tally.judgements),
                "users": {
                    "total": len(self.users),
                    "canary": sum(u.replica == CANARY for u in self.users),
                    "adversarial": sum(u.rater.adversarial for u in self.users),
                },
            }

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        if self._acked is not None:
            self._acked.close()


def judgements_per_version(judgements: Counter) -> dict[str, int]:
    """Pairwise choices each weight version took part in (a same-version pair counts once)."""
    counts: Counter = Counter()
    for (a, b), n in judgements.items():
        for version in {a, b}:
            counts[f"v{version}"] += n
    return dict(sorted(counts.items(), key=lambda kv: int(kv[0][1:])))


def _pairwise(samples, first_wins: bool) -> fb.FeedbackBody:
    chosen, rejected = (samples[0], samples[1]) if first_wins else (samples[1], samples[0])
    return fb.FeedbackBody(
        pairwise=fb.PairwiseChoice(chosen_sample_id=chosen.sample_id, rejected_sample_id=rejected.sample_id)
    )


def write_summary(summary: dict, output: str) -> None:
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(summary, indent=2) + "\n")
