"""The online demo's own canary settings and plumbing (no engine): error rates at its delta and window, the
reward-model accuracy rows of every round, the last stretch without rounds, and the replicas' lower CPU priority.

The demo judges with delta 0.15, tightest at 100 judgements, and a 180 s window. The
last demo run collected about one paired judgement a second on a canary (137 in ~125 s),
so the window is taken as 180 judgements here.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest

from rlhf.v1 import feedback_pb2 as fb
from services.online.demo import DemoRounds, OnlineDemoConfig
from services.online.priority import descendants, lower_priority
from services.online.reward_refresh import PreferenceBook
from services.online.sequential import PROMOTE, ROLLBACK, WAIT, decide
from tests.unit.test_canary_sequential import POLL, candidate_wins, win_rate

DEMO = OnlineDemoConfig().canary
WINDOW_JUDGEMENTS = 180
CANARIES = 200
WORSE_SHIFT = -0.13  # candidate utility shift that puts its win rate just under 0.5 - 0.15 (checked below)


def demo_canary(shift: float, seed: int) -> tuple[str, bool]:
    """(action, decided by the test rather than by the window's end) of one simulated canary at the demo's settings."""
    rng, wins = random.Random(seed), 0
    for n in range(1, WINDOW_JUDGEMENTS + 1):
        wins += candidate_wins(rng, shift)
        if n % POLL == 0 or n == WINDOW_JUDGEMENTS:
            verdict = decide(wins, n, DEMO, window_over=n == WINDOW_JUDGEMENTS, on_inconclusive=DEMO.on_inconclusive)
            if verdict.action != WAIT:
                return verdict.action, not verdict.reason.startswith("inconclusive")
    raise AssertionError("the window must end in a decision")


def test_the_demo_judges_at_the_documented_settings():
    assert (DEMO.alpha, DEMO.delta, DEMO.tuned_judgements, DEMO.window_s) == (0.05, 0.15, 100, 180.0)
    assert DEMO.on_inconclusive == ROLLBACK and DEMO.max_judgements >= WINDOW_JUDGEMENTS


def test_at_the_demos_settings_a_delta_worse_candidate_is_promoted_at_most_alpha_of_the_time():
    assert win_rate(WORSE_SHIFT) <= 0.5 - DEMO.delta  # the scenario really is delta-worse
    actions = [demo_canary(WORSE_SHIFT, seed)[0] for seed in range(CANARIES)]
    assert actions.count(PROMOTE) / CANARIES <= DEMO.alpha
    assert actions.count(ROLLBACK) / CANARIES >= 0.8


@pytest.mark.parametrize("shift", [0.0, 0.03])
def test_at_the_demos_settings_an_equal_or_better_candidate_is_promoted_within_the_window(shift):
    assert win_rate(shift) >= 0.49
    outcomes = [demo_canary(shift, 1000 + seed) for seed in range(CANARIES)]
    assert sum(action == PROMOTE for action, _ in outcomes) / CANARIES >= 0.8
    # a rollback the test itself decides (not the window's end) is the false alarm alpha bounds
    assert sum(action == ROLLBACK and decided for action, decided in outcomes) / CANARIES <= DEMO.alpha


# ---- the rounds: accuracy rows and the last stretch ------------------------------------------------


class _Scorer:
    """Scores a completion by its length (so the longer side of a pair wins); hosts the warm start."""

    def __init__(self) -> None:
        self.scored = 0

    def score(self, model, items):
        self.scored += len(items)
        return SimpleNamespace(scores=[float(len(item.completion)) for item in items])

    def hosted(self, model):
        return "rm-warm"


class _QuickTrainer:
    """Rounds of 0.1 s; the second one retrains the reward model; each adds held-out live pairs."""

    def __init__(self) -> None:
        self.round, self.stable_version, self.last_reward_model = 0, 0, None
        self.rollout = SimpleNamespace(halted="")
        self.book = PreferenceBook(0.6, heldout_share=0.5)
        self.config = SimpleNamespace(idle_s=0.0, rewards=SimpleNamespace(model="online-rm"))

    def sync_replicas(self) -> None:
        pass

    def run_round(self, stop):
        time.sleep(0.1)
        self.round += 1
        pairs = [
            fb.PreferencePair(
                pair_id=f"r{self.round}-{i}",
                prompt_text="Write a short review of Emma by Jane Austen.",
                chosen_text="Emma is a witty novel about a matchmaker who misreads everyone around her.",
                rejected_text="book",
                weight=1.0,
                agreement=1.0,
            )
            for i in range(20)
        ]
        self.book.ingest(fb.ListPreferencesResponse(pairs=pairs, next_cursor=self.round))
        trained = None
        if self.round == 2:
            trained = self.last_reward_model = {"version": "rm-2", "pairs": 30, "heldout_accuracy": 0.8}
        self.stable_version = self.round
        decision = {"candidate_version": self.round, "action": PROMOTE}
        return {"round": self.round, "seconds": 0.1, "reward_model_trained": trained, "decision": decision}


def test_every_round_gets_an_accuracy_row_and_the_loop_ends_with_a_stretch_without_rounds():
    warm_pairs = [{"prompt": "What did you think of Emma?", "chosen": "Emma is a sharp comedy.", "rejected": "ok"}]
    config = OnlineDemoConfig(evaluation_s=0.6, bad_candidate_after_round=0)
    rounds = DemoRounds(config, _QuickTrainer(), _Scorer(), warm_heldout=warm_pairs)
    started = time.monotonic()
    rounds.run(threading.Event(), loop_s=1.5)
    assert time.monotonic() - started >= 1.4  # the loop lasts its time: the last stretch serves the final stable
    last = rounds.rounds[-1]
    assert 3 <= len(rounds.rounds) <= 10 and last["seconds"] < 0.6
    assert rounds.final_stretch["stable_version"] == last["round"] and rounds.final_stretch["seconds"] > 0.3
    rows = rounds.accuracy
    assert [row["round"] for row in rows] == list(range(len(rounds.rounds) + 1))  # the warm start, then each round
    assert rows[0]["heldout_set"] != "live" and rows[0]["hidden_accuracy"] == 1.0 and rows[0]["pairs"] == 1
    assert [row["reward_model_version"] for row in rows[1:3]] == ["rm-warm", "rm-2"]
    assert rows[2]["trained_pairs"] == 30 and rows[1]["trained_pairs"] is None
    assert all(row["pairs"] > 0 and row["warm_heldout_accuracy"] == 1.0 for row in rows[1:])
    assert rows[-1]["pairs"] == len(rounds.trainer.book.heldout)


def test_the_score_cache_scores_each_pair_once_per_model_version():
    scorer = _Scorer()
    rounds = DemoRounds(OnlineDemoConfig(), _QuickTrainer(), scorer)
    rounds.trainer.run_round(None)
    rounds.check_reward_model(1, None)
    first = scorer.scored
    rounds.check_reward_model(1, None)  # nothing new: no row, nothing scored
    rounds.trainer.round = 2  # the next round would retrain; here only the pairs grow and the model stays
    rounds.trainer.book.heldout["x"] = {"prompt": "q", "chosen": "a new one", "rejected": "b", "weight": 1.0}
    rounds.check_reward_model(2, None)
    assert len(rounds.accuracy) == 2 and rounds.accuracy[-1]["pairs"] == rounds.accuracy[0]["pairs"] + 1
    assert scorer.scored - first == 2  # only the new pair's two sides


# ---- the replicas' CPU priority ------------------------------------------------------------------------


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is read from /proc")
def test_lower_priority_reaches_every_thread_of_the_process_tree():
    child_code = (
        "import subprocess, sys, threading, time\n"
        "threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])\n"
        "time.sleep(30)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", child_code])
    try:
        deadline = time.monotonic() + 20
        while not descendants(parent.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        (grandchild,) = descendants(parent.pid)
        assert lower_priority(parent.pid, 7) >= 3  # the parent's two threads and the grandchild's
        for pid in (parent.pid, grandchild):
            threads = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
            assert all(os.getpriority(os.PRIO_PROCESS, t) == 7 for t in threads)
        assert lower_priority(parent.pid, 3) == 0  # never raises a priority back up
    finally:
        for pid in descendants(parent.pid):
            os.kill(pid, 9)
        parent.kill()
        parent.wait()
