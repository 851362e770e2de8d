"""Helpers shared by the feedback service tests: start `python -m services.experience`, seed samples."""

from __future__ import annotations

import time
from pathlib import Path

from services.common.process import ServerProcess, free_port
from services.experience.records import SampleRecord
from services.experience.store import ExperienceStore


def start_experience_service(db_url: str, log_path: Path, *extra: str, env: dict[str, str] | None = None):
    """The standalone FeedbackService on a free loopback port; returns (process, address, metrics_url)."""
    port, metrics_port = free_port(), free_port()
    process = ServerProcess(
        "services.experience",
        ["--db", db_url, "--port", str(port), "--metrics-port", str(metrics_port), "--grace-s", "1", *extra],
        log_path,
        env=env,
    )
    address = f"127.0.0.1:{port}"
    process.start(address, timeout_s=60)
    return process, address, f"http://127.0.0.1:{metrics_port}/metrics"


def seed_samples(db_url: str, prompts: int, per_prompt: int, tenant: str = "default") -> list[list[str]]:
    """Records `per_prompt` samples for each of `prompts` prompts, as the policy would; returns their ids by prompt."""
    store = ExperienceStore.open(db_url)
    ids, records = [], []
    for p in range(prompts):
        group = []
        for i in range(per_prompt):
            sample_id = f"p{p:03d}s{i:02d}{tenant[:8]}"
            group.append(sample_id)
            records.append(
                SampleRecord(
                    sample_id,
                    f"req{p}",
                    tenant,
                    0,
                    i,
                    f"prompt {p}",
                    True,
                    [p, p + 1, p + 2],
                    f"answer {i} to {p}",
                    [i],
                    [-0.5],
                    "stop",
                    0,
                    time.time(),
                )
            )
        ids.append(group)
    store.record_samples(records)
    store.close()
    return ids
