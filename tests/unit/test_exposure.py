"""A server bound beyond loopback without authentication refuses to start unless --insecure says so (issue 16, 5)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from services.common.process import free_port
from services.common.server import (
    InsecureBinding,
    ServingConfig,
    check_exposure,
    is_loopback,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_needs_no_auth(host):
    assert is_loopback(host)
    check_exposure(ServingConfig(host=host))


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "policy.example.org"])
def test_exposed_without_auth_is_refused_unless_insecure(host):
    with pytest.raises(InsecureBinding, match="--insecure"):
        check_exposure(ServingConfig(host=host))
    check_exposure(ServingConfig(host=host, insecure=True))
    check_exposure(ServingConfig(host=host, auth_tokens_file="tokens.toml"))
    check_exposure(ServingConfig(host=host, tls_client_ca_file="ca.pem"))


def test_service_exits_with_a_clear_error(tmp_path):
    args = [
        "--db",
        f"sqlite:///{tmp_path}/e.db",
        "--host",
        "0.0.0.0",
        "--port",
        str(free_port()),
        "--metrics-port",
        "0",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "services.experience", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "refusing to serve on 0.0.0.0" in proc.stderr and "--insecure" in proc.stderr
    assert "Traceback" not in proc.stderr
