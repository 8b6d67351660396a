"""`leadpulse collector`: the Segment Tracking API over HTTP, into the LeadPulse input topics.

Real clients send batches to `/v1/batch` (server libraries) and `/b` (analytics.js), and single
events to `/v1/t`, `/v1/i`, … (analytics.js, as `text/plain` so browsers skip the CORS
preflight). The write key is in the body or is the HTTP Basic user name. Each message is mapped
by segment.py, checked against the event contract, and produced with acks=all (sink.py); the
answer is 200 only once Kafka has acknowledged every event of the request, and 503 when it
cannot, so the client keeps the batch and retries (its messageIds make the retry a duplicate the worker drops).
Messages are decided one by one: one that cannot be produced is skipped with its reason, and the
answer counts them by reason. What a request may cost is bounded by httpinput.py (deadlines,
sizes, open connections) and writekeys.py (what each key may send, and how many events a second).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge

from ..probes import add_probes
from ..settings import Settings
from . import segment
from .config import CollectorSettings
from .httpinput import ConnectionCap, HTTPProblem, basic_user, decode_body, problem, read_body
from .sink import BrokerUnavailable, KafkaSink
from .writekeys import KeyRing, TokenBucket, WriteKey, retry_after

log = logging.getLogger("leadpulse.collector")

#: a single-event body is the message plus writeKey and sentAt
ENVELOPE_SLACK = 1024
#: on 503: Segment's libraries treat a Retry-After as a rate limit, re-queue the batch and wait,
#: without spending one of their (few) counted retries, so a broker outage of minutes loses nothing
RETRY_AFTER = {"Retry-After": "2"}
#: examples of skipped messages in an answer (all are counted, by reason)
SKIPPED_EXAMPLES = 5


class CollectorMetrics:
    """Own registry, so several collectors (tests) can run side by side."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.requests = Counter("leadpulse_collector_requests", "HTTP requests, by route and status code.",
                                ["path", "code"], registry=r)
        self.events = Counter("leadpulse_collector_events", "Events produced and acknowledged by Kafka.",
                              ["source", "type"], registry=r)
        self.skipped = Counter("leadpulse_collector_skipped", "Segment messages not turned into events, by reason.",
                               ["reason"], registry=r)
        self.rate_limited = Counter("leadpulse_collector_rate_limited", "Events refused with 429, by write key name.",
                                    ["key"], registry=r)
        self.connections = Gauge("leadpulse_collector_connections", "Open HTTP connections.", registry=r)
        self.connections_refused = Counter("leadpulse_collector_connections_refused",
                                           "Connections answered 503 at once: the connection cap was reached.",
                                           registry=r)


#: route → the Segment call type of a single-event route (None: a batch)
ROUTES: dict[str, str | None] = {
    # analytics.js batching posts to https://<apiHost>/b, and apiHost is "<host>/v1" by default
    "/v1/batch": None, "/b": None, "/v1/b": None, "/v1/import": None,
    "/v1/t": "track", "/v1/track": "track", "/v1/p": "page", "/v1/page": "page",
    "/v1/i": "identify", "/v1/identify": "identify", "/v1/g": "group", "/v1/group": "group",
    "/v1/a": "alias", "/v1/alias": "alias", "/v1/s": "screen", "/v1/screen": "screen",
}


class Collector:
    """The collector's HTTP server and its Kafka producer."""

    def __init__(self, settings: Settings, config: CollectorSettings, metrics: CollectorMetrics | None = None) -> None:
        self.settings = settings
        self.config = config
        self.metrics = metrics or CollectorMetrics()
        from ..model import load_model  # the worker's time bounds: refuse what it would refuse

        model = load_model(settings.model)
        self.skew_ms, self.max_age_ms = model.clock_skew, model.max_event_age
        self.keys = KeyRing(config.write_keys)
        self.buckets: dict[str, TokenBucket] = {}
        for key in config.write_keys:
            rate = config.collector_rate_limit if key.rate_limit is None else key.rate_limit
            if rate > 0:
                self.buckets[key.name] = TokenBucket(rate, key.rate_burst or config.collector_rate_burst)
        self.event_map = config.event_map
        self.sink = KafkaSink(settings, config.collector_produce_timeout)
        origins = {o.strip() for o in config.collector_cors_origins.split(",") if o.strip()}
        self._any_origin = "*" in origins
        self._origins = origins
        self.app = self._app()
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self.cap: ConnectionCap | None = None
        self.port = 0

    # -- lifecycle --

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=self.config.collector_max_batch_bytes)
        for path in ROUTES:
            app.router.add_post(path, self.ingest)
            app.router.add_route("OPTIONS", path, self.preflight)
        add_probes(app.router, self.readiness, self.metrics.registry)
        return app

    async def start(self) -> None:
        self.sink.start()
        # auto_decompress=False: we inflate ourselves, with a limit, instead of aiohttp inflating blindly.
        # keepalive_timeout: the header deadline (httpinput.py says how).
        self._runner = web.AppRunner(self.app, auto_decompress=False, access_log=None,
                                     keepalive_timeout=self.config.collector_header_timeout)
        await self._runner.setup()
        assert self._runner.server is not None
        # Our own listener instead of web.TCPSite: the connection cap is its protocol factory.
        self.cap = ConnectionCap(self._runner.server, self.config.collector_max_connections,
                                 self.metrics.connections_refused.inc)
        self.metrics.connections.set_function(lambda: self.cap.open if self.cap else 0)
        self._listener = await asyncio.get_running_loop().create_server(
            self.cap, self.config.collector_host, self.config.collector_port, reuse_address=True)
        self.port = int(self._listener.sockets[0].getsockname()[1])
        log.info("collector listening on http://%s:%d", self.config.collector_host, self.port)

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()  # no new connections
        if self._runner is not None:
            await self._runner.cleanup()  # finishes requests in flight first
        await self.sink.stop()

    @property
    def url(self) -> str:
        return f"http://{self.config.collector_host}:{self.port}"

    # -- middleware: CORS, JSON errors, request metrics --

    def _cors(self, request: web.Request) -> dict[str, str]:
        origin = request.headers.get("Origin")
        if not origin or not origin.isascii() or not (self._any_origin or origin in self._origins):
            return {}
        # Echo the origin rather than "*": that also works for a page that sends credentials.
        # analytics.js reads X-RateLimit-Reset on a 429, which a browser shows it only if exposed.
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin",
                "Access-Control-Expose-Headers": "Retry-After, X-RateLimit-Reset"}

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        route = request.match_info.route.resource
        path = route.canonical if route is not None else "other"
        try:
            response = await handler(request)
        except HTTPProblem as exc:
            response = problem(exc.status, exc.code, exc.message, exc.headers)
            if exc.close:
                response.force_close()
        except web.HTTPException as exc:
            response = problem(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
        except UnicodeError as exc:
            # bytes a client sent that are not text (a \xff in a header arrives as a lone surrogate)
            log.info("%s %s: undecodable input (%s)", request.method, request.rel_url.raw_path, type(exc).__name__)
            response = problem(400, "bad_encoding", "the request holds bytes that are not text")
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            response = problem(500, "internal", "internal error")
        response.headers.update(self._cors(request))
        if request.method != "OPTIONS":
            self.metrics.requests.labels(path, str(response.status)).inc()
        return response

    async def preflight(self, request: web.Request) -> web.Response:
        headers = self._cors(request)
        if headers:
            headers.update({
                "Access-Control-Allow-Methods": "POST, OPTIONS",
                "Access-Control-Allow-Headers": request.headers.get(
                    "Access-Control-Request-Headers", "Content-Type, Authorization, Content-Encoding"),
                "Access-Control-Max-Age": "86400",
            })
        return web.Response(status=204, headers=headers)

    # -- the Tracking API --

    async def _read(self, request: web.Request, single: str | None) -> tuple[WriteKey, dict[str, Any]]:
        """The request's write key and its JSON object, within the size and time limits."""
        limit = self.config.collector_max_batch_bytes if single is None else (
            self.config.collector_max_message_bytes + ENVELOPE_SLACK)
        header_key = basic_user(request.headers.get("Authorization"))
        key = self.keys.find(header_key) if header_key is not None else None
        if header_key is not None and key is None:  # refuse before reading the body
            raise HTTPProblem(401, "unauthorized", "unknown write key")
        raw = await read_body(request, limit, self.config.collector_body_timeout)
        body = decode_body(raw, request.headers.get("Content-Encoding", ""), limit)
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise HTTPProblem(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise HTTPProblem(400, "invalid_body", "the body must be a JSON object")
        if key is None:
            key = self.keys.find(data.get("writeKey"))
            if key is None:
                raise HTTPProblem(401, "unauthorized", "unknown or missing write key (body writeKey or Basic user name)")
        return key, data

    def _messages(self, data: dict[str, Any], single: str | None) -> list[Any]:
        if single is not None:
            message = {k: v for k, v in data.items() if k != "writeKey"}
            message["type"] = single  # the route says what the call is
            return [message]
        messages = data.get("batch")
        if not isinstance(messages, list):
            raise HTTPProblem(400, "invalid_body", "a batch request needs a batch array")
        cap = self.config.collector_max_batch_messages
        if len(messages) > cap:  # a 568-byte gzip body can hold 170,000 empty messages
            raise HTTPProblem(413, "too_many_messages", f"the batch has {len(messages)} messages; the limit is {cap}")
        shared = {k: data[k] for k in ("context", "integrations") if isinstance(data.get(k), dict)}
        if shared:  # batch-level context applies to messages that have none
            messages = [{**shared, **m} if isinstance(m, dict) else m for m in messages]
        return messages

    def _throttle(self, key: WriteKey, events: int) -> None:
        """The key's rate limit counts events, not requests: one 300 KB batch is 2,400 leads."""
        bucket = self.buckets.get(key.name)
        wait = bucket.take(max(events, 1)) if bucket is not None else 0.0
        if wait > 0:
            self.metrics.rate_limited.labels(key.name).inc(events)
            # Segment's libraries keep the batch and retry a 429 after Retry-After (analytics-python)
            # or X-RateLimit-Reset (analytics.js; seconds from now): nothing is lost.
            seconds = retry_after(wait)
            raise HTTPProblem(429, "rate_limited", f"write key {key.name} is over its rate limit; retry later",
                              {"Retry-After": seconds, "X-RateLimit-Reset": seconds})

    def _decide(self, message: Any, ctx: segment.Context, key: WriteKey) -> segment.Mapped:
        """One message → an event to produce, or Unmappable with the reason it is skipped."""
        try:
            size = len(orjson.dumps(message))
        except orjson.JSONEncodeError:  # nested past orjson's limit (254 levels)
            raise segment.Unmappable("too_deep", "the message is nested too deeply") from None
        if size > self.config.collector_max_message_bytes:
            raise segment.Unmappable("too_large", f"the message is {size} bytes; the limit is "
                                                  f"{self.config.collector_max_message_bytes}")
        mapped = segment.map_message(message, ctx)
        if not key.allows(mapped.source, mapped.event["type"]):
            raise segment.Unmappable("not_allowed", f"write key {key.name} ({key.kind}) may not send "
                                                    f"{mapped.source}/{mapped.event['type']}")
        return mapped

    async def ingest(self, request: web.Request) -> web.Response:
        single = ROUTES[request.match_info.route.resource.canonical]  # type: ignore[union-attr]
        key, data = await self._read(request, single)
        received = int(time.time() * 1000)
        messages = self._messages(data, single)
        self._throttle(key, len(messages))
        sent_at = None
        with contextlib.suppress(segment.Unmappable):
            sent_at = segment.parse_time(data.get("sentAt"), "sentAt") if single is None else None
        ctx = segment.Context(received, self.skew_ms, self.event_map, sent_at, self.settings.max_event_bytes,
                              self.max_age_ms)
        mapped: list[segment.Mapped] = []
        reasons: collections.Counter[str] = collections.Counter()
        examples: list[dict[str, Any]] = []
        for i, message in enumerate(messages):
            try:
                mapped.append(self._decide(message, ctx, key))
            except segment.Unmappable as exc:
                if single is not None and not exc.ignored:
                    self.metrics.skipped.labels(exc.reason).inc()
                    status = {"too_large": 413, "not_allowed": 403}.get(exc.reason, 400)
                    raise HTTPProblem(status, exc.reason, str(exc)) from None
                reasons[exc.reason] += 1
                if len(examples) < SKIPPED_EXAMPLES:
                    mid = message.get("messageId") if isinstance(message, dict) else None
                    examples.append({"index": i, "messageId": mid if isinstance(mid, str) else None,
                                     "reason": exc.reason, "ignored": exc.ignored, "message": str(exc)})
        for reason, n in reasons.items():
            self.metrics.skipped.labels(reason).inc(n)
        if mapped:
            prefix = self.settings.topic_prefix
            try:
                await self.sink.send([(prefix + m.source, m.key, m.value) for m in mapped])
            except BrokerUnavailable as exc:
                raise HTTPProblem(503, "unavailable", f"{exc}; retry later", RETRY_AFTER) from None
            for m in mapped:
                self.metrics.events.labels(m.source, m.event["type"]).inc()
        skipped = {"count": sum(reasons.values()), "reasons": dict(reasons), "examples": examples}
        return web.json_response({"success": True, "accepted": len(mapped), "skipped": skipped},
                                 dumps=lambda d: orjson.dumps(d).decode())

    async def readiness(self) -> dict[str, Any]:
        ok = self.sink.ready
        return {"ready": ok, "kafka": ok, **({} if ok else {"problem": self.sink.problem})}
