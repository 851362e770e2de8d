"""A throwaway PostgreSQL cluster on a free loopback port, and a fresh database per test.

Debian's `postgresql` package (installed by `make system-deps`) puts initdb/pg_ctl in
/usr/lib/postgresql/<version>/bin. initdb refuses to run as root, so as root the
cluster belongs to the `postgres` user: its directory is chowned to it and the
tools run through `runuser`. Without the binaries the tests that need them skip.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from services.common.process import free_port

__all__ = ["postgres_server", "postgres_url"]


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def _as_owner(argv: list[str]) -> list[str]:
    """Runs as `postgres` when we are root (initdb and postgres refuse root)."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


class PostgresServer:
    def __init__(self, bin_dir: Path, root: Path, port: int) -> None:
        self.bin_dir, self.root, self.port = bin_dir, root, port
        self.data = root / "data"

    def _run(self, *argv: str) -> None:
        done = subprocess.run(
            _as_owner([str(self.bin_dir / argv[0]), *argv[1:]]), capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")

    def start(self) -> PostgresServer:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.root / "server.log"),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )
        return self

    def stop(self) -> None:
        """Immediate: a throwaway cluster needs no shutdown checkpoint (saves seconds)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server for this test session (skips when PostgreSQL is not installed)."""
    bin_dir = _bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (make system-deps installs it as root)")
    root = Path(tempfile.mkdtemp(prefix="rlhf-pg-"))  # not under pytest's 0700 tmp: postgres must reach it
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    server = PostgresServer(bin_dir, root, free_port()).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """URL of a fresh, empty database on the session's server."""
    return postgres_server.url(postgres_server.create_database())
