"""`python -m services.feedback_web.screenshots`: screenshots of every page, against real services.

Starts the experience service and two SmolLM2-135M policy replicas (stable v0; the
canary gets a perturbed copy of one layer pushed as v1, so the two versions answer
differently), starts the web app with the canary configured, and drives a headless
Chromium: sign-in, compare (judging `--pairs` pairs with the keyboard by a fixed rule,
the one the demo's simulated users hold: the answer closer to 25 words wins), rate
and versions. Writes docs/screenshots/{signin,compare,rate,versions}.png. The
judgements are scripted, so the versions chart shows the UI, not a finding.
Needs Chromium (/usr/bin/chromium) and the playwright package (dev extra).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path

from safetensors import safe_open

from services.clients.policy import PolicyReplica
from services.common.model_store import DEFAULT_CACHE, prepare_smollm2
from services.common.process import ServerProcess, free_port
from services.feedback_web.launch import demo_token_file, start_feedback_web

log = logging.getLogger(__name__)

BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PERTURBED = "model.layers.0.mlp.down_proj.weight"
TARGET_WORDS = 25


def _perturbed_layer(model_dir: Path):
    import torch

    for shard in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(shard), "pt") as handle:
            if PERTURBED in handle.keys():  # noqa: SIM118 - safe_open is not a dict
                tensor = handle.get_tensor(PERTURBED)
                generator = torch.Generator().manual_seed(0)
                return [(PERTURBED, tensor + 0.5 * tensor.std() * torch.randn(tensor.shape, generator=generator))]
    raise FileNotFoundError(f"{PERTURBED} not in {model_dir}")


def _start_services(work: Path, model_dir: Path, processes: dict) -> dict[str, str]:
    db_url = f"sqlite:///{work / 'experience.db'}"
    ports = {name: free_port() for name in ("experience", "stable", "canary")}
    addresses = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    processes["experience"] = ServerProcess(
        "services.experience",
        ["--db", db_url, "--port", str(ports["experience"]), "--metrics-port", "0"],
        work / "experience.log",
    ).start(addresses["experience"], 120)
    for index, name in enumerate(("stable", "canary")):
        processes[name] = ServerProcess(
            "services.policy",
            [
                "--model",
                str(model_dir),
                "--port",
                str(ports[name]),
                "--metrics-port",
                "0",
                "--max-model-len",
                "1024",
                "--cpu-kvcache-gib",
                "1",
                "--keep-versions",
                "1",
                "--experience-db",
                db_url,
                "--cpu-threads-bind",
                str(index),
            ],
            work / f"{name}.log",
        ).launch()
    for name in ("stable", "canary"):
        processes[name].wait_serving(addresses[name], 900, progress=f"[screenshots] {name}")
    return addresses


def _words(page, selector: str) -> int:
    return len(page.inner_text(selector).split())


def capture(out: Path, pairs: int, ratings: int, work: Path) -> list[Path]:
    from playwright.sync_api import sync_playwright

    model_dir = prepare_smollm2(DEFAULT_CACHE)
    processes: dict[str, ServerProcess] = {}
    try:
        addresses = _start_services(work, model_dir, processes)
        canary = PolicyReplica("canary", addresses["canary"])
        canary.push(_perturbed_layer(model_dir), 1, "screenshots: perturbed layer 0")
        canary.close()
        token_file, tokens = demo_token_file(work / "tokens", {"maria": ("generate", "feedback")})
        web, url = start_feedback_web(
            addresses["stable"],
            addresses["experience"],
            token_file,
            work / "web.log",
            canary_address=addresses["canary"],
            state_dir=str(work / "web-state"),
            extra=("--max-tokens", "48"),
        )
        processes["web"] = web
        out.mkdir(parents=True, exist_ok=True)
        shots = []
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=BROWSER_ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1200, "height": 760}, device_scale_factor=1)
            page.goto(url + "/compare")
            page.fill("#token", tokens["maria"])
            shots.append(out / "signin.png")
            page.screenshot(path=str(shots[-1]))
            with page.expect_navigation():
                page.click("#signin")
            started = time.monotonic()
            for i in range(pairs):
                a, b = _words(page, "#answer-a pre"), _words(page, "#answer-b pre")
                gap = abs(a - TARGET_WORDS) - abs(b - TARGET_WORDS)
                key = "3" if gap == 0 else "1" if gap < 0 else "2"
                if i == pairs - 1:
                    shots.append(out / "compare.png")
                    page.screenshot(path=str(shots[-1]))
                with page.expect_navigation():
                    page.keyboard.press(key)
            log.info("%d pairs judged in %.1f s", pairs, time.monotonic() - started)
            page.goto(url + "/rate")
            for i in range(ratings):
                if i == ratings - 1:
                    shots.append(out / "rate.png")
                    page.screenshot(path=str(shots[-1]))
                words = _words(page, "#answer pre")
                with page.expect_navigation():
                    page.keyboard.press(str(max(1, 5 - abs(words - TARGET_WORDS) // 8)))
            page.goto(url + "/versions")
            shots.append(out / "versions.png")
            page.screenshot(path=str(shots[-1]), full_page=True)
            browser.close()
        return shots
    finally:
        for name, process in processes.items():
            log.info("stopping %s: exit %s", name, process.stop())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.feedback_web.screenshots", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, default=Path("docs/screenshots"), help="Where the PNG files go.")
    parser.add_argument("--pairs", type=int, default=16, help="Pairs judged before the versions page is shot.")
    parser.add_argument("--ratings", type=int, default=3, help="Samples rated.")
    parser.add_argument("--keep-logs", action="store_true", help="Keep the services' logs (printed path).")
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    work = Path(tempfile.mkdtemp(prefix="feedback-web-shots-"))
    try:
        for shot in capture(args.out, args.pairs, args.ratings, work):
            log.info("wrote %s", shot)
    finally:
        if args.keep_logs:
            log.info("logs in %s", work)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
