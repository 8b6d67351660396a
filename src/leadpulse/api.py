"""The HTTP API, served by Faust's web server: lead reads and erasure; health, readiness and
metrics through probes.py. It knows the store and a readiness callable, not the worker."""

from __future__ import annotations

import hmac
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import faust
from aiohttp import web as aiohttp_web
from faust.web import Request, Response, View

from redis.exceptions import RedisError

from .admin import forget
from .errors import StateError
from .explanation import LeadView
from .handoff import iso
from .metrics import Metrics
from .probes import Readiness, add_probes
from .settings import Settings
from .state import LeadStore

LEAD_ID = re.compile(r"[^\x00-\x1f\x7f]{1,256}")
MAX_TOP = 500
log = logging.getLogger("leadpulse.api")


@aiohttp_web.middleware
async def client_errors(
    request: aiohttp_web.Request, handler: Callable[[aiohttp_web.Request], Awaitable[aiohttp_web.StreamResponse]],
) -> aiohttp_web.StreamResponse:
    """Bytes a client sent that do not decode (a \\xff in a header arrives as a lone surrogate,
    a bad percent-escape) are the client's mistake: 400 and a one-line log, not a 500 with a
    traceback. Installed on Faust's aiohttp application (worker.create_app)."""
    try:
        return await handler(request)
    except UnicodeError as exc:
        log.info("%s %s: undecodable input (%s)", request.method, request.rel_url.raw_path, type(exc).__name__)
        return aiohttp_web.json_response({"code": "bad_encoding", "message": "the request holds bytes that are not text"},
                                         status=400)


def lead_json(view: LeadView) -> dict[str, Any]:
    why = view.explanation
    return {
        "lead_id": view.lead_id,
        "score": round(why.score, 6),
        "stage": view.stage,
        "fit_grade": why.fit_grade,
        "fit_score": why.fit_score,
        "breakdown": {k: round(v, 6) for k, v in why.breakdown.items()},
        "contributions": [
            {
                "rule_id": c.rule_id,
                "category": c.category,
                "points": round(c.points, 6),
                "last_occurred_at": iso(c.last_occurred_at) if c.last_occurred_at is not None else None,
            }
            for c in why.contributions
        ],
        "last_event_at": iso(view.last_event_at),
        "as_of": iso(view.at),
        "model_version": view.model_version,
    }


def _error(web: View, status: int, code: str, message: str) -> Response:
    return web.json({"code": code, "message": message}, status=status)


def _authorized(request: Request, token: Any) -> bool:
    if token is None:
        return True
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    # surrogateescape: a non-UTF-8 byte (held as a lone surrogate) is a wrong token, not an error
    return scheme.lower() == "bearer" and hmac.compare_digest(
        presented.encode("utf-8", "surrogateescape"), token.get_secret_value().encode())


def register(app: faust.App, store: LeadStore, settings: Settings, metrics: Metrics, readiness: Readiness) -> None:
    # Probes are plain aiohttp routes on the application Faust's aiohttp driver serves, as in the
    # other processes.
    router = app.web.web_app.router  # type: ignore[attr-defined]
    metrics_allowed = (lambda request: _authorized(request, settings.api_token)) if settings.protect_metrics else None
    add_probes(router, readiness, metrics.registry, metrics_allowed)

    def now_ms() -> int:
        return int(time.time() * 1000)

    @app.page("/leads/top")
    async def top(web: View, request: Request) -> Response:
        if not _authorized(request, settings.api_token):
            return _error(web, 401, "unauthorized", "a valid bearer token is required")
        raw = request.query.get("limit", "20")
        # ASCII digits only ("²".isdigit() is true, int("²") fails) and few (int() refuses 4,300+)
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 6) or not 1 <= int(raw) <= MAX_TOP:
            return _error(web, 400, "bad_limit", f"limit must be an integer from 1 to {MAX_TOP}")
        try:
            views = await store.top(int(raw), now_ms())
        except StateError as exc:
            return _error(web, 503, "redis_unavailable", str(exc))
        return web.json({"leads": [lead_json(v) for v in views]})

    # Any characters: lead ids may hold braces and slashes (percent-encoded by the client).
    @app.page("/leads/{lead_id:.+}")
    class Lead(View):
        async def get(self, request: Request, lead_id: str) -> Response:
            if not _authorized(request, settings.api_token):
                return _error(self, 401, "unauthorized", "a valid bearer token is required")
            if not LEAD_ID.fullmatch(lead_id):
                return _error(self, 400, "bad_lead_id", "lead_id must be 1–256 characters without control characters")
            try:
                view = await store.view(lead_id, now_ms())
            except StateError as exc:
                return _error(self, 503, "redis_unavailable", str(exc))
            if view is None:
                return _error(self, 404, "unknown_lead", f"no lead {lead_id!r}")
            return self.json(lead_json(view))

        async def delete(self, request: Request, lead_id: str) -> Response:
            """Erase a lead (right to erasure): its data, its visitors' links, and a tombstone that
            refuses its events (admin.forget). Needs the admin token; refused when none is set."""
            if settings.admin_token is None:
                return _error(self, 403, "forbidden", "set LEADPULSE_ADMIN_TOKEN to allow changes over HTTP")
            if not _authorized(request, settings.admin_token):
                return _error(self, 401, "unauthorized", "the admin bearer token is required")
            if not LEAD_ID.fullmatch(lead_id):
                return _error(self, 400, "bad_lead_id", "lead_id must be 1–256 characters without control characters")
            try:
                existed = await forget(store, lead_id)
            except (StateError, RedisError) as exc:
                return _error(self, 503, "redis_unavailable", str(exc))
            if not existed:
                return _error(self, 404, "unknown_lead",
                              f"no lead {lead_id!r}; its tombstone is written all the same, so events still on "
                              f"their way cannot create it")
            return self.json({"deleted": lead_id})
