"""`leadpulse collector`: the Segment Tracking API over HTTP, into the LeadPulse input topics.

Real clients send batches to `/v1/batch` (server libraries) and `/b` (analytics.js), and single
events to `/v1/t`, `/v1/i`, … (analytics.js, as `text/plain` so browsers skip the CORS
preflight). The write key is in the body or is the HTTP Basic user name. Each message is mapped
by segment.py, checked against the event contract, and produced with acks=all; the answer is 200
only once Kafka has acknowledged every event of the request, and 503 when it cannot, so the
client keeps the batch and retries (its messageIds make the retry a duplicate the worker drops).
Messages are decided one by one: one that cannot be produced is skipped with its reason, and the
answer counts them by reason. What a request may cost is bounded by httpinput.py (deadlines,
sizes, open connections) and writekeys.py (what each key may send, and how many events a second).

This module also holds the small configuration layer the collector and `leadpulse alerts` share:
settings classes read from flags, then LEADPULSE_* variables, then a section of the YAML file
named by `--config` / LEADPULSE_CONFIG.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import sys
import time
import typing
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, ClassVar, TypeVar

import click
import orjson
import yaml
from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, UnknownTopicOrPartitionError
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from .. import kafka, logs
from ..errors import ConfigError, LeadPulseError
from . import segment
from .httpinput import ConnectionCap, HTTPProblem, basic_user, decode_body, problem, read_body
from ..settings import Settings, load_settings
from .writekeys import KeyRing, TokenBucket, WriteKey, parse_write_keys, retry_after

log = logging.getLogger("leadpulse.collector")

# --- configuration shared with alerts.py ----------------------------------------------------

CONFIG_ENV = "LEADPULSE_CONFIG"
_file_section: ContextVar[dict[str, Any] | None] = ContextVar("leadpulse_config_section", default=None)
S = TypeVar("S", bound="FileSettings")


def read_config_section(path: Path, section: str) -> dict[str, Any]:
    """One top-level section of the YAML config file (`collector:`, `alerts:`)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of sections (collector:, alerts:)")
    part = data.get(section) or {}
    if not isinstance(part, dict):
        raise ConfigError(f"config file {path}: section {section!r} must be a mapping")
    return part


class _SectionSource(PydanticBaseSettingsSource):
    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return (_file_section.get() or {}).get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return {k: v for k, v in (_file_section.get() or {}).items() if k in self.settings_cls.model_fields}


class FileSettings(BaseSettings):
    """LEADPULSE_* settings that may also come from a section of the config file.
    Precedence: flags, then environment, then the file, then defaults."""

    model_config = SettingsConfigDict(env_prefix="LEADPULSE_", frozen=True, extra="ignore")
    config_section: ClassVar[str] = ""

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _SectionSource(settings_cls)

    def masked(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = "***"
            elif isinstance(value, tuple) and value and isinstance(value[0], SecretStr):
                value = ["***"] * len(value)
            elif isinstance(value, tuple) and value and hasattr(value[0], "masked"):
                value = [v.masked() for v in value]
            elif isinstance(value, Path):
                value = str(value)
            out[name] = value
        return out


def load_file_settings(cls: type[S], config: Path | None = None, **overrides: Any) -> S:
    """`cls` from flags (`overrides`, None = not given), LEADPULSE_* variables and the config file."""
    path = config or (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None)
    section = read_config_section(path, cls.config_section) if path else {}
    unknown = sorted(set(section) - set(cls.model_fields))
    if unknown:
        raise ConfigError(f"config file {path}: unknown key {cls.config_section}.{unknown[0]} "
                          f"(known: {', '.join(cls.model_fields)})")
    token = _file_section.set(section)
    try:
        return cls(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        name = str(err["loc"][0]) if err["loc"] else where
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"invalid setting {where} (LEADPULSE_{name.upper()}): {msg}") from None
    finally:
        _file_section.reset(token)


def _option_type(annotation: Any) -> Any:
    base = annotation
    if typing.get_origin(annotation) is not typing.Literal:  # unwrap `X | None`, not a Literal's values
        base = next((a for a in typing.get_args(annotation) if a is not type(None)), annotation)
    if typing.get_origin(base) is typing.Literal:
        return click.Choice([str(a) for a in typing.get_args(base)])
    return {int: click.INT, float: click.FLOAT, Path: click.Path(path_type=Path)}.get(base, click.STRING)


def settings_flags(fields: Iterable[tuple[type[BaseModel], str]]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Each named setting as a flag (`--write-keys` for LEADPULSE_WRITE_KEYS), as cli.py does."""

    def decorate(fun: Callable[..., Any]) -> Callable[..., Any]:
        for cls, name in reversed(list(fields)):
            info = cls.model_fields[name]
            flag = "--" + name.replace("_", "-")
            help_text = f"{info.description} [env LEADPULSE_{name.upper()}]"
            if info.annotation in (bool, bool | None):
                fun = click.option(f"{flag}/--no-{flag[2:]}", name, default=None, help=help_text)(fun)
            else:
                fun = click.option(flag, name, type=_option_type(info.annotation), default=None, help=help_text)(fun)
        return fun

    return decorate


def split_options(options: dict[str, Any], *classes: type[BaseModel]) -> list[dict[str, Any]]:
    return [{k: options.pop(k) for k in list(options) if k in cls.model_fields} for cls in classes]


def run_command(fun: Callable[[], None]) -> None:
    """Configuration errors are one line on stderr and exit code 2, as for `leadpulse worker`."""
    try:
        fun()
    except ConfigError as exc:
        click.echo(f"leadpulse: {exc}", err=True)
        sys.exit(2)


def configure_logging(level: str) -> None:
    logs.configure(level)


async def serve_until_signalled(start: Callable[[], Awaitable[Any]], stop: Callable[[], Awaitable[Any]],
                                failed: asyncio.Event | None = None) -> None:
    """Start, run until SIGINT/SIGTERM (or until `failed` is set), then stop gracefully."""
    signalled = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, signalled.set)
    await start()
    waits = [asyncio.ensure_future(e.wait()) for e in (signalled, failed) if e is not None]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
        await stop()


# --- collector settings --------------------------------------------------------------------

#: Segment's own limits, which its client libraries already respect
MAX_MESSAGE_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
#: a single-event body is the message plus writeKey and sentAt
ENVELOPE_SLACK = 1024
#: Segment's libraries send batches of 100 (analytics-python, -node) or fewer (analytics.js)
MAX_BATCH_MESSAGES = 2500
#: on 503: Segment's libraries treat a Retry-After as a rate limit, re-queue the batch and wait,
#: without spending one of their (few) counted retries, so a broker outage of minutes loses nothing
RETRY_AFTER = {"Retry-After": "2"}
#: examples of skipped messages in an answer (all are counted, by reason)
SKIPPED_EXAMPLES = 5


class CollectorSettings(FileSettings):
    config_section: ClassVar[str] = "collector"

    collector_host: str = Field("127.0.0.1", description="address the collector listens on (0.0.0.0 for all)")
    collector_port: int = Field(6067, ge=0, le=65535, description="collector HTTP port (0: any free port)")
    write_keys: Annotated[tuple[WriteKey, ...], NoDecode] = Field(
        (), description="accepted Segment write keys, comma-separated (plain keys may send every source), "
                        "or a JSON list of {key, kind, sources, types, rate_limit, rate_burst} (docs/integrations.md)"
    )
    track_events: Annotated[dict[str, str | None], NoDecode] = Field(
        default_factory=dict,
        description='track event name → source/type, JSON (e.g. {"Trial Started": "web/form_submit"}); '
                    "added to the default map, null removes a default",
    )
    collector_max_message_bytes: int = Field(MAX_MESSAGE_BYTES, ge=1024, description="largest message (413 above)")
    collector_max_batch_bytes: int = Field(MAX_BATCH_BYTES, ge=1024, description="largest request body, decompressed too (413 above)")
    collector_produce_timeout: float = Field(10.0, gt=0, description="seconds to wait for Kafka's acknowledgement before 503")
    collector_cors_origins: str = Field("*", description="origins browsers may send from, comma-separated (* for any)")
    collector_max_batch_messages: int = Field(MAX_BATCH_MESSAGES, ge=1, description="most messages in one batch (413 above)")
    collector_header_timeout: float = Field(
        10.0, gt=0, description="seconds from connecting (or the previous answer) to a complete request line and "
                                "headers; also how long an idle connection is kept")
    collector_body_timeout: float = Field(30.0, gt=0, description="seconds to receive a whole request body (408 above)")
    collector_max_connections: int = Field(1024, ge=1, description="open connections at most (503 above)")
    collector_rate_limit: float = Field(
        500.0, ge=0, description="events a second per write key, unless the key sets its own (429 above; 0: no limit)")
    collector_rate_burst: int = Field(5000, ge=1, description="events at once per write key, unless the key sets its own")

    @field_validator("write_keys", mode="before")
    @classmethod
    def _keys(cls, value: Any) -> Any:
        return parse_write_keys(value)

    @field_validator("track_events", mode="before")
    @classmethod
    def _events(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = orjson.loads(value) if value.strip() else {}
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"not a JSON object: {exc}") from None
        if not isinstance(value, Mapping):
            raise ValueError("must map track event names to source/type")  # noqa: TRY004 - pydantic wants ValueError
        out: dict[str, str | None] = {}
        for name, target in value.items():
            parsed = segment.parse_target(target)
            out[str(name)] = None if parsed is None else "/".join(parsed)
        return out

    @property
    def event_map(self) -> dict[str, tuple[str, str]]:
        return segment.track_map(self.track_events)


def load_collector_settings(config: Path | None = None, **overrides: Any) -> CollectorSettings:
    settings = load_file_settings(CollectorSettings, config, **overrides)
    if not settings.write_keys:
        raise ConfigError("no write key: set LEADPULSE_WRITE_KEYS (comma-separated) or collector.write_keys "
                          "in the config file; the collector accepts nothing without one")
    return settings


# --- metrics ---------------------------------------------------------------------------------


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

    def render(self) -> bytes:
        return generate_latest(self.registry)


# --- Kafka -----------------------------------------------------------------------------------


class BrokerUnavailable(LeadPulseError):
    """Kafka did not acknowledge in time: the client gets 503 and retries."""

    retriable = True


class KafkaSink:
    """An acks=all producer that connects in the background, so the collector starts (and
    answers 503) while the broker is down, and recovers without a restart."""

    def __init__(self, settings: Settings, timeout: float) -> None:
        self.settings = settings
        self.timeout = timeout
        self.producer: AIOKafkaProducer | None = None
        self.problem = "not connected to Kafka yet"
        self._task: asyncio.Task[None] | None = None
        self._topics_checked = 0.0

    @property
    def ready(self) -> bool:
        return self.producer is not None

    def start(self) -> None:
        self._task = asyncio.create_task(self._connect(), name="collector-kafka-connect")

    async def _connect(self) -> None:
        delay = 0.2
        while True:
            producer = AIOKafkaProducer(
                **kafka.client_options(self.settings), acks="all", linger_ms=2,
                request_timeout_ms=int(self.timeout * 1000),
            )
            try:
                await kafka.ensure_topics(self.settings, self.settings.input_topics)
                await producer.start()
            except (KafkaError, OSError) as exc:
                with contextlib.suppress(Exception):
                    await producer.stop()
                self.problem = f"Kafka unavailable: {exc}"
                log.warning("cannot reach Kafka at %s (%s); retrying in %.1f s", self.settings.kafka_bootstrap, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self.producer = producer
            self._topics_checked = time.monotonic()
            log.info("producing to %s", ", ".join(self.settings.input_topics))
            return

    async def send(self, items: list[tuple[str, bytes, bytes]]) -> None:
        """Produce (topic, key, value) and wait for every acknowledgement, or raise BrokerUnavailable."""
        if self.producer is None:
            raise BrokerUnavailable(self.problem)
        try:
            async with asyncio.timeout(self.timeout):
                futures = [await self.producer.send(topic, value, key=key) for topic, key, value in items]
                await asyncio.gather(*futures)
        except (TimeoutError, KafkaError) as exc:
            if isinstance(exc, (TimeoutError, UnknownTopicOrPartitionError)):
                self._recheck_topics()
            raise BrokerUnavailable(f"Kafka did not acknowledge: {type(exc).__name__} {exc}".strip()) from exc

    def _recheck_topics(self) -> None:
        # A broker that lost its topics (a scratch cluster restarted) would time out forever.
        if time.monotonic() - self._topics_checked < 5:
            return
        self._topics_checked = time.monotonic()

        async def check() -> None:
            with contextlib.suppress(KafkaError, OSError):
                await kafka.ensure_topics(self.settings, self.settings.input_topics)

        asyncio.get_running_loop().create_task(check())

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.producer is not None:
            await self.producer.stop()  # flushes what is in flight


# --- HTTP ------------------------------------------------------------------------------------

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
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics_view)
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

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        ok = self.sink.ready
        return web.json_response({"ready": ok, "kafka": ok, **({} if ok else {"problem": self.sink.problem})},
                                 status=200 if ok else 503)

    async def metrics_view(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Type-Options": "nosniff"})


# --- command ---------------------------------------------------------------------------------

#: the worker settings the collector uses: where Kafka is, the topics, the model (clock skew)
KAFKA_FIELDS = ("kafka_bootstrap", "kafka_security_protocol", "kafka_sasl_mechanism", "kafka_sasl_username",
                "kafka_sasl_password", "kafka_ssl_cafile", "topic_prefix", "partitions", "replication_factor",
                "max_event_bytes", "model", "log_level")


def run_collector(settings: Settings, config: CollectorSettings) -> None:
    collector = Collector(settings, config)
    asyncio.run(serve_until_signalled(collector.start, collector.stop))


@click.command()
@settings_flags([(Settings, f) for f in KAFKA_FIELDS] + [(CollectorSettings, f) for f in CollectorSettings.model_fields])
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
              help=f"YAML config file; its collector: section is read [env {CONFIG_ENV}]")
@click.option("--print-config", is_flag=True, help="print the settings (secrets masked) and exit")
def collector(config_file: Path | None, print_config: bool, **options: Any) -> None:
    """Accept the Segment Tracking API over HTTP and produce LeadPulse events to Kafka."""

    def run() -> None:
        kafka_options, own = split_options(options, Settings, CollectorSettings)
        settings = load_settings(**kafka_options)
        config = load_collector_settings(config_file, **own)
        if print_config:
            shown = {k: v for k, v in settings.masked().items() if k in KAFKA_FIELDS}
            click.echo(orjson.dumps({**shown, **config.masked()}, option=orjson.OPT_INDENT_2).decode())
            return
        configure_logging(settings.log_level)
        run_collector(settings, config)

    run_command(run)
