"""Weight version numbers that mean one set of weights, even across crashes.

The loop numbers every push itself (PushBegin.version) so a version is the same
weights on the canary and the stable replica, and samples in the store compare by
version. A number is written to disk (fsync, atomic rename) before any replica sees
it, so a loop restarted from an older checkpoint never hands it out again for
different weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


class VersionAllocator:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.highest = int(json.loads(path.read_text())["highest"]) if path.is_file() else 0

    def observe(self, version: int) -> None:
        """Never allocate at or below a number some replica has used."""
        if version > self.highest:
            self._write(version)

    def allocate(self) -> int:
        self._write(self.highest + 1)
        return self.highest

    def _write(self, highest: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".partial")
        with open(partial, "w", encoding="utf-8") as handle:
            handle.write(json.dumps({"highest": highest}))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        self.highest = highest
