"""The ASGI app: sign-in, compare, rate and versions pages.

Handlers stay thin: check the session and CSRF token, call the gateway (gRPC) or the
pure modules (judgements, standings, chart), render a template. Every POST needs the
session's CSRF token (403 without it); every page needs a session (a redirect to
/signin without one). The next comparison pair is generated while the person reads
the current one, so it shows as soon as they choose.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from services.feedback_web.accounts import Accounts, SignInRefused
from services.feedback_web.chart import win_rate_chart
from services.feedback_web.config import FeedbackWebConfig
from services.feedback_web.gateway import (
    Pair,
    PromptSource,
    ServiceError,
    ServiceGateway,
    Shown,
)
from services.feedback_web.judgements import (
    VERDICTS,
    Verdict,
    compare_bodies,
    rating_body,
)
from services.feedback_web.sessions import (
    COOKIE_NAME,
    CSRF_FIELD,
    Session,
    SessionStore,
)
from services.feedback_web.standings import (
    Comparison,
    Ledger,
    latest_canary_decision,
    standings,
)

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
MAX_TEXT = 16384
MAX_PENDING_PAIRS = 20
RATE_BATCH = 3
LIVE_PROMPTS_TTL_S = 30.0

SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every HTTP response (pure ASGI middleware)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                names = {k.lower() for k, _ in message["headers"]}
                for key, value in SECURITY_HEADERS.items():
                    if key.encode() not in names:
                        message["headers"].append((key.encode(), value.encode()))
            await send(message)

        await self.app(scope, receive, with_headers)


def load_prompts_file(path: str) -> list[PromptSource]:
    """Fallback prompts ({"prompt": ...} per line); [] when the file is missing."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        log.warning("prompts file %s not readable; only typed and live prompts", path)
        return []
    prompts = []
    for line in lines:
        if line.strip():
            text = str(json.loads(line).get("prompt", "")).strip()
            if text:
                prompts.append(PromptSource(text, origin="file"))
    return prompts


@dataclass
class WebState:
    config: FeedbackWebConfig
    accounts: Accounts
    sessions: SessionStore
    gateway: ServiceGateway
    ledger: Ledger
    file_prompts: list[PromptSource]
    rng: random.Random
    live_prompts: dict[tuple[str, bool], tuple[float, list[PromptSource]]]  # (tenant, admin) -> (read at, prompts)


def _safe_next(target: str | None) -> str:
    """Only same-site paths after sign-in (no open redirect)."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/compare"


def build_app(
    config: FeedbackWebConfig,
    accounts: Accounts | None = None,
    gateway: ServiceGateway | None = None,
    secret: str | None = None,
) -> Starlette:
    """The app; `accounts`, `gateway` and `secret` default to what `config` names (tests may pass their own)."""
    if secret is None:
        if config.session_secret_file:
            secret = Path(config.session_secret_file).read_text().splitlines()[0].strip()
        else:
            secret = secrets.token_urlsafe(32)
    templates = Jinja2Templates(directory=str(HERE / "templates"))

    def state_of(request: Request) -> WebState:
        return request.app.state.web

    # ---- sessions --------------------------------------------------------------------

    def current(request: Request) -> Session | None:
        return state_of(request).sessions.from_cookie(request.cookies.get(COOKIE_NAME))

    def with_cookie(request: Request, response: Response, session: Session) -> Response:
        response.set_cookie(
            COOKIE_NAME,
            state_of(request).sessions.cookie_value(session),
            max_age=config.session_max_age_s,
            path="/",
            httponly=True,
            samesite="strict",
            secure=config.secure_cookies,
        )
        return response

    def to_signin(request: Request) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/signin?next={quote(target, safe='')}", status_code=303)

    async def signed_in_form(request: Request):
        """(session, form) for a POST from a signed-in person; a Response to return instead otherwise."""
        session = current(request)
        form = await request.form()
        if session is None or not session.csrf_ok(form.get(CSRF_FIELD)):
            log.warning("refused POST %s: missing or wrong CSRF token", request.url.path)
            return PlainTextResponse("missing or invalid CSRF token", status_code=403), None
        if session.caller is None:
            return to_signin(request), None
        return session, form

    def render(request: Request, session: Session, name: str, status: int = 200, **context) -> Response:
        context.update(
            csrf_token=session.csrf_token, caller=session.caller, csrf_field=CSRF_FIELD, page=name.removesuffix(".html")
        )
        return with_cookie(request, templates.TemplateResponse(request, name, context, status_code=status), session)

    # ---- sign-in ---------------------------------------------------------------------

    async def signin_page(request: Request) -> Response:
        web = state_of(request)
        session = current(request) or web.sessions.new()
        return render(request, session, "signin.html", next=_safe_next(request.query_params.get("next")), error="")

    async def signin(request: Request) -> Response:
        web = state_of(request)
        session = current(request)
        form = await request.form()
        if session is None or not session.csrf_ok(form.get(CSRF_FIELD)):
            return PlainTextResponse("missing or invalid CSRF token", status_code=403)
        target = _safe_next(form.get("next"))
        try:
            caller = web.accounts.sign_in(str(form.get("token", "")))
        except SignInRefused as exc:
            log.info("sign-in refused: %s", exc)
            return render(request, session, "signin.html", status=401, next=target, error=str(exc))
        session = web.sessions.sign_in(session, caller)
        log.info("signed in rater=%s tenant=%s admin=%s", caller.rater_id, caller.tenant, caller.admin)
        return with_cookie(request, RedirectResponse(target, status_code=303), session)

    async def signout(request: Request) -> Response:
        session, _ = await signed_in_form(request)
        if not isinstance(session, Session):
            return session
        state_of(request).sessions.end(session)
        response = RedirectResponse("/signin", status_code=303)
        response.delete_cookie(COOKIE_NAME, path="/")
        return response

    # ---- prompts ---------------------------------------------------------------------

    async def next_prompt(web: WebState, session: Session) -> PromptSource:
        typed = session.state.pop("typed_prompt", None)
        if typed:
            return PromptSource(typed, origin="typed")
        key = (session.caller.tenant, session.caller.admin)  # what this caller may read
        fetched_at, live = web.live_prompts.get(key, (0.0, []))
        if time.monotonic() - fetched_at > LIVE_PROMPTS_TTL_S:
            live = await web.gateway.live_prompts(session.caller)
            web.live_prompts[key] = (time.monotonic(), live)
        pool = live[:50] or web.file_prompts
        if not pool:
            return PromptSource("Write a short review of your favourite book.", origin="file")
        return web.rng.choice(pool)

    # ---- compare ---------------------------------------------------------------------

    def prefetch(web: WebState, session: Session) -> None:
        async def make() -> Pair:
            return await web.gateway.pair(session.caller, await next_prompt(web, session), web.rng)

        session.state["prefetch"] = asyncio.create_task(make())

    async def compare_page(request: Request) -> Response:
        web = state_of(request)
        session = current(request)
        if session is None or session.caller is None:
            return to_signin(request)
        pending: dict[str, Pair] = session.state.setdefault("pairs", {})
        shown_id = session.state.get("shown")
        pair = pending.get(shown_id) if shown_id else None
        try:
            if pair is None:
                task = session.state.pop("prefetch", None)
                if "typed_prompt" in session.state or task is None:
                    if task is not None:
                        task.cancel()
                    pair = await web.gateway.pair(session.caller, await next_prompt(web, session), web.rng)
                else:
                    try:
                        pair = await task
                    except (ServiceError, asyncio.CancelledError) as exc:
                        log.warning("prefetched pair failed (%s); generating again", exc)
                        pair = await web.gateway.pair(session.caller, await next_prompt(web, session), web.rng)
                pending[pair.pair_id] = pair
                session.state["shown"] = pair.pair_id
                while len(pending) > MAX_PENDING_PAIRS:
                    del pending[next(iter(pending))]
        except ServiceError as exc:
            return render(request, session, "compare.html", status=502, pair=None, error=str(exc), done=0)
        if "prefetch" not in session.state:
            prefetch(web, session)
        return render(
            request,
            session,
            "compare.html",
            pair=pair,
            error="",
            done=session.state.get("compared", 0),
            has_canary=web.gateway.has_canary,
        )

    async def compare_submit(request: Request) -> Response:
        web = state_of(request)
        session, form = await signed_in_form(request)
        if not isinstance(session, Session):
            return session
        pair = session.state.get("pairs", {}).get(str(form.get("pair_id", "")))
        choice = str(form.get("choice", ""))
        if pair is None or choice not in VERDICTS:
            return PlainTextResponse("unknown pair or choice (reload the page)", status_code=400)
        verdict = Verdict(choice, str(form.get("comment", ""))[:MAX_TEXT], str(form.get("correction", ""))[:MAX_TEXT])
        texts = {pair.a.sample_id: pair.a.text, pair.b.sample_id: pair.b.text}
        try:
            await web.gateway.submit(session.caller, compare_bodies(verdict, pair.a.sample_id, pair.b.sample_id, texts))
        except ServiceError as exc:
            return render(
                request,
                session,
                "compare.html",
                status=502,
                pair=pair,
                error=str(exc),
                done=session.state.get("compared", 0),
                has_canary=web.gateway.has_canary,
            )
        web.ledger.append(
            Comparison(
                time.time(),
                session.caller.rater_id,
                choice,
                pair.a.weight_version,
                pair.b.weight_version,
                pair.a.sample_id,
                pair.b.sample_id,
                pair.a.replica,
                pair.b.replica,
            )
        )
        del session.state["pairs"][pair.pair_id]
        session.state.pop("shown", None)
        session.state["compared"] = session.state.get("compared", 0) + 1
        log.info(
            "comparison rater=%s choice=%s versions=%d/%d",
            session.caller.rater_id,
            choice,
            pair.a.weight_version,
            pair.b.weight_version,
        )
        return RedirectResponse("/compare", status_code=303)

    async def compare_prompt(request: Request) -> Response:
        session, form = await signed_in_form(request)
        if not isinstance(session, Session):
            return session
        text = str(form.get("prompt", "")).strip()[:MAX_TEXT]
        if text:
            session.state["typed_prompt"] = text
            session.state.pop("shown", None)
        return RedirectResponse("/compare", status_code=303)

    # ---- rate ------------------------------------------------------------------------

    async def fill_queue(web: WebState, session: Session) -> list[tuple[PromptSource, Shown]]:
        prompts = [await next_prompt(web, session) for _ in range(RATE_BATCH)]
        results = await asyncio.gather(
            *(web.gateway.sample(session.caller, p, web.rng) for p in prompts), return_exceptions=True
        )
        samples = [(p, r) for p, r in zip(prompts, results) if isinstance(r, Shown)]
        if not samples and results:
            raise results[0] if isinstance(results[0], Exception) else ServiceError("no samples")
        return samples

    async def rate_page(request: Request) -> Response:
        web = state_of(request)
        session = current(request)
        if session is None or session.caller is None:
            return to_signin(request)
        queue: list = session.state.setdefault("rate_queue", [])
        try:
            if not queue:
                task = session.state.pop("rate_refill", None)
                queue.extend(await task if task is not None else await fill_queue(web, session))
        except ServiceError as exc:
            return render(request, session, "rate.html", status=502, item=None, error=str(exc), done=0, queued=0)
        if len(queue) <= 1 and "rate_refill" not in session.state:
            session.state["rate_refill"] = asyncio.create_task(fill_queue(web, session))
        prompt, sample = queue[0]
        return render(
            request,
            session,
            "rate.html",
            item={"prompt": prompt, "sample": sample},
            error="",
            done=session.state.get("rated", 0),
            queued=len(queue),
        )

    async def rate_submit(request: Request) -> Response:
        web = state_of(request)
        session, form = await signed_in_form(request)
        if not isinstance(session, Session):
            return session
        queue: list = session.state.get("rate_queue", [])
        sample_id = str(form.get("sample_id", ""))
        index = next((i for i, (_, s) in enumerate(queue) if s.sample_id == sample_id), None)
        if index is None:
            return PlainTextResponse("unknown sample (reload the page)", status_code=400)
        action = str(form.get("stars", ""))
        if action != "skip":
            if action not in {"1", "2", "3", "4", "5"}:
                return PlainTextResponse("stars must be 1-5 or skip", status_code=400)
            try:
                await web.gateway.submit(
                    session.caller, rating_body(sample_id, int(action), str(form.get("comment", ""))[:MAX_TEXT])
                )
            except ServiceError as exc:
                prompt, sample = queue[index]
                return render(
                    request,
                    session,
                    "rate.html",
                    status=502,
                    item={"prompt": prompt, "sample": sample},
                    error=str(exc),
                    done=session.state.get("rated", 0),
                    queued=len(queue),
                )
            session.state["rated"] = session.state.get("rated", 0) + 1
            log.info(
                "rating rater=%s stars=%s version=%d", session.caller.rater_id, action, queue[index][1].weight_version
            )
        del queue[index]
        return RedirectResponse("/rate", status_code=303)

    # ---- versions --------------------------------------------------------------------

    async def versions_page(request: Request) -> Response:
        web = state_of(request)
        session = current(request)
        if session is None or session.caller is None:
            return to_signin(request)
        rows = standings(web.ledger.rows())
        serving = await web.gateway.serving_versions(session.caller)
        return render(
            request,
            session,
            "versions.html",
            rows=rows,
            chart=win_rate_chart(rows),
            serving=serving,
            canary=latest_canary_decision(config.online_dir),
            has_canary=web.gateway.has_canary,
        )

    async def home(request: Request) -> Response:
        return RedirectResponse("/compare", status_code=303)

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        web = WebState(
            config=config,
            accounts=accounts or Accounts.from_file(config.token_file),
            sessions=SessionStore(secret, config.session_max_age_s),
            gateway=gateway or ServiceGateway(config),
            ledger=Ledger(Path(config.state_dir) / "comparisons.jsonl"),
            file_prompts=load_prompts_file(config.prompts_file),
            rng=random.Random(),
            live_prompts={},
        )
        app.state.web = web
        log.info(
            "feedback web app ready: policy=%s canary=%s feedback=%s",
            config.policy_address,
            config.canary_address or "-",
            config.feedback_address,
        )
        try:
            yield
        finally:
            await web.gateway.close()

    routes = [
        Route("/", home),
        Route("/healthz", healthz),
        Route("/signin", signin_page, methods=["GET"]),
        Route("/signin", signin, methods=["POST"]),
        Route("/signout", signout, methods=["POST"]),
        Route("/compare", compare_page, methods=["GET"]),
        Route("/compare", compare_submit, methods=["POST"]),
        Route("/compare/prompt", compare_prompt, methods=["POST"]),
        Route("/rate", rate_page, methods=["GET"]),
        Route("/rate", rate_submit, methods=["POST"]),
        Route("/versions", versions_page, methods=["GET"]),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.add_middleware(SecurityHeaders)
    return app
