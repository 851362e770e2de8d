"""Soak: mixed generate / score / push / feedback traffic while services restart, with exact accounting.

`SoakStack` owns a policy server (recording into an experience store), a reward
server and the standalone FeedbackService on loopback, and restarts them on request
(SIGTERM drain or SIGKILL crash, same ports). `Soak.run` drives every RPC kind from
worker threads and works through `RESTART_SCHEDULE`, one restart every
`restart_every_s`: every service is SIGKILLed once and SIGTERMed once, and the run
lasts at least `duration_s` and until `restart_every_s` after the last restart. It reports per RPC the
requests sent, succeeded (and their share) and failed by status; per service the
longest time its clients got no successful reply (an outage runs from the last
success before a failure to the next success) and the share of the run it was
reachable; the acknowledged writes that were lost (feedback acknowledged but missing
from the store afterwards; must be zero); and pushes applied under a foreign identity
(must be zero): after each acknowledged push, the version history GetStatus reports
(current and restorable versions) must record that version with the push id and the
digest the pusher itself sent; and before each policy restart and at the end, every
version in the history must be one the pusher sent, with its digest, under the number
it was acknowledged as. The
integration test runs it briefly, `make bench-soak` for minutes.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
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
RESTART_KINDS = ("sigkill", "sigterm")
# Every service crashed once and drained once; a crash first, and services alternate so no one is hit twice in a row.
RESTART_SCHEDULE = tuple((name, kind) for kind in RESTART_KINDS for name in SERVICES)
RPC_SERVICE = {"Generate": "policy", "PushWeights": "policy", "Score": "reward", "SubmitFeedback": "feedback"}
# A rules reward model: starts in seconds, so restarts of the reward service are quick.
RULES_TOML = """\
[[models]]
name = "length"
kind = "rules"
target_words = 10
required_words = ["book"]
"""
PROMPTS = (
    "Review a mystery novel.",
    "Describe a good book.",
    "What makes a story memorable?",
    "Summarize a fantasy saga.",
)


@dataclass
class Tally:
    """Requests of one RPC: sent, succeeded, failed by status code name."""

    sent: int = 0
    succeeded: int = 0
    failed: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        share = round(self.succeeded / self.sent, 4) if self.sent else None
        return {
            "sent": self.sent,
            "succeeded": self.succeeded,
            "success_share": share,
            "failed": dict(sorted(self.failed.items())),
        }


@dataclass
class Availability:
    """One service as its clients see it: outages from the last success before a failure to the next success."""

    last_ok: float | None = None
    down_since: float | None = None
    longest_s: float = 0.0
    total_s: float = 0.0
    outages: int = 0

    def succeeded(self, now: float) -> None:
        if self.down_since is not None:
            self.longest_s = max(self.longest_s, now - self.down_since)
            self.total_s += now - self.down_since
            self.outages += 1
            self.down_since = None
        self.last_ok = now

    def failed(self, now: float, run_started: float) -> None:
        if self.down_since is None:
            self.down_since = self.last_ok if self.last_ok is not None else run_started

    def as_dict(self, now: float, run_started: float) -> dict:
        """`available_share`: the share of the run's time not inside an outage (time-based: a down service
        fails fast and often, so a per-request share alone would overweight its outages)."""
        still_down = self.down_since is not None
        open_s = now - self.down_since if still_down else 0.0
        total = self.total_s + open_s
        elapsed = now - run_started
        return {
            "longest_unavailable_s": round(max(self.longest_s, open_s), 2),
            "unavailable_total_s": round(total, 2),
            "available_share": round(1.0 - total / elapsed, 4) if elapsed > 0 else None,
            "outages": self.outages + still_down,
            "down_at_end": still_down,
        }


class SoakStack:
    """The services a soak drives, each restartable on fixed loopback ports."""

    def __init__(
        self, root: Path, policy_model: str, rewards_toml: str, reward_model: str, policy_args: tuple[str, ...] = ()
    ) -> None:
        self.root, self.reward_model = root, reward_model
        root.mkdir(parents=True, exist_ok=True)
        (root / "rewards.toml").write_text(rewards_toml)
        self.db_url = f"sqlite:///{root}/experience.db"
        self.ports = {name: free_port() for name in SERVICES}
        self.addresses = {name: f"127.0.0.1:{port}" for name, port in self.ports.items()}
        self.args = {
            "policy": [
                "--model",
                policy_model,
                "--port",
                str(self.ports["policy"]),
                "--metrics-port",
                "0",
                "--experience-db",
                self.db_url,
                "--drain-timeout-s",
                "10",
                "--grace-s",
                "2",
                *policy_args,
            ],
            "reward": [
                "--port",
                str(self.ports["reward"]),
                "--metrics-port",
                "0",
                "--models-file",
                str(root / "rewards.toml"),
            ],
            "feedback": [
                "--db",
                self.db_url,
                "--port",
                str(self.ports["feedback"]),
                "--metrics-port",
                "0",
                "--grace-s",
                "1",
                "--rate-limit",
                "0",
            ],
        }
        self.modules = {"policy": "services.policy", "reward": "services.reward", "feedback": "services.experience"}
        self.processes: dict[str, ServerProcess] = {}
        self.launches = itertools.count()

    def launch(self, name: str) -> ServerProcess:
        process = ServerProcess(
            self.modules[name],
            self.args[name],
            self.root / f"{name}-{next(self.launches)}.log",
            env={"HF_HUB_OFFLINE": "1"},
        )
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
    duration_s: float = 60.0  # at least; with restarts, also until RESTART_SCHEDULE is done plus restart_every_s
    restart_every_s: float = 20.0  # seconds of traffic between one restart's return and the next; 0: no restarts
    push_every_s: float = 5.0
    generate_workers: int = 2
    max_tokens: int = 8
    rpc_timeout_s: float = 30.0
    seed: int = 0


class Soak:
    """One soak run: the workers, the restarts and the books."""

    def __init__(
        self,
        stack: SoakStack,
        weights: dict[str, torch.Tensor],
        settings: SoakSettings,
        progress: Callable[[str], None] = lambda line: None,
    ) -> None:
        self.stack, self.weights, self.settings, self.progress = stack, weights, settings, progress
        self.tallies: dict[str, Tally] = {rpc: Tally() for rpc in RPC_SERVICE}
        self.availability: dict[str, Availability] = {name: Availability() for name in SERVICES}
        self.identity = Counter()  # pushes whose identity GetStatus confirmed / contradicted / could not check
        self.sent_digests: dict[str, bytes] = {}  # push id -> the digest the pusher put in its PushCommit
        self.acked_versions: dict[str, int] = {}  # push id -> the version its PushWeights reply named
        self._started = time.monotonic()
        self.samples: deque[tuple[float, str]] = deque(maxlen=1000)  # (time generated, sample id) awaiting feedback
        self.acknowledged: set[str] = set()
        self.pushed_versions: list[int] = []
        self.restarts: list[dict] = []
        self.audits_before_restart: list[dict] = []  # each policy process's history, audited before it is stopped
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
                self.availability[RPC_SERVICE[rpc]].failed(time.monotonic(), self._started)
            if exc.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
                log.error("%s failed with %s: %s", rpc, exc.code().name, exc.details())
            time.sleep(0.2)  # a down service is not hammered
            return None
        with self._lock:
            self.tallies[rpc].succeeded += 1
            self.availability[RPC_SERVICE[rpc]].succeeded(time.monotonic())
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
                    rater_id=f"soak-{index % 7}",
                    body=feedback_pb2.FeedbackBody(thumbs=feedback_pb2.Thumbs(sample_id=sample_id, up=index % 2 == 0)),
                )
                reply = self._call(
                    "SubmitFeedback", lambda: stub.SubmitFeedback(request, timeout=self.settings.rpc_timeout_s)
                )
                if reply is not None:
                    with self._lock:
                        self.acknowledged.add(reply.feedback_id)

    def _push(self) -> None:
        with open_channel(self.stack.addresses["policy"]) as channel:
            stub = policy_pb2_grpc.PolicyServiceStub(channel)
            for index in itertools.count():
                if self._stop.wait(self.settings.push_every_s):
                    return
                scale = 1.0 + 1e-3 * self._random.random()
                tensors = [(name, tensor * scale) for name, tensor in self.weights.items()]
                push_id = f"soak-{self.settings.seed}-{index}"
                requests = self._recording_digest(push_id, push_requests(tensors, 1 << 20, push_id=push_id))
                reply = self._call("PushWeights", lambda: stub.PushWeights(requests, timeout=120))
                if reply is not None:
                    self.pushed_versions.append(reply.weight_version)
                    with self._lock:
                        self.acked_versions[push_id] = reply.weight_version
                    self._check_identity(stub, reply, push_id)

    def _recording_digest(self, push_id: str, requests: Iterator[policy_pb2.PushWeightsRequest]):
        """Passes the push's requests through, noting the digest its PushCommit carries (what the pusher sent)."""
        for request in requests:
            if request.HasField("commit"):
                with self._lock:
                    self.sent_digests[push_id] = digest_of(request.commit)
            yield request

    def _check_identity(self, stub, reply, push_id: str) -> None:
        """Does the server's version history name this push (id and the digest we sent) for the version it
        acknowledged? Counts the answer."""
        try:
            status = stub.GetStatus(policy_pb2.GetStatusRequest(), timeout=self.settings.rpc_timeout_s)
        except grpc.RpcError:
            status = None
        verdict = push_verdict(reply, push_id, self.sent_digests.get(push_id, b""), status)
        if verdict == "foreign":
            log.error(
                "push %s acknowledged as version %d is served under another identity", push_id, reply.weight_version
            )
        with self._lock:
            self.identity[verdict] += 1

    # ---- the run ----------------------------------------------------------------------

    def run(self) -> dict:
        s = self.settings
        threads = [threading.Thread(target=self._generate, args=(w,), daemon=True) for w in range(s.generate_workers)]
        threads += [
            threading.Thread(target=target, daemon=True) for target in (self._score, self._feedback, self._push)
        ]
        started = self._started = time.monotonic()
        for thread in threads:
            thread.start()
        pending = list(RESTART_SCHEDULE) if s.restart_every_s else []
        next_restart = started + s.restart_every_s
        loads, next_load = [], started

        def running() -> bool:
            # after the last restart, traffic runs restart_every_s more: every service shows that it came back
            settling = bool(self.restarts) and time.monotonic() < next_restart
            return time.monotonic() - started < s.duration_s or bool(pending) or settling

        while running():
            if time.monotonic() >= next_load:  # the machine's 1-minute load average, every 10 s
                loads.append(os.getloadavg()[0])
                next_load += 10.0
            if pending and time.monotonic() >= next_restart:
                name, kind = pending.pop(0)
                if name == "policy":  # its version history goes with the process: audit it first
                    self.audits_before_restart.append(self._audit_history(final=False))
                self.progress(f"{time.monotonic() - started:5.0f} s: {kind} {name}")
                away = self.stack.restart(name, crash=kind == "sigkill")
                self.restarts.append(
                    {
                        "service": name,
                        "kind": kind,
                        "away_s": round(away, 1),
                        "at_s": round(time.monotonic() - started - away, 1),
                    }
                )
                next_restart = time.monotonic() + s.restart_every_s
            time.sleep(0.2)
        self._stop.set()
        for thread in threads:
            thread.join(s.rpc_timeout_s + 130)
        ended = time.monotonic()
        elapsed = ended - started
        stored = self._stored_feedback_ids()
        audit = self._audit_history()
        lost = sorted(self.acknowledged - stored)
        rpcs = {rpc: tally.as_dict() for rpc, tally in self.tallies.items()}
        shares = {rpc: t["success_share"] for rpc, t in rpcs.items() if t["success_share"] is not None}
        return {
            "duration_s": round(elapsed, 1),
            "settings": asdict(s),
            "restarts": self.restarts,
            "restarts_by_service": {
                name: dict(Counter(r["kind"] for r in self.restarts if r["service"] == name)) for name in SERVICES
            },
            "every_service_sigkilled_and_sigtermed": {(r["service"], r["kind"]) for r in self.restarts}
            >= set(RESTART_SCHEDULE),
            "rpcs": rpcs,
            "worst_rpc": min(shares, key=shares.get) if shares else None,
            "worst_rpc_success_share": min(shares.values()) if shares else None,
            "availability": {name: a.as_dict(ended, started) for name, a in self.availability.items()},
            "longest_restart_s": {
                name: max((r["away_s"] for r in self.restarts if r["service"] == name), default=0.0)
                for name in SERVICES
            },
            "sent": sum(t.sent for t in self.tallies.values()),
            "succeeded": sum(t.succeeded for t in self.tallies.values()),
            "acknowledged_writes": {"feedback": len(self.acknowledged), "pushes": len(self.pushed_versions)},
            "lost": {"feedback": len(lost)},
            # acknowledged pushes whose version the history names with another id or digest, plus history
            # entries at the end that are not a push we sent (under that number, with that digest)
            "pushes_under_foreign_identity": self.identity["foreign"]
            + sum(a["foreign"] for a in (*self.audits_before_restart, audit)),
            "push_identity": {k: self.identity[k] for k in ("confirmed", "foreign", "unchecked")},
            "final_history_audit": audit,
            "history_audits_before_policy_restarts": self.audits_before_restart,
            "history_versions_checked": sum(a["versions_checked"] for a in (*self.audits_before_restart, audit)),
            "lost_ids": lost[:20],
            "pushed_versions_increasing_between_restarts": _increasing_runs(self.pushed_versions),
            "serving_after": self._serving_after(),
            "load_average_1min": {
                "mean": round(sum(loads) / len(loads), 2),
                "max": round(max(loads), 2),
                "samples": len(loads),
                "every_s": 10.0,
            },
        }

    def _stored_feedback_ids(self) -> set[str]:
        stored: set[str] = set()
        with open_channel(self.stack.addresses["feedback"]) as channel:
            stub = feedback_pb2_grpc.FeedbackServiceStub(channel)
            cursor = 0
            while True:
                page = stub.ExportFeedback(
                    feedback_pb2.ExportFeedbackRequest(since_cursor=cursor, limit=10000), timeout=60
                )
                stored |= {r.feedback_id for r in page.records}
                cursor = page.next_cursor
                if not page.has_more:
                    return stored

    def _audit_history(self, final: bool = True) -> dict:
        """Every pushed version in the policy's history now (current and restorable) against what we sent.
        Before a restart a failed GetStatus is recorded, not raised (the restart must go on); at the end it raises."""
        with open_channel(self.stack.addresses["policy"]) as channel:
            try:
                status = policy_pb2_grpc.PolicyServiceStub(channel).GetStatus(policy_pb2.GetStatusRequest(), timeout=60)
            except grpc.RpcError as exc:
                if final:
                    raise
                return {"versions_checked": 0, "foreign": 0, "foreign_versions": [], "error": exc.code().name}
        with self._lock:  # the pusher thread adds to both maps
            return audit_history(status, dict(self.sent_digests), dict(self.acked_versions))

    def _serving_after(self) -> dict[str, bool]:
        """Whether each service answers a well-formed request once the soak is over."""
        results = {}
        with open_channel(self.stack.addresses["policy"]) as channel:
            request = policy_pb2.GenerateRequest(
                prompts=[policy_pb2.Prompt(text=PROMPTS[0])], sampling=policy_pb2.SamplingParams(max_tokens=4)
            )
            results["policy"] = _ok(lambda: policy_pb2_grpc.PolicyServiceStub(channel).Generate(request, timeout=60))
        with open_channel(self.stack.addresses["reward"]) as channel:
            request = reward_pb2.ScoreRequest(
                model=self.stack.reward_model, items=[reward_pb2.ScoreItem(prompt="p", completion="c")]
            )
            results["reward"] = _ok(lambda: reward_pb2_grpc.RewardServiceStub(channel).Score(request, timeout=60))
        with open_channel(self.stack.addresses["feedback"]) as channel:
            results["feedback"] = _ok(
                lambda: feedback_pb2_grpc.FeedbackServiceStub(channel).GetStats(
                    feedback_pb2.GetStatsRequest(), timeout=60
                )
            )
        return results


def _ok(call: Callable[[], object]) -> bool:
    try:
        call()
        return True
    except grpc.RpcError:
        return False


def digest_of(message) -> bytes:
    """The weights' digest a PushCommit, PushWeightsResponse or WeightVersionInfo carries, whichever checksum
    the push used (`digest`; a SHA-256 commit carries it in the historic `sha256` field)."""
    return bytes(message.digest) or bytes(message.sha256)


def _history(status: policy_pb2.GetStatusResponse) -> list[policy_pb2.WeightVersionInfo]:
    records = list(status.restorable_versions)
    if status.HasField("current"):
        records.append(status.current)
    return records


def push_verdict(
    reply: policy_pb2.PushWeightsResponse,
    push_id: str,
    sent_digest: bytes,
    status: policy_pb2.GetStatusResponse | None,
) -> str:
    """Whether the policy applied our push under the number it acknowledged, judged by identity, not number.

    "confirmed": the reply and the history's record of the acknowledged version carry our push id and the
    (non-empty) digest we sent; "foreign": either names another push or other weights; "unchecked": the history
    no longer holds that version (the policy restarted, or GetStatus failed)."""
    if not sent_digest or reply.push_id != push_id or digest_of(reply) != sent_digest:
        return "foreign"
    if status is None:
        return "unchecked"
    records = [r for r in _history(status) if r.version == reply.weight_version]
    if not records:
        return "unchecked"  # a restarted policy counts from 0 again: its history is not the one we pushed to
    record = records[0]
    return "confirmed" if record.push_id == push_id and digest_of(record) == sent_digest else "foreign"


def audit_history(
    status: policy_pb2.GetStatusResponse, sent_digests: dict[str, bytes], acked_versions: dict[str, int]
) -> dict:
    """Each version above 0 in the history must be a push we sent (its id), with the digest we sent, under the
    number its reply named (when a reply arrived): anything else is a version serving a foreign identity."""
    checked, foreign = 0, []
    for record in _history(status):
        if record.version == 0:
            continue
        checked += 1
        acked = acked_versions.get(record.push_id, record.version)
        if sent_digests.get(record.push_id) != digest_of(record) or acked != record.version:
            foreign.append({"version": record.version, "push_id": record.push_id})
    return {"versions_checked": checked, "foreign": len(foreign), "foreign_versions": foreign}


def _increasing_runs(versions: list[int]) -> bool:
    """Versions acknowledged by one policy process only go up (a restart starts again at 0 and counts up)."""
    return all(b > a or b == 1 for a, b in zip(versions, versions[1:]))
