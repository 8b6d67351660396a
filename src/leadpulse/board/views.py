"""GET /board and its pages on the worker's web server (Faust's aiohttp application, beside the
JSON API): hot leads, the live feed (server-sent events from feed.py), a lead's page, sign-in.

Every number comes from the reads the API serves (LeadStore.top / .view: lib.lua's
explanation) and from the activity log (activity.py); this module only arranges and words them.
Untrusted text (lead ids, traits, event ids) reaches the page escaped: Jinja2 autoescapes the
server-rendered pages, and board.js writes data with textContent only. A strict
Content-Security-Policy (scripts and styles from this server only, no inline script) backs that up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from importlib.resources import files
from typing import Any
from urllib.parse import quote

import jinja2
import orjson
from aiohttp import web
from aiohttp_sse import sse_response
from redis.exceptions import RedisClusterException, RedisError

from .. import activity
from ..api import LEAD_ID, MAX_TOP, lead_json
from ..errors import LeadUnreadable, StateError
from ..explanation import LeadView
from ..handoff import iso
from ..settings import Settings
from ..state import LeadStore
from . import words
from .chart import chart
from .feed import HandoffFeed
from .session import Sessions

log = logging.getLogger("leadpulse.board")

HOT = 20
#: how long a page waits for the feed to read the handoff topic's tail (then it shows what there is)
FEED_WAIT_S = 10.0
#: seconds between the stream's keep-alive comments (proxies close idle connections)
PING_S = 15.0
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "X-Frame-Options": "DENY", "Cache-Control": "no-store"}
_FOLDER = files("leadpulse.board")
_pages = jinja2.Environment(loader=jinja2.PackageLoader("leadpulse.board", "templates"), autoescape=True,
                            undefined=jinja2.StrictUndefined)
_pages.filters["lead_url"] = lambda lead_id: "/board/leads/" + quote(lead_id, safe="")
_pages.filters["iso"] = iso


def _now() -> int:
    return int(time.time() * 1000)


def _page(name: str, status: int = 200, **context: Any) -> web.Response:
    context.setdefault("signed", False)
    return web.Response(text=_pages.get_template(name).render(**context), status=status,
                        content_type="text/html", headers=HEADERS)


class Board:
    def __init__(self, store: LeadStore, settings: Settings) -> None:
        self.store = store
        self.sessions = Sessions(settings.api_token)
        self.feed = HandoffFeed(settings)
        #: the traits that name a lead: those its handoffs carry (Redis keeps them, who.py)
        self.who_fields = dict(settings.handoff_who)

    def routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/board", self.board)
        router.add_get("/board/signin", self.signin_form)
        router.add_post("/board/signin", self.signin)
        router.add_post("/board/signout", self.signout)
        router.add_get("/board/hot.json", self.hot)
        router.add_get("/board/feed.json", self.recent)
        router.add_get("/board/events", self.events)
        router.add_get("/board/static/{name}", self.static)
        router.add_get("/board/leads/{lead_id:.+}", self.lead)

    # --- pages -------------------------------------------------------------------------------

    async def board(self, request: web.Request) -> web.StreamResponse:
        if not self.sessions.signed_in(request):
            raise web.HTTPSeeOther("/board/signin", headers=HEADERS)
        self.feed.start()
        return _page("board.html", signed=not self.sessions.open, model=self.store.model.version)

    async def signin_form(self, request: web.Request) -> web.StreamResponse:
        if self.sessions.open or self.sessions.signed_in(request):
            raise web.HTTPSeeOther("/board", headers=HEADERS)
        return _page("signin.html", error=None)

    async def signin(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        presented = form.get("token")
        if self.sessions.open:
            raise web.HTTPSeeOther("/board", headers=HEADERS)
        if not isinstance(presented, str) or not self.sessions.token_matches(presented):
            log.info("board sign-in refused from %s", request.remote)
            return _page("signin.html", status=401, error="That token is not the one this LeadPulse expects.")
        response = web.HTTPSeeOther("/board", headers=HEADERS)
        self.sessions.sign_in(request, response)
        return response

    async def signout(self, request: web.Request) -> web.StreamResponse:
        response = web.HTTPSeeOther("/board/signin" if not self.sessions.open else "/board", headers=HEADERS)
        self.sessions.sign_out(request, response)
        return response

    async def lead(self, request: web.Request) -> web.StreamResponse:
        if not self.sessions.signed_in(request):
            raise web.HTTPSeeOther("/board/signin", headers=HEADERS)
        lead_id = request.match_info["lead_id"]
        if not LEAD_ID.fullmatch(lead_id):
            return _page("missing.html", status=400, lead_id=lead_id[:256], why="not a lead id")
        now = _now()
        try:
            view = await self.store.view(lead_id, now)
            log_ = await activity.history(self.store, lead_id, now) if view is not None else []
            traits = await self._traits([lead_id]) if view is not None else [{}]
        except LeadUnreadable as exc:  # the hot list skips such a lead (LeadStore.read); its page says why
            return _page("missing.html", status=500, lead_id=lead_id, why=f"its stored state cannot be read ({exc})",
                         signed=not self.sessions.open)
        except StateError as exc:
            return _page("missing.html", status=503, lead_id=lead_id, why=f"Redis is not answering ({exc})",
                         signed=not self.sessions.open)
        if view is None:
            return _page("missing.html", status=404, lead_id=lead_id, why="no such lead (or it was erased)",
                         signed=not self.sessions.open)
        return _page("lead.html", **self._lead_context(view, log_, traits[0], now))

    def _lead_context(self, view: LeadView, log_: list[activity.Entry], traits: dict[str, Any], now: int) -> dict[str, Any]:
        model = self.store.model
        # an event's score is the lead's at its clock after it; a move's, at the move
        points = sorted(((e.clock, e.score, "event") if isinstance(e, activity.Scored) else (e.at, e.score, e.kind)
                         for e in log_), key=lambda p: p[0])
        points.append((now, view.explanation.score, "now"))
        thresholds = [(s.min_score, s.name) for s in model.stages if s.min_score > 0]
        why = view.explanation
        fit = [c for c in why.contributions if c.last_occurred_at is None]
        behaviour = [c for c in why.contributions if c.last_occurred_at is not None]
        return {
            "lead": lead_json(view), "who": words.who(traits, self.who_fields),
            "grade_title": words.grade_title(model, why.fit_grade, why.completeness), "traits": sorted(traits.items(), key=lambda kv: kv[0]),
            "chart": chart(points, thresholds), "log": list(reversed(log_)), "now": now,
            "signals": [self._signal(c.rule_id, c.points, c.last_occurred_at, now) for c in behaviour],
            "fit": [self._signal(c.rule_id, c.points, None, now) for c in fit],
            "words": words, "model": model, "kept": self.store.retention.activity_max,
            "signed": not self.sessions.open, "last_ago": words.ago(view.last_event_at, now),
        }

    def _signal(self, rule_id: str, points: float, at: int | None, now: int) -> dict[str, Any]:
        return {"rule_id": rule_id, "words": words.rule_words(self.store.model, rule_id),
                "ago": words.ago(at, now) if at is not None else None, "points": words.points(points)}

    # --- JSON and the stream (a session cookie or the API's bearer token) ---------------------

    def _check(self, request: web.Request) -> None:
        if not self.sessions.allowed(request):
            raise web.HTTPUnauthorized(text='{"code": "unauthorized", "message": "sign in at /board/signin"}',
                                       content_type="application/json", headers=HEADERS)

    async def _traits(self, leads: list[str]) -> list[dict[str, Any]]:
        pipe = self.store.redis.pipeline(transaction=False)
        for lead in leads:
            pipe.get(self.store.keys.lead(lead).traits)
        try:
            raws = await pipe.execute()
        except (RedisError, RedisClusterException) as exc:
            raise StateError(f"redis: {exc}") from exc
        out = []
        for raw in raws:
            try:
                value = orjson.loads(raw) if raw else {}
            except orjson.JSONDecodeError:
                value = {}
            out.append(value if isinstance(value, dict) else {})
        return out

    async def hot(self, request: web.Request) -> web.StreamResponse:
        self._check(request)
        raw = request.query.get("limit", str(HOT))
        limit = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 4 else HOT
        now = _now()
        try:
            views = await self.store.top(max(1, min(limit, MAX_TOP)), now)
            traits = await self._traits([v.lead_id for v in views])
        except StateError as exc:
            return web.json_response({"code": "redis_unavailable", "message": str(exc)}, status=503, headers=HEADERS)
        leads = []
        for view, t in zip(views, traits):
            why = view.explanation
            behaviour = [c for c in why.contributions if c.last_occurred_at is not None and c.points > 0][:3]
            leads.append({
                "lead_id": view.lead_id, "url": "/board/leads/" + quote(view.lead_id, safe=""),
                "score": round(why.score, 1), "stage": view.stage, "fit_grade": why.fit_grade,
                "completeness": round(why.completeness, 6), "data": words.completeness(why.completeness),
                "grade_title": words.grade_title(self.store.model, why.fit_grade, why.completeness),
                "who": words.who(t, self.who_fields), "last_event": words.ago(view.last_event_at, now),
                "signals": [self._signal(c.rule_id, c.points, c.last_occurred_at, now) for c in behaviour],
            })
        return web.json_response({"leads": leads, "as_of": iso(now)}, headers=HEADERS, dumps=_dumps)

    async def recent(self, request: web.Request) -> web.StreamResponse:
        self._check(request)
        self.feed.start()
        await self.feed.caught_up(FEED_WAIT_S)
        return web.json_response({"handoffs": list(self.feed.recent)}, headers=HEADERS, dumps=_dumps)

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: `handoff` with each record as published; the browser reconnects
        by itself (EventSource) and reloads what it shows."""
        self._check(request)
        self.feed.start()
        queue = self.feed.subscribe()
        try:
            async with sse_response(request, headers=HEADERS, ping_interval=PING_S) as stream:
                # `ready` once the feed has read the topic's tail: the page then loads feed.json
                # and anything later comes down this stream
                await self.feed.caught_up(FEED_WAIT_S)
                await stream.send("ready", event="ready")
                # the ping fails within PING_S of the browser leaving: stop then, not at the next record
                gone = asyncio.ensure_future(stream.wait())
                try:
                    while True:
                        record = asyncio.ensure_future(queue.get())
                        await asyncio.wait({record, gone}, return_when=asyncio.FIRST_COMPLETED)
                        if not record.done() or record.result() is None:
                            record.cancel()
                            break
                        await stream.send(_dumps(record.result()), event="handoff")
                except ConnectionResetError:
                    pass
                finally:
                    gone.cancel()
                return stream
        finally:
            self.feed.unsubscribe(queue)

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in _STATIC:
            raise web.HTTPNotFound()
        body = _FOLDER.joinpath("static", name).read_bytes()
        return web.Response(body=body, content_type=_STATIC[name],
                            headers={**HEADERS, "Cache-Control": "public, max-age=300"})


_STATIC = {"board.css": "text/css", "board.js": "text/javascript", "icon.svg": "image/svg+xml"}


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def register(app: web.Application, store: LeadStore, settings: Settings) -> Board:
    board = Board(store, settings)
    board.routes(app.router)

    async def stop_feed(_: web.Application) -> None:
        await board.feed.stop()

    app.on_shutdown.append(stop_feed)
    return board
