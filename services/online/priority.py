"""CPU priority of the demo's serving processes: the learner first, users in its gaps.

On a 2-core box the two policy replicas (one core each) and the online trainer share
every second evenly, so an RL step that takes ~10 s alone takes ~55 s beside them. The
demo starts the replicas at a higher niceness: while the trainer computes, it gets the
cores; while it waits (on a canary, a generation, the store) the replicas get them
all. Linux keeps a niceness per thread and a new thread or process inherits it, so the
demo sets it on the replica right after launch (one thread then) and again on every
thread of its process tree once it serves (vLLM's engine runs in child processes).
"""

from __future__ import annotations

import logging
import os

import psutil

log = logging.getLogger(__name__)


def descendants(pid: int) -> list[int]:
    """`pid`'s child processes, their children, and so on (empty when `pid` is gone)."""
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def lower_priority(pid: int, niceness: int) -> int:
    """Raises every thread of `pid` and of its descendants to at least `niceness`; returns how many it changed."""
    changed = 0
    for process in [pid, *descendants(pid)]:
        try:
            threads = [thread.id for thread in psutil.Process(process).threads()]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue  # ended meanwhile, or not ours
        for thread in threads:
            try:
                if os.getpriority(os.PRIO_PROCESS, thread) < niceness:
                    os.setpriority(os.PRIO_PROCESS, thread, niceness)
                    changed += 1
            except (ProcessLookupError, PermissionError):
                continue  # gone meanwhile, or not ours to change
    return changed
