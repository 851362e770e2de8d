"""The canary's sequential test against the traffic simulator's users (no engine): its error rates and its records.

Each simulated canary puts a candidate against stable: a simulated user (the
simulator's raters: noisy, a tenth adversarial) is shown one completion of each, in
random order, and picks one; the canary looks at the tally every `POLL` judgements,
as the loop does every few seconds, and stops at its first decision or at the window.
"""

from __future__ import annotations

import math
import random

import pytest

from services.online.canary import CanarySettings, judge
from services.online.sequential import (
    PROMOTE,
    ROLLBACK,
    WAIT,
    SequentialSettings,
    boundary,
    decide,
    log_mixture_ratio,
    mixture_rho,
)
from services.online.simulator import SimulatorConfig, make_users

SETTINGS = CanarySettings()  # the defaults: alpha 0.05, delta 0.1
CANARIES = 200
POLL = 10
USERS = make_users(SimulatorConfig(users=40, adversarial_fraction=0.1, rating_noise=0.1))
WORSE_SHIFT = -0.09  # candidate utility shift that makes its win rate just under 0.5 - delta (checked below)


def utility(rng: random.Random, shift: float) -> float:
    """Hidden utility of one completion: stable's completions ~ N(0.6, 0.15) clipped to [0, 1]."""
    return min(1.0, max(0.0, rng.gauss(0.6 + shift, 0.15)))


def candidate_wins(rng: random.Random, shift: float) -> bool:
    """One interleaved judgement by a random simulated user; the order of the two completions is random."""
    user = rng.choice(USERS)
    candidate, stable = utility(rng, shift), utility(rng, 0.0)
    if rng.random() < 0.5:
        return user.rater.prefers_first(candidate, stable, rng)
    return not user.rater.prefers_first(stable, candidate, rng)


def simulated_canary(shift: float, seed: int, settings: SequentialSettings = SETTINGS) -> tuple[str, int]:
    rng = random.Random(seed)
    wins = 0
    for n in range(1, settings.max_judgements + 1):
        wins += candidate_wins(rng, shift)
        if n % POLL == 0 or n == settings.max_judgements:
            verdict = decide(wins, n, settings)
            if verdict.action != WAIT:
                return verdict.action, n
    raise AssertionError("the window must end in a decision")


def win_rate(shift: float, draws: int = 40_000) -> float:
    rng = random.Random(99)
    return sum(candidate_wins(rng, shift) for _ in range(draws)) / draws


def test_a_delta_worse_candidate_is_promoted_at_most_alpha_of_the_time():
    assert win_rate(WORSE_SHIFT) <= 0.5 - SETTINGS.delta  # the scenario really is delta-worse
    actions = [simulated_canary(WORSE_SHIFT, seed)[0] for seed in range(CANARIES)]
    assert actions.count(PROMOTE) / CANARIES <= SETTINGS.alpha
    assert actions.count(ROLLBACK) / CANARIES >= 0.8  # and it is caught, not left inconclusive


@pytest.mark.parametrize("shift", [0.0, 0.03])
def test_an_equal_or_better_candidate_is_promoted_within_the_window(shift):
    assert win_rate(shift) >= 0.49
    actions = [simulated_canary(shift, 1000 + seed)[0] for seed in range(CANARIES)]
    assert actions.count(PROMOTE) / CANARIES >= 0.8
    assert actions.count(ROLLBACK) / CANARIES <= SETTINGS.alpha


def test_a_much_worse_candidate_is_rolled_back_quickly():
    outcomes = [simulated_canary(-0.3, seed) for seed in range(50)]
    assert all(action == ROLLBACK for action, _ in outcomes)
    assert max(n for _, n in outcomes) <= 100


def test_peeking_at_every_judgement_keeps_the_error_rate():
    """Looking after every single judgement (the worst case for a fixed-n test) still promotes <= alpha."""
    settings = SequentialSettings(max_judgements=400)
    promoted = 0
    for seed in range(CANARIES):
        rng, wins = random.Random(5000 + seed), 0
        for n in range(1, settings.max_judgements + 1):
            wins += rng.random() < 0.4  # exactly delta-worse
            action = decide(wins, n, settings).action
            if action != WAIT:
                promoted += action == PROMOTE
                break
    assert promoted / CANARIES <= settings.alpha


def test_a_decision_records_n_effect_interval_and_statistic():
    verdict = judge(150, 200, SETTINGS, window_over=False)
    assert verdict.action == PROMOTE and verdict.n == 200 and verdict.effect == pytest.approx(0.25)
    assert verdict.ci_low < verdict.effect < verdict.ci_high and verdict.ci_low > -SETTINGS.delta
    assert verdict.statistic >= verdict.threshold == pytest.approx(math.log(1 / SETTINGS.alpha))
    worse = judge(40, 200, SETTINGS, window_over=False)
    assert worse.action == ROLLBACK and worse.ci_high < 0 and worse.statistic >= worse.threshold
    record = worse.as_dict()
    assert {"n", "effect", "ci_low", "ci_high", "statistic"} <= set(record) and record["n"] == 200


def test_the_interval_and_the_mixture_ratio_are_dual():
    """p0 is outside the confidence sequence exactly when log Lambda(p0) >= log(1/alpha) (Howard et al. / Johari et al.)."""
    rho = mixture_rho(75.0, 0.05)
    for wins, n in [(10, 20), (170, 300), (130, 300), (52, 100)]:
        radius = boundary(n / 4, rho, 0.05) / n
        for p0 in (0.3, 0.4, 0.45, 0.5, 0.6):
            outside = abs(wins / n - p0) >= radius
            assert outside == (log_mixture_ratio(wins, n, p0, rho) >= math.log(1 / 0.05))
    # rho is where the radius is tightest
    assert boundary(75.0, rho, 0.05) <= min(boundary(75.0, rho * f, 0.05) for f in (0.5, 0.8, 1.25, 2.0))


@pytest.mark.parametrize(
    ("wins", "n", "window_over", "action"),
    [
        (5, 9, False, WAIT),  # fewer than min_judgements
        (150, 300, False, PROMOTE),  # equal: within delta
        (30, 200, False, ROLLBACK),  # clearly worse
        (50, 110, False, WAIT),  # not yet sure either way
        (50, 110, True, ROLLBACK),  # inconclusive at the window: conservative
        (0, 0, True, ROLLBACK),  # no judgements at all in the window
    ],
)
def test_judge(wins, n, window_over, action):
    verdict = judge(wins, n, SETTINGS, window_over)
    assert verdict.action == action, verdict.reason


def test_inconclusive_outcome_is_configurable_and_settings_are_checked():
    settings = CanarySettings(on_inconclusive=PROMOTE)
    verdict = judge(50, 110, settings, window_over=True)
    assert verdict.action == PROMOTE and "inconclusive" in verdict.reason
    short = CanarySettings(on_inconclusive=PROMOTE, max_judgements=200)  # the window in judgements
    assert judge(90, 199, short, window_over=False).action == WAIT and judge(90, 200, short, False).action == PROMOTE
    for bad in ({"on_inconclusive": "maybe"}, {"alpha": 0.0}, {"delta": 0.5}, {"min_judgements": 0}, {"window_s": 0.0}):
        with pytest.raises(ValueError):
            CanarySettings(**bad)
    with pytest.raises(ValueError):
        decide(5, 3, SETTINGS)
