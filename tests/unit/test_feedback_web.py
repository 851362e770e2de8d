"""The feedback web app's logic without servers: verdict mapping, win rates, sessions, CSRF, redirects.

The gateway is a fake here (it records what would be sent over gRPC); the browser test
in tests/integration/test_feedback_web.py drives the same app against real services.
"""

from __future__ import annotations

import json
import random
import re

import pytest
from starlette.testclient import TestClient

from rlhf.v1 import feedback_pb2 as fb
from services.common.security import ClientSecurity, Principal, TokenAuthenticator
from services.feedback_web.accounts import Accounts, SignInRefused
from services.feedback_web.app import build_app
from services.feedback_web.chart import win_rate_chart
from services.feedback_web.config import FeedbackWebConfig
from services.feedback_web.gateway import Pair, PromptSource, Shown
from services.feedback_web.judgements import Verdict, compare_bodies, rating_body
from services.feedback_web.sessions import COOKIE_NAME
from services.feedback_web.standings import (
    Comparison,
    Ledger,
    latest_canary_decision,
    standings,
    wilson_interval,
)

# ---- pure logic ----------------------------------------------------------------------


def test_wilson_interval_matches_the_closed_form():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-4) and high == pytest.approx(0.7634, abs=1e-4)
    low, high = wilson_interval(10, 10)
    assert low == pytest.approx(0.7225, abs=1e-4) and high == pytest.approx(1.0)


def _comparison(choice, va, vb):
    return Comparison(0.0, "r", choice, va, vb, "sa", "sb", "stable", "canary")


def test_standings_count_cross_version_pairs_and_half_wins_for_ties():
    rows = {
        r.version: r
        for r in standings(
            [
                _comparison("a", 1, 2),
                _comparison("a", 1, 2),
                _comparison("b", 1, 2),
                _comparison("tie", 2, 1),
                _comparison("both_bad", 1, 2),
                _comparison("a", 1, 1),
            ]
        )
    }
    # v1 vs v2: v1 wins 2, loses 1, two halves -> 3 of 5
    assert (rows[1].judged, rows[1].n, rows[1].wins) == (6, 5, 3.0)
    assert (rows[2].judged, rows[2].n, rows[2].wins) == (5, 5, 2.0)
    assert rows[1].win_rate == pytest.approx(0.6) and rows[1].low < 0.6 < rows[1].high
    chart = win_rate_chart(list(rows.values()))
    assert [b["label"] for b in chart["bars"]] == ["v1", "v2"] and chart["bars"][0]["x"] > chart["mid"]


def test_standings_of_one_version_have_no_win_rate():
    (row,) = standings([_comparison("a", 3, 3)])
    assert (row.version, row.judged, row.n, row.win_rate) == (3, 1, 0, None)
    assert win_rate_chart([row])["bars"] == []


def test_verdicts_become_the_right_feedback_records():
    (pair,) = compare_bodies(Verdict("b"), "sa", "sb")
    assert (pair.pairwise.chosen_sample_id, pair.pairwise.rejected_sample_id) == ("sb", "sa")
    bodies = compare_bodies(Verdict("a", comment=" nice ", correction="Better."), "sa", "sb", {"sa": "x", "sb": "y"})
    assert [b.WhichOneof("kind") for b in bodies] == ["pairwise", "comment", "correction"]
    assert bodies[1].comment.sample_id == "sa" and bodies[1].comment.text == "nice"
    assert bodies[2].correction.sample_id == "sa" and bodies[2].correction.corrected_text == "Better."
    bad = compare_bodies(Verdict("both_bad", correction="fixed"), "sa", "sb")
    assert [(b.WhichOneof("kind"), b.thumbs.up) for b in bad[:2]] == [("thumbs", False), ("thumbs", False)]
    assert {b.correction.sample_id for b in bad[2:]} == {"sa", "sb"}
    tie = compare_bodies(Verdict("tie", comment="same"), "sa", "sb")
    assert [(b.comment.sample_id, b.comment.text) for b in tie] == [("sa", "tie: same"), ("sb", "tie: same")]
    # a "correction" equal to the sample is no correction (the service would refuse it)
    assert len(compare_bodies(Verdict("a", correction="x"), "sa", "sb", {"sa": "x", "sb": "y"})) == 1
    with pytest.raises(ValueError):
        Verdict("c")
    (rating,) = rating_body("s1", 4)
    assert (rating.rating.value, rating.rating.scale_min, rating.rating.scale_max) == (4.0, 1.0, 5.0)
    with pytest.raises(ValueError):
        rating_body("s1", 6)


def test_ledger_survives_a_restart_and_a_torn_last_line(tmp_path):
    path = tmp_path / "comparisons.jsonl"
    Ledger(path).append(_comparison("a", 1, 2))
    with open(path, "a") as handle:
        handle.write('{"time": 1, "rater')  # a crash mid-write
    assert Ledger(path).rows() == [_comparison("a", 1, 2)]


def test_latest_canary_decision_reads_the_online_loops_rounds(tmp_path):
    assert latest_canary_decision("") is None and latest_canary_decision(str(tmp_path)) is None
    rounds = [
        {
            "round": 1,
            "time": 10.0,
            "decision": {"action": "promote", "candidate_version": 1, "baseline_version": 0, "reason": "ok"},
        },
        {
            "round": 2,
            "time": 20.0,
            "decision": {"action": "rollback", "candidate_version": 2, "baseline_version": 1, "reason": "worse"},
        },
        {"round": 3, "time": 30.0, "decision": None},
    ]
    (tmp_path / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rounds))
    status = latest_canary_decision(str(tmp_path))
    assert (status.action, status.candidate_version, status.baseline_version) == ("rollback", 2, 1)
    assert status.reason == "worse"


def _accounts() -> Accounts:
    return Accounts(
        TokenAuthenticator(
            [
                ("rater-secret", Principal("alice", frozenset({"feedback", "generate"}), "team")),
                ("admin-secret", Principal("expert", frozenset({"feedback", "generate", "admin"}), "team")),
                ("reader-secret", Principal("reader", frozenset({"score"}), "team")),
            ]
        )
    )


def test_sign_in_maps_tokens_to_raters_and_refuses_others():
    accounts = _accounts()
    caller = accounts.sign_in(" rater-secret ")
    assert (caller.rater_id, caller.tenant, caller.admin) == ("alice", "team", False)
    assert accounts.sign_in("admin-secret").admin
    for token, reason in (("nope", "unknown token"), ("reader-secret", "feedback"), ("", "enter")):
        with pytest.raises(SignInRefused, match=reason):
            accounts.sign_in(token)


# ---- the app over a fake gateway -----------------------------------------------------


class FakeGateway:
    """Stands in for gRPC: numbered samples, version 7 (stable) and 8 (canary); records submissions."""

    has_canary = True

    def __init__(self) -> None:
        self.count = 0
        self.submitted: list[tuple[str, bool, fb.FeedbackBody]] = []

    def _shown(self, replica: str) -> Shown:
        self.count += 1
        return Shown(f"s{self.count:03d}", f"answer {self.count}", 7 if replica == "stable" else 8, replica)

    async def pair(self, caller, prompt, rng):
        a, b = self._shown("stable"), self._shown("canary")
        if rng.random() < 0.5:
            a, b = b, a
        return Pair(f"p{self.count}", prompt, a, b, 0.0)

    async def sample(self, caller, prompt, rng):
        return self._shown("stable")

    async def live_prompts(self, caller):
        return [PromptSource("live prompt", origin="live")]

    async def serving_versions(self, caller):
        return {"stable": 7, "canary": 8}

    async def submit(self, caller, bodies):
        self.submitted.extend((caller.rater_id, caller.admin, b) for b in bodies)
        return ["id"] * len(bodies)

    async def close(self):
        pass


@pytest.fixture()
def web(tmp_path):
    gateway = FakeGateway()
    config = FeedbackWebConfig(state_dir=str(tmp_path), token_file="unused", prompts_file=str(tmp_path / "none"))
    app = build_app(config, accounts=_accounts(), gateway=gateway, secret="test-secret")
    with TestClient(app, base_url="http://testserver") as client:
        yield client, gateway, tmp_path


def _csrf(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def _sign_in(client, token="rater-secret", target="/compare"):
    page = client.get(f"/signin?next={target}")
    return client.post(
        "/signin", data={"csrf_token": _csrf(page.text), "token": token, "next": target}, follow_redirects=False
    )


def test_pages_without_a_session_redirect_to_sign_in(web):
    client, _, _ = web
    for path in ("/compare", "/rate", "/versions"):
        reply = client.get(path, follow_redirects=False)
        assert reply.status_code == 303 and reply.headers["location"].startswith("/signin?next=%2F")


def test_sign_in_sets_a_strict_httponly_cookie_and_redirects_back(web):
    client, _, _ = web
    reply = _sign_in(client, target="/rate")
    assert reply.status_code == 303 and reply.headers["location"] == "/rate"
    cookie = reply.headers["set-cookie"].lower()
    assert f"{COOKIE_NAME}=" in cookie and "httponly" in cookie and "samesite=strict" in cookie
    assert "content-security-policy" in reply.headers
    assert "rater-secret" not in reply.headers["set-cookie"]  # the token stays on the server


def test_bad_token_and_open_redirects_are_refused(web):
    client, _, _ = web
    reply = _sign_in(client, token="wrong")
    assert reply.status_code == 401 and "unknown token" in reply.text
    reply = _sign_in(client, target="//evil.example/x")
    assert reply.status_code == 303 and reply.headers["location"] == "/compare"


def test_posts_without_the_csrf_token_are_refused(web):
    client, gateway, _ = web
    _sign_in(client)
    page = client.get("/compare")
    pair_id = re.search(r'name="pair_id" value="([^"]+)"', page.text).group(1)
    for data in ({"pair_id": pair_id, "choice": "a"}, {"pair_id": pair_id, "choice": "a", "csrf_token": "forged"}):
        assert client.post("/compare", data=data, follow_redirects=False).status_code == 403
    assert client.post("/signin", data={"token": "rater-secret"}, follow_redirects=False).status_code == 403
    assert gateway.submitted == []


def test_a_comparison_is_submitted_as_the_caller_and_ledgered_with_versions(web):
    client, gateway, tmp_path = web
    _sign_in(client)
    page = client.get("/compare")
    assert "answer" in page.text and ">7<" not in page.text  # versions hidden
    pair_id = re.search(r'name="pair_id" value="([^"]+)"', page.text).group(1)
    reply = client.post(
        "/compare", data={"csrf_token": _csrf(page.text), "pair_id": pair_id, "choice": "b"}, follow_redirects=False
    )
    assert reply.status_code == 303 and reply.headers["location"] == "/compare"
    ((rater, gold, body),) = gateway.submitted
    assert (rater, gold, body.WhichOneof("kind")) == ("alice", False, "pairwise")
    (row,) = Ledger(tmp_path / "comparisons.jsonl").rows()
    assert row.rater_id == "alice" and row.choice == "b" and {row.version_a, row.version_b} == {7, 8}
    assert body.pairwise.chosen_sample_id == row.sample_b
    # the same pair cannot be judged twice
    again = client.post("/compare", data={"csrf_token": _csrf(page.text), "pair_id": pair_id, "choice": "a"})
    assert again.status_code == 400
    versions = client.get("/versions")
    assert versions.status_code == 200 and 'id="chart"' in versions.text and "v7" in versions.text


def test_admin_ratings_are_gold_and_skips_send_nothing(web):
    client, gateway, _ = web
    _sign_in(client, token="admin-secret", target="/rate")
    page = client.get("/rate")
    sample_id = re.search(r'name="sample_id" value="([^"]+)"', page.text).group(1)
    client.post("/rate", data={"csrf_token": _csrf(page.text), "sample_id": sample_id, "stars": "skip"})
    assert gateway.submitted == []
    page = client.get("/rate")
    second = re.search(r'name="sample_id" value="([^"]+)"', page.text).group(1)
    assert second != sample_id
    client.post("/rate", data={"csrf_token": _csrf(page.text), "sample_id": second, "stars": "5"})
    ((rater, gold, body),) = gateway.submitted
    assert (rater, gold, body.rating.sample_id, body.rating.value) == ("expert", True, second, 5.0)


def test_a_typed_prompt_is_the_next_one_compared(web):
    client, _, _ = web
    _sign_in(client)
    page = client.get("/compare")
    client.post("/compare/prompt", data={"csrf_token": _csrf(page.text), "prompt": "Name a <b>sea</b> novel."})
    page = client.get("/compare")
    assert "Name a &lt;b&gt;sea&lt;/b&gt; novel." in page.text  # shown, escaped


def test_sign_out_ends_the_session(web):
    client, _, _ = web
    _sign_in(client)
    page = client.get("/compare")
    client.post("/signout", data={"csrf_token": _csrf(page.text)})
    assert client.get("/compare", follow_redirects=False).status_code == 303


def test_the_gateway_shows_stable_and_canary_in_random_order():
    import asyncio

    from services.feedback_web.gateway import ServiceGateway

    async def run() -> set[str]:
        gateway = ServiceGateway(FeedbackWebConfig(canary_address="127.0.0.1:1"), app_security=ClientSecurity())

        async def fake_generate(caller, replica, prompt, n):
            return [Shown(f"{replica}-{i}", "t", 0, replica) for i in range(n)]

        gateway._generate = fake_generate
        rng = random.Random(0)
        pairs = [await gateway.pair(None, PromptSource("p"), rng) for _ in range(20)]
        await gateway.close()
        assert all({p.a.replica, p.b.replica} == {"stable", "canary"} for p in pairs)
        return {p.a.replica for p in pairs}

    assert asyncio.run(run()) == {"stable", "canary"}
