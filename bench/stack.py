"""Policy replica(s) and a reward service on loopback for a benchmark, stopped however the benchmark ends."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from services.common.process import ServerProcess, free_port


@dataclass
class Stack:
    policy: list[str]  # addresses of the policy replicas
    reward: str
    started_s: float
    exit_codes: dict[str, int | None] = field(default_factory=dict)


@contextlib.contextmanager
def services(
    model_dir: str,
    rewards_toml: str,
    logs: Path,
    replicas: int = 1,
    kvcache_gib: int = 1,
    start_timeout_s: float = 900,
    label: str = "bench",
    policy_args: list[list[str]] | None = None,
) -> Iterator[Stack]:
    """Starts `replicas` policy servers (replica i gets `policy_args[i]` too) and one reward server."""
    logs.mkdir(parents=True, exist_ok=True)
    (logs / "rewards.toml").write_text(rewards_toml)
    processes: dict[str, tuple[ServerProcess, str]] = {}
    for i in range(replicas):
        port = free_port()
        args = [
            "--model",
            model_dir,
            "--port",
            str(port),
            "--metrics-port",
            str(free_port()),
            "--cpu-kvcache-gib",
            str(kvcache_gib),
            *(policy_args[i] if policy_args else []),
        ]
        processes[f"policy-{i}"] = (
            ServerProcess("services.policy", args, logs / f"policy-{i}.log"),
            f"127.0.0.1:{port}",
        )
    port = free_port()
    args = ["--port", str(port), "--metrics-port", str(free_port()), "--models-file", str(logs / "rewards.toml")]
    processes["reward"] = (
        ServerProcess("services.reward", args, logs / "reward.log", env={"HF_HUB_OFFLINE": "1"}),
        f"127.0.0.1:{port}",
    )
    started = time.perf_counter()
    stack = Stack([a for n, (_, a) in processes.items() if n.startswith("policy")], processes["reward"][1], 0.0)
    try:
        print(f"[{label}] starting {replicas} policy replica(s) and the reward service; logs in {logs}", flush=True)
        for process, _ in processes.values():
            process.launch()
        for name, (process, address) in processes.items():
            process.wait_serving(address, start_timeout_s, progress=f"[{label}] {name}")
        stack.started_s = round(time.perf_counter() - started, 1)
        yield stack
    finally:
        stack.exit_codes = {name: process.stop() for name, (process, _) in processes.items()}
