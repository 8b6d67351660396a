"""The HTTP API, served by Faust's web server: lead reads and erasure, model activation and
history; health, readiness and metrics through probes.py. It knows the store and a readiness
callable, not the worker."""

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

from . import models
from .admin import forget
from .errors import ConfigError, LeadUnreadable, StateError
from .explanation import LeadView
from .handoff import iso
from .metrics import Metrics
from .model import parse_model
from .modelcheck import findings
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
        "completeness": round(why.completeness, 6),
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
        # a recycled lead (docs/scoring.md §10): its score cannot promote it before this
        "cooldown_until": iso(view.cooldown_until) if view.cooldown_until is not None else None,
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

    @app.page("/admin/model")
    class Model(View):
        async def post(self, request: Request) -> Response:
            """Activate the model in the body (YAML) on every worker (models.py): validated like
            check-model and against the retention settings; refused with the error otherwise."""
            if settings.admin_token is None:
                return _error(self, 403, "forbidden", "set LEADPULSE_ADMIN_TOKEN to allow changes over HTTP")
            if not _authorized(request, settings.admin_token):
                return _error(self, 401, "unauthorized", "the admin bearer token is required")
            try:
                text = (await request.read()).decode("utf-8")
                warnings = [str(f) for f in findings(parse_model(text, "body"))]
                done = await models.activate(store.redis, store.keys, text, f"POST /admin/model from {request.remote}",
                                             "POST /admin/model", store.retention.check)
            except UnicodeDecodeError:
                return _error(self, 400, "bad_encoding", "the model must be UTF-8 YAML")
            except models.VersionConflict as exc:
                return _error(self, 409, "version_conflict", str(exc))
            except ConfigError as exc:
                return _error(self, 400, "invalid_model", str(exc))
            except (StateError, RedisError) as exc:
                return _error(self, 503, "redis_unavailable", str(exc))
            return self.json({"activation": done.activation, "version": done.version,
                              "status": "activated" if done.changed else "unchanged", "warnings": warnings})

    @app.page("/models")
    async def versions(web: View, request: Request) -> Response:
        """Every model version ever active: who activated it, when, when it was superseded."""
        if not _authorized(request, settings.api_token):
            return _error(web, 401, "unauthorized", "a valid bearer token is required")
        try:
            log_ = await models.history(store.redis, store.keys)
        except RedisError as exc:
            return _error(web, 503, "redis_unavailable", str(exc))
        return web.json({"models": [a.as_json() for a in log_]})

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
            except LeadUnreadable as exc:  # its stored state is broken: the server's fault, not Redis being away
                log.error("GET /leads/%s: %s", lead_id, exc)
                return _error(self, 500, "unreadable_lead", str(exc))
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
