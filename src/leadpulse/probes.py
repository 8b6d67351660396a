"""`/healthz`, `/readyz` and `/metrics` for every process, added to its aiohttp router.

The worker adds them to the aiohttp application Faust serves; the collector and alerts to their
own. `/healthz` says the process answers (a liveness probe: restart me if not). `/readyz` is 200
or 503 with the checks that decided it as JSON, from the process's `readiness()`, whose `ready`
key decides; operators and the tests read the rest. `/metrics` is the process's own registry.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

#: generate_latest writes the 0.0.4 text format; say so rather than the library's newer default
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Readiness = Callable[[], Awaitable[dict[str, Any]]]


def _json(data: dict[str, Any], status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: orjson.dumps(d).decode())


def add_probes(router: web.UrlDispatcher, readiness: Readiness, registry: CollectorRegistry,
               metrics_allowed: Callable[[web.Request], bool] | None = None) -> None:
    """`metrics_allowed`: when given, /metrics answers 401 to a request it refuses."""

    async def healthz(request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        checks = await readiness()
        return _json(checks, status=200 if checks["ready"] else 503)

    async def metrics(request: web.Request) -> web.Response:
        if metrics_allowed is not None and not metrics_allowed(request):
            return _json({"code": "unauthorized", "message": "a valid bearer token is required"}, status=401)
        return web.Response(body=generate_latest(registry), headers={
            "Content-Type": METRICS_CONTENT_TYPE, "X-Content-Type-Options": "nosniff"})

    router.add_get("/healthz", healthz)
    router.add_get("/readyz", readyz)
    router.add_get("/metrics", metrics)
