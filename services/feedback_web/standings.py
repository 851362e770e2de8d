"""Win rate per weight version from people's comparisons, with a Wilson 95% interval.

Each judged pair is kept in a ledger (comparisons.jsonl) with the weight version of
each side, because the FeedbackService's records name samples, not versions. A
comparison between two different versions counts for both: the chosen side's
version wins, the other loses; a tie or "both bad" is half a win each (neither was
preferred). Comparisons of a version with itself (no canary running) say nothing
about it and only count toward `judged`.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

from services.feedback_web.judgements import A, B

log = logging.getLogger(__name__)

Z95 = 1.959963984540054


def wilson_interval(successes: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion; (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Comparison:
    """One judged pair as the ledger keeps it."""

    time: float
    rater_id: str
    choice: str
    version_a: int
    version_b: int
    sample_a: str
    sample_b: str
    replica_a: str
    replica_b: str


@dataclass(frozen=True)
class VersionStanding:
    version: int
    judged: int  # comparisons the version took part in (either side)
    n: int  # comparisons against another version
    wins: float  # of those, won (ties and "both bad" count half)
    win_rate: float | None
    low: float
    high: float


def standings(comparisons: list[Comparison]) -> list[VersionStanding]:
    judged: dict[int, int] = defaultdict(int)
    n: dict[int, int] = defaultdict(int)
    wins: dict[int, float] = defaultdict(float)
    for c in comparisons:
        judged[c.version_a] += 1
        if c.version_b != c.version_a:
            judged[c.version_b] += 1
        else:
            continue
        n[c.version_a] += 1
        n[c.version_b] += 1
        score_a = 1.0 if c.choice == A else 0.0 if c.choice == B else 0.5
        wins[c.version_a] += score_a
        wins[c.version_b] += 1.0 - score_a
    rows = []
    for version in sorted(judged):
        low, high = wilson_interval(wins[version], n[version])
        rate = wins[version] / n[version] if n[version] else None
        rows.append(VersionStanding(version, judged[version], n[version], wins[version], rate, low, high))
    return rows


class Ledger:
    """Append-only JSONL of judged pairs; survives restarts of the web app."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._rows: list[Comparison] = []
        if path.is_file():
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    self._rows.append(Comparison(**json.loads(line)))
                except (ValueError, TypeError):  # a line cut by a crash: skip it, keep the rest
                    log.warning("skipping unreadable line %d of %s", number, path)

    def append(self, comparison: Comparison) -> None:
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(asdict(comparison)) + "\n")
            self._rows.append(comparison)

    def rows(self) -> list[Comparison]:
        with self._lock:
            return list(self._rows)


@dataclass(frozen=True)
class CanaryStatus:
    action: str  # promote / rollback, or "" for none
    candidate_version: int
    baseline_version: int
    reason: str
    when: float


def latest_canary_decision(online_dir: str) -> CanaryStatus | None:
    """The newest canary decision in `<online_dir>/rounds.jsonl` (written by services/online/loop.py), if any."""
    if not online_dir:
        return None
    path = Path(online_dir) / "rounds.jsonl"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        decision = record.get("decision") if isinstance(record, dict) else None
        if decision:
            return CanaryStatus(
                str(decision.get("action", "")),
                int(decision.get("candidate_version", 0)),
                int(decision.get("baseline_version", 0)),
                str(decision.get("reason", "")),
                float(record.get("time", time.time())),
            )
    return None
