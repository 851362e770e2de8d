"""Soak: mixed generate / score / push / feedback traffic while services restart, with exact accounting.

`SoakStack` owns a policy server (recording into an experience store), a reward
server and the standalone FeedbackService on loopback, and restarts them on request
(SIGTERM drain or SIGKILL crash, same ports). `run_soak` drives every RPC kind from
worker threads for a bounded time, restarts one service every `restart_every_s`,
and reports per RPC the requests sent, succeeded and failed by status, and the
acknowledged writes that were lost (feedback acknowledged but missing from the
store afterwards; must be zero). The integration test runs it briefly, `make
bench-soak` for minutes.
"""

from __future__ import annotations

import itertools
import logging
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import torch

from rlhf.v1 import feedback_pb2, feedback_pb2_grpc, policy_pb2, policy_pb2_grpc, reward_pb2, reward_pb2_grpc
from services.common.client import open_channel
from services.common.process import ServerProcess, free_port
from services.common.weight_stream import push_requests

log = logging.getLogger(__name__)

SERVICES = ("reward", "feedback", "policy")
# A rules reward model: starts in seconds, so restarts of the reward service are quick.
RULES_TOML = """\
[[models]]
name = "length"
kind = "rules"
target_words = 10
required_words = ["book"]
"""
PROMPTS = ("Review a mystery novel.", "Describe a good book.", "What makes a story memorable?", "Summarize a fantasy saga.")


@dataclass
class Tally:
    """Requests of one RPC: sent, succeeded, failed by status code name."""

    sent: int = 0
    succeeded: int = 0
    failed: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {"sent": self.sent, "succeeded": self.succeeded, "failed": dict(sorted(self.failed.items()))}


class SoakStack:
    """The services a soak drives, each restartable on fixed loopback ports."""

    def __init__(self, root: Path, policy_model: str, rewards_toml: str, reward_model: str, policy_args: tuple[str, ...] = ()) -> None:
        self.root, self.reward_model = root, reward_model
        root.mkdir(parents=True, exist_ok=True)
        (root / "rewards.toml").write_text(rewards_toml)
        self.db_url = f"sqlite:///{root}/experience.db"
        self.ports = {name: free_port() for name in SERVICES}
        self.addresses = {name: f"127.0.0.1:{port}" for name, port in self.ports.items()}
        self.args = {
            "policy": ["--model", policy_model, "--port", str(self.ports["policy"]), "--metrics-port", "0",
                       "--experience-db", self.db_url, "--drain-timeout-s", "10", "--grace-s", "2", *policy_args],
            "reward": ["--port", str(self.ports["reward"]), "--metrics-port", "0", "--models-file", str(root / "rewards.toml")],
            "feedback": ["--db", self.db_url, "--port", str(self.ports["feedback"]), "--metrics-port", "0", "--grace-s", "1",
                         "--rate-limit", "0"],
        }
        self.modules = {"policy": "services.policy", "reward": "services.reward", "feedback": "services.experience"}
        self.processes: dict[str, ServerProcess] = {}
        self.launches = itertools.count()

    def launch(self, name: str) -> ServerProcess:
        process = ServerProcess(self.modules[name], self.args[name], self.root / f"{name}-{next(self.launches)}.log",
                                env={"HF_HUB_OFFLINE": "1"})
        self.processes[name] = process.launch()
        return process

    def start(self, timeout_s: float = 300) -> None:
        for name in ("feedback", "reward", "policy"):  # the store exists before the policy records into it
            self.launch(name).wait_serving(self.addresses[name], timeout_s)

    def restart(self, name: str, crash: bool, timeout_s: float = 300) -> float:
        """Stops (SIGKILL when `crash`, else SIGTERM drain) and starts `name` again; returns seconds it was away."""
        started = time.monotonic()
        process = self.processes[name]
        if crash:
            process.crash()
        else:
            code = process.stop()
            if code != 0:
                raise RuntimeError(f"{name} exited with {code} on SIGTERM\n{process.log_tail()}")
        self.launch(name).wait_serving(self.addresses[name], timeout_s)
        return time.monotonic() - started

    def stop(self) -> dict[str, int | None]:
        return {name: process.stop() for name, process in self.processes.items()}


@dataclass(frozen=True)
class SoakSettings:
    duration_s: float = 60.0
    restart_every_s: float = 20.0
    push_every_s: float = 5.0
    generate_workers: int = 2
    max_tokens: int = 8
    rpc_timeout_s: float = 30.0
    seed: int = 0


class Soak:
    """One soak run: the workers, the restarts and the books."""

    def __init__(self, stack: SoakStack, weights: dict[str, torch.Tensor], settings: SoakSettings,
                 progress: Callable[[str], None] = lambda line: None) -> None:
        self.stack, self.weights, self.settings, self.progress = stack, weights, settings, progress
        self.tallies: dict[str, Tally] = {rpc: Tally() for rpc in ("Generate", "Score", "PushWeights", "SubmitFeedback")}
        self.samples: deque[tuple[float, str]] = deque(maxlen=1000)  # (time generated, sample id) awaiting feedback
        self.acknowledged: set[str] = set()
        self.pushed_versions: list[int] = []
        self.restarts: list[dict] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._random = random.Random(settings.seed)

    # ---- accounting -------------------------------------------------------------

    def _call(self, rpc: str, call: Callable[[], object]) -> object | None:
        with self._lock:
            self.tallies[rpc].sent += 1
        try:
            reply = call()
        except grpc.RpcError as exc:
            with self._lock:
                self.tallies[rpc].failed[exc.code().name] += 1
            if exc.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
                log.error("%s failed with %s: %s", rpc, exc.code().name, exc.details())
            time.sleep(0.2)  # a down service is not hammered
            return None
        with self._lock:
            self.tallies[rpc].succeeded += 1
        return reply

    # ---- workers --------------------------------------------------------------------

    def _generate(self, worker: int) -> None:
        with open_channel(self.stack.addresses["policy"]) as channel:
            stub = policy_pb2_grpc.PolicyServiceStub(channel)
            for index in itertools.count():
                if self._stop.is_set():
                    return
                request = policy_pb2.GenerateRequest(
                    prompts=[policy_pb2.Prompt(text=PROMPTS[(worker + index) % len(PROMPTS)])],
                    sampling=policy_pb2.SamplingParams(n=2, max_tokens=self.settings.max_tokens, temperature=1.0),
                    request_id=f"soak-{worker}-{index}",
                )
                reply = self._call("Generate", lambda: stub.Generate(request, timeout=self.settings.rpc_timeout_s))
                if reply is not None:
                    now = time.monotonic()
                    self.samples.extend((now, s.sample_id) for r in reply.results for s in r.samples if s.sample_id)

    def _score(self) -> None:
        with open_channel(self.stack.addresses["reward"]) as channel:
            stub = reward_pb2_grpc.RewardServiceStub(channel)
            while not self._stop.is_set():
                items = [reward_pb2.ScoreItem(prompt=p, completion=f"a book about {p.lower()}") for p in PROMPTS]
                request = reward_pb2.ScoreRequest(model=self.stack.reward_model, items=items)
                self._call("Score", lambda: stub.Score(request, timeout=self.settings.rpc_timeout_s))

    def _feedback(self) -> None:
        with open_channel(self.stack.addresses["feedback"]) as channel:
            stub = feedback_pb2_grpc.FeedbackServiceStub(channel)
            for index in itertools.count():
                if self._stop.is_set():
                    return
                # the policy records samples in the background: judge ones a second old
                if not self.samples or time.monotonic() - self.samples[0][0] < 1.0:
                    time.sleep(0.1)
                    continue
                _, sample_id = self.samples.popleft()
                request = feedback_pb2.SubmitFeedbackRequest(
                    rater_id=f"soak-{index % 7}", body=feedback_pb2.FeedbackBody(thumbs=feedback_pb2.Thumbs(sample_id=sample_id, up=index % 2 == 0))
                )
                reply = self._call("SubmitFeedback", lambda: stub.SubmitFeedback(request, timeout=self.settings.rpc_timeout_s))
                if reply is not None:
                    with self._lock:
                        self.acknowledged.add(reply.feedback_id)

    def _push(self) -> None:
        with open_channel(self.stack.addresses["policy"]) as channel:
            stub = policy_pb2_grpc.PolicyServiceStub(channel)
            while not self._stop.wait(self.settings.push_every_s):
                scale = 1.0 + 1e-3 * self._random.random()
                tensors = [(name, tensor * scale) for name, tensor in self.weights.items()]
                reply = self._call("PushWeights", lambda: stub.PushWeights(push_requests(tensors, 1 << 20), timeout=120))
                if reply is not None:
                    self.pushed_versions.append(reply.weight_version)

    # ---- the run ----------------------------------------------------------------------

    def run(self) -> dict:
        s = self.settings
        threads = [threading.Thread(target=self._generate, args=(w,), daemon=True) for w in range(s.generate_workers)]
        threads += [threading.Thread(target=target, daemon=True) for target in (self._score, self._feedback, self._push)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        order = itertools.cycle(SERVICES)
        next_restart = started + s.restart_every_s
        while time.monotonic() - started < s.duration_s:
            if s.restart_every_s and time.monotonic() >= next_restart:
                name = next(order)
                crash = len(self.restarts) % 2 == 1  # alternate: graceful drain, then crash
                self.progress(f"{time.monotonic() - started:5.0f} s: {'crashing' if crash else 'restarting'} {name}")
                away = self.stack.restart(name, crash)
                self.restarts.append({"service": name, "kind": "sigkill" if crash else "sigterm", "away_s": round(away, 1),
                                      "at_s": round(time.monotonic() - started - away, 1)})
                next_restart = time.monotonic() + s.restart_every_s
            time.sleep(0.2)
        self._stop.set()
        for thread in threads:
            thread.join(s.rpc_timeout_s + 130)
        elapsed = time.monotonic() - started
        stored = self._stored_feedback_ids()
        lost = sorted(self.acknowledged - stored)
        return {
            "duration_s": round(elapsed, 1),
            "settings": asdict(s),
            "restarts": self.restarts,
            "rpcs": {rpc: tally.as_dict() for rpc, tally in self.tallies.items()},
            "sent": sum(t.sent for t in self.tallies.values()),
            "succeeded": sum(t.succeeded for t in self.tallies.values()),
            "acknowledged_writes": {"feedback": len(self.acknowledged), "pushes": len(self.pushed_versions)},
            "lost": {"feedback": len(lost)},
            "lost_ids": lost[:20],
            "pushed_versions_increasing_between_restarts": _increasing_runs(self.pushed_versions),
            "serving_after": self._serving_after(),
        }

    def _stored_feedback_ids(self) -> set[str]:
        stored: set[str] = set()
        with open_channel(self.stack.addresses["feedback"]) as channel:
            stub = feedback_pb2_grpc.FeedbackServiceStub(channel)
            cursor = 0
            while True:
                page = stub.ExportFeedback(feedback_pb2.ExportFeedbackRequest(since_cursor=cursor, limit=10000), timeout=60)
                stored |= {r.feedback_id for r in page.records}
                cursor = page.next_cursor
                if not page.has_more:
                    return stored

    def _serving_after(self) -> dict[str, bool]:
        """Whether each service answers a well-formed request once the soak is over."""
        results = {}
        with open_channel(self.stack.addresses["policy"]) as channel:
            request = policy_pb2.GenerateRequest(prompts=[policy_pb2.Prompt(text=PROMPTS[0])],
                                                 sampling=policy_pb2.SamplingParams(max_tokens=4))
            results["policy"] = _ok(lambda: policy_pb2_grpc.PolicyServiceStub(channel).Generate(request, timeout=60))
        with open_channel(self.stack.addresses["reward"]) as channel:
            request = reward_pb2.ScoreRequest(model=self.stack.reward_model, items=[reward_pb2.ScoreItem(prompt="p", completion="c")])
            results["reward"] = _ok(lambda: reward_pb2_grpc.RewardServiceStub(channel).Score(request, timeout=60))
        with open_channel(self.stack.addresses["feedback"]) as channel:
            results["feedback"] = _ok(lambda: feedback_pb2_grpc.FeedbackServiceStub(channel).GetStats(feedback_pb2.GetStatsRequest(), timeout=60))
        return results


def _ok(call: Callable[[], object]) -> bool:
    try:
        call()
        return True
    except grpc.RpcError:
        return False


def _increasing_runs(versions: list[int]) -> bool:
    """Versions acknowledged by one policy process only go up (a restart starts again at 0 and counts up)."""
    return all(b > a or b == 1 for a, b in zip(versions, versions[1:]))
