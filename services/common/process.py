"""Starts service processes (demo, tests) and stops them with SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from services.common.client import wait_until_serving


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """`python -m <module> <args>` with its output in a log file; stops with SIGTERM."""

    def __init__(self, module: str, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.module, self.args, self.log_path = module, args, log_path
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen | None = None

    def launch(self) -> ServerProcess:
        """Starts the process without waiting (start several, then wait on each)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", self.module, *self.args], stdout=log, stderr=subprocess.STDOUT, env=self.env
            )
        return self

    def wait_serving(self, address: str, timeout_s: float, progress: str = "") -> ServerProcess:
        """Waits on the health service; with `progress`, prints a line every 10 s of waiting."""
        deadline = time.monotonic() + timeout_s
        started = time.monotonic()
        while True:
            step = min(10.0, deadline - time.monotonic())
            try:
                wait_until_serving(address, max(step, 0.1), is_alive=lambda: self.process.poll() is None)
                return self
            except TimeoutError as exc:
                if time.monotonic() >= deadline:
                    self.stop()
                    raise RuntimeError(
                        f"{self.module} did not start: {exc}\n--- log tail ---\n{self.log_tail()}"
                    ) from exc
                if progress:
                    print(f"{progress}: still starting ({time.monotonic() - started:.0f} s)", flush=True)
            except RuntimeError as exc:
                raise RuntimeError(f"{self.module} did not start: {exc}\n--- log tail ---\n{self.log_tail()}") from exc

    def start(self, address: str, timeout_s: float) -> ServerProcess:
        return self.launch().wait_serving(address, timeout_s)

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def crash(self) -> None:
        """SIGKILL the server and every process it started at once, as a machine or container crash would.

        Killing only the server would leave e.g. vLLM's engine processes orphaned and busy.
        """
        import psutil

        if self.process is None or self.process.poll() is not None:
            return
        server = psutil.Process(self.process.pid)
        family = [server, *server.children(recursive=True)]
        for process in family:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(family, timeout=30)
        self.process.wait(30)

    def stop(self, timeout_s: float = 120) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()
