"""Start the feedback web app as a child process beside running services (online demo, tests, screenshots).

The app signs people in with tokens from a token file. When the services run
without authentication (the demo), `demo_token_file` writes a file with one token
per rater, so a person can sign in; the services ignore tokens they do not check.
"""

from __future__ import annotations

import secrets
import time
import urllib.error
import urllib.request
from pathlib import Path

from services.common.process import ServerProcess, free_port


def demo_token_file(directory: Path, raters: dict[str, tuple[str, ...]]) -> tuple[Path, dict[str, str]]:
    """tokens.toml for `raters` (name -> scopes) with a fresh secret file each; returns (path, name -> token)."""
    directory.mkdir(parents=True, exist_ok=True)
    tokens, entries = {}, []
    for name, scopes in raters.items():
        token = secrets.token_urlsafe(24)
        secret = directory / f"{name}.token"
        secret.write_text(token + "\n")
        secret.chmod(0o600)
        tokens[name] = token
        entries.append(
            f'[[tokens]]\nname = "{name}"\ntoken_file = "{secret}"\nscopes = {list(scopes)!r}\n'.replace("'", '"')
        )
    path = directory / "tokens.toml"
    path.write_text("\n".join(entries))
    return path, tokens


def wait_http_ok(url: str, timeout_s: float, is_alive=lambda: True) -> None:
    """Polls `url` until it answers 200; raises RuntimeError if the process dies, TimeoutError at the deadline."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if not is_alive():
            raise RuntimeError(f"feedback web app exited while starting ({url})")
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return
                last = f"HTTP {reply.status}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.2)
    raise TimeoutError(f"{url} not answering after {timeout_s:.0f} s (last: {last})")


def start_feedback_web(
    policy_address: str,
    feedback_address: str,
    token_file: Path,
    log_path: Path,
    canary_address: str = "",
    online_dir: str = "",
    state_dir: str = "",
    port: int = 0,
    host: str = "127.0.0.1",
    extra: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    timeout_s: float = 60.0,
) -> tuple[ServerProcess, str]:
    """`python -m services.feedback_web` on `host:port` (0: a free port), waited on; returns (process, base URL).

    Stop it with `process.stop()` like the other services.
    """
    port = port or free_port()
    args = [
        "--host",
        host,
        "--port",
        str(port),
        "--policy-address",
        policy_address,
        "--feedback-address",
        feedback_address,
        "--token-file",
        str(token_file),
    ]
    if canary_address:
        args += ["--canary-address", canary_address]
    if online_dir:
        args += ["--online-dir", online_dir]
    if state_dir:
        args += ["--state-dir", state_dir]
    process = ServerProcess("services.feedback_web", [*args, *extra], log_path, env=env).launch()
    url = f"http://{host}:{port}"
    try:
        wait_http_ok(url + "/healthz", timeout_s, is_alive=lambda: process.process.poll() is None)
    except (RuntimeError, TimeoutError) as exc:
        process.stop()
        raise RuntimeError(f"{exc}\n--- log tail ---\n{process.log_tail()}") from exc
    return process, url


def start_for_online_demo(
    out: Path,
    stable_address: str,
    canary_address: str,
    feedback_address: str,
    online_dir: Path,
    port: int = 0,
    host: str = "127.0.0.1",
) -> tuple[ServerProcess, str, Path]:
    """The web app beside `make demo-online`'s services; returns (process, URL, file holding the sign-in token).

    The demo's services run without authentication, so the token only names the rater
    ("you") in the web app. The caller prints the URL and token path and stops the
    process with the other services.
    """
    token_file, _ = demo_token_file(out / "feedback-web", {"you": ("generate", "feedback")})
    process, url = start_feedback_web(
        stable_address,
        feedback_address,
        token_file,
        out / "feedback-web.log",
        canary_address=canary_address,
        online_dir=str(online_dir),
        state_dir=str(out / "feedback-web"),
        port=port,
        host=host,
    )
    return process, url, out / "feedback-web" / "you.token"
