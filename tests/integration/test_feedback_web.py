"""The feedback pages in a real headless Chromium against real services on loopback.

A tiny-model policy records its samples into a SQLite experience store, the
standalone FeedbackService serves that store, both with bearer-token auth from one
token file; the web app signs people in with the same file. The browser compares ten
pairs and rates three samples with the keyboard; the FeedbackService then has to hold
every judgement under the right rater and kind, on samples of the right weight
version. Also: a form without its CSRF token is refused, a page without a session
goes to sign-in, and an admin token's judgements are stored as gold.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from rlhf.v1 import feedback_pb2 as fb
from rlhf.v1 import feedback_pb2_grpc, policy_pb2, policy_pb2_grpc
from services.common.client import open_channel
from services.common.security import ClientSecurity
from services.experience.store import ExperienceStore
from services.feedback_web.launch import demo_token_file, start_feedback_web
from tests.integration.feedback_support import start_experience_service
from tests.integration.policy_fixtures import launch_policy

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
if CHROMIUM is None:
    pytest.skip(
        "chromium is not installed (apt-get install chromium, or `make system-deps` as root)", allow_module_level=True
    )
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the playwright package is not installed (pip install playwright)"
)

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
REPO = Path(__file__).resolve().parents[2]
# keys pressed for the ten comparisons, and what each means
KEYS = ["1", "2", "3", "4", "a", "b", "t", "x", "1", "2"]
CHOICE = {"1": "a", "a": "a", "2": "b", "b": "b", "3": "tie", "t": "tie", "4": "both_bad", "x": "both_bad"}


@pytest.fixture(scope="module")
def stack(tiny_policy_dir, tmp_path_factory):
    """Experience service + recording policy (auth on) + the web app; yields what the tests need."""
    root = tmp_path_factory.mktemp("feedback-web")
    token_file, tokens = demo_token_file(
        root / "tokens",
        {
            "alice": ("generate", "feedback"),
            "expert": ("generate", "feedback", "admin"),
        },
    )
    db_url = f"sqlite:///{root / 'experience.db'}"
    experience, feedback_address, _ = start_experience_service(
        db_url, root / "experience.log", "--auth-tokens-file", str(token_file)
    )
    policy, policy_address, _, _ = launch_policy(
        tiny_policy_dir,
        root / "policy.log",
        extra_args=("--experience-db", db_url, "--auth-tokens-file", str(token_file)),
    )
    web = None
    try:
        policy.wait_serving(policy_address, timeout_s=300)
        web, url = start_feedback_web(
            policy_address,
            feedback_address,
            token_file,
            root / "web.log",
            state_dir=str(root / "web-state"),
            extra=("--max-tokens", "16", "--prompts-file", str(REPO / "data/book_reviews.jsonl")),
            env={"RLHF_CLIENT_TOKEN": "", "RLHF_CLIENT_TOKEN_FILE": ""},
        )
        admin = ClientSecurity(token=tokens["expert"])
        channels = [open_channel(feedback_address, security=admin), open_channel(policy_address, security=admin)]
        try:
            yield {
                "url": url,
                "tokens": tokens,
                "root": root,
                "db_url": db_url,
                "feedback": feedback_pb2_grpc.FeedbackServiceStub(channels[0]),
                "policy": policy_pb2_grpc.PolicyServiceStub(channels[1]),
            }
        finally:
            for channel in channels:
                channel.close()
    finally:
        web_code = web.stop() if web is not None else 0
        policy.stop()
        experience.stop()
        assert web_code == 0, f"the web app exited with {web_code} on SIGTERM\n{web.log_tail()}"


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS, headless=True)
        yield chromium
        chromium.close()


def sign_in(page, url: str, token: str, path: str = "/compare") -> None:
    page.goto(url + path)
    assert "/signin?next=" in page.url  # no session yet
    page.fill("#token", token)
    with page.expect_navigation():
        page.click("#signin")
    assert page.url == url + path, page.content()


def judge_with_key(page, key: str) -> str:
    """Presses `key` on the compare page; returns the judged pair id once the next pair is shown."""
    pair_id = page.get_attribute("#compare-form", "data-pair")
    with page.expect_navigation():
        page.keyboard.press(key)
    page.wait_for_selector("#compare-form")
    assert page.locator("#error").count() == 0, page.inner_text("#error")
    assert page.get_attribute("#compare-form", "data-pair") != pair_id
    return pair_id


def export(stack, rater: str) -> list[fb.FeedbackRecord]:
    request = fb.ExportFeedbackRequest(rater_id=rater, limit=1000)
    return list(stack["feedback"].ExportFeedback(request, timeout=30).records)


def ledger(stack) -> list[dict]:
    path = stack["root"] / "web-state" / "comparisons.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_compare_and_rate_with_the_keyboard_store_every_judgement(stack, browser):
    url = stack["url"]
    version = stack["policy"].GetStatus(policy_pb2.GetStatusRequest(), timeout=30).weight_version
    context = browser.new_context()
    page = context.new_page()
    sign_in(page, url, stack["tokens"]["alice"])
    assert page.inner_text("#rater") == "alice"

    started = time.monotonic()
    for i, key in enumerate(KEYS):
        if i == 0:  # the first one with a comment and a corrected answer; typing there is not a shortcut
            page.click("details.extra summary")
            page.fill("#comment", "A is clearer 1234")
            page.fill("#correction", "A corrected answer.")
            page.locator("#prompt-text").click()  # leave the text field so the key is a shortcut again
        judge_with_key(page, key)
    compare_seconds = time.monotonic() - started

    page.goto(url + "/rate")
    with page.expect_navigation():
        page.keyboard.press("s")  # skip one
    rated = []
    for key in ("5", "3", "1"):
        rated.append(page.get_attribute("#rate-form", "data-sample"))
        with page.expect_navigation():
            page.keyboard.press(key)
        assert page.locator("#error").count() == 0

    records = export(stack, "alice")
    assert records and all(r.rater_id == "alice" and not r.gold for r in records)
    kinds = [fb.FeedbackKind.Name(r.kind) for r in records]
    rows = ledger(stack)
    assert [r["choice"] for r in rows] == [CHOICE[k] for k in KEYS] and all(r["rater_id"] == "alice" for r in rows)
    # a/b -> pairwise; tie -> a comment on each side; both bad -> thumbs down on each side
    assert kinds.count("FEEDBACK_KIND_PAIRWISE") == 6
    assert kinds.count("FEEDBACK_KIND_THUMBS") == 4
    assert kinds.count("FEEDBACK_KIND_COMMENT") == 4 + 1  # ties, plus the first comparison's comment
    assert kinds.count("FEEDBACK_KIND_CORRECTION") == 1
    assert kinds.count("FEEDBACK_KIND_RATING") == 3

    by_pair = {frozenset((r["sample_a"], r["sample_b"])): r for r in rows}
    for record in records:
        if record.kind == fb.FEEDBACK_KIND_PAIRWISE:
            row = by_pair[frozenset((record.body.pairwise.chosen_sample_id, record.body.pairwise.rejected_sample_id))]
            chosen = row["sample_a"] if row["choice"] == "a" else row["sample_b"]
            assert record.body.pairwise.chosen_sample_id == chosen
        if record.kind == fb.FEEDBACK_KIND_CORRECTION:
            assert record.body.correction.corrected_text == "A corrected answer."
    first = rows[0]
    comment = next(r for r in records if r.kind == fb.FEEDBACK_KIND_COMMENT and "1234" in r.body.comment.text)
    assert comment.body.comment.sample_id == first["sample_a"]  # the chosen side of the first (key "1": A)

    # versions: the ratings as the FeedbackService reports them, and every judged sample in the store
    ratings = stack["feedback"].ListRatings(fb.ListRatingsRequest(), timeout=30).ratings
    by_sample = {r.sample_id: r for r in ratings}
    assert {s: by_sample[s].weight_version for s in rated} == {s: version for s in rated}
    assert sorted(round(by_sample[s].score, 3) for s in rated) == [0.0, 0.5, 1.0]
    store = ExperienceStore.open(stack["db_url"])
    try:
        judged = [s for r in rows for s in (r["sample_a"], r["sample_b"])]
        found = store.get_samples(judged)
        assert set(found) == set(judged)
        assert all(found[s].weight_version == version for s in judged)
        assert all(r["version_a"] == r["version_b"] == version for r in rows)
        assert all(found[s].tenant == "default" and found[s].request_id.startswith("web-") for s in judged)
    finally:
        store.close()

    page.goto(url + "/versions")
    assert page.inner_text(f'#versions tr[data-version="{version}"] td.judged') == "10"
    assert "no canary" in page.inner_text("#canary")
    assert f"stable v{version}" in page.inner_text("#serving")
    context.close()
    print(f"ten comparisons in {compare_seconds:.1f} s")


def test_a_form_without_its_csrf_token_is_refused(stack, browser):
    url = stack["url"]
    context = browser.new_context()
    page = context.new_page()
    sign_in(page, url, stack["tokens"]["alice"])
    before = len(export(stack, "alice"))
    page.evaluate("document.querySelectorAll('input[name=csrf_token]').forEach(e => e.remove())")
    with page.expect_response(lambda r: r.url == url + "/compare" and r.request.method == "POST") as answer:
        page.click("#choose-a")
    assert answer.value.status == 403
    forged = page.request.post(url + "/rate", form={"sample_id": "x", "stars": "5", "csrf_token": "forged"})
    assert forged.status == 403
    assert len(export(stack, "alice")) == before  # nothing stored
    context.close()


def test_pages_without_a_session_redirect_to_sign_in(stack, browser):
    url = stack["url"]
    context = browser.new_context()
    page = context.new_page()
    for path in ("/compare", "/rate", "/versions"):
        page.goto(url + path)
        assert page.url.startswith(url + "/signin?next=") and page.locator("#token").count() == 1
    page.fill("#token", "not-a-token")
    page.click("#signin")
    assert "unknown token" in page.inner_text("#error")
    context.close()


def test_admin_judgements_are_gold_on_live_prompts(stack, browser):
    url = stack["url"]
    context = browser.new_context()
    page = context.new_page()
    sign_in(page, url, stack["tokens"]["expert"])
    assert page.locator(".badge").inner_text() == "gold"
    assert page.locator("#compare-form .tag").inner_text() == "live"  # admin tokens can read live prompts
    judge_with_key(page, "2")
    (record,) = [r for r in export(stack, "expert") if r.kind == fb.FEEDBACK_KIND_PAIRWISE]
    assert record.gold and record.rater_id == "expert"
    context.close()
