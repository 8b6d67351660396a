"""The active scoring model and every version ever active, kept in Redis.

A model becomes active by an activation (activate.lua): the YAML is validated first (as
`check-model` does, and against the retention settings), then recorded with who activated it
and when; the version it replaces gets its `superseded_at`. Workers follow the active
activation between batches (handover.Gate), so a new model takes effect on every worker of the
group without a restart, and handoffs and reads name the version that scored them. A rollback
is an activation of an earlier version. Keys: keys.py (`<p>:model{m}:…`).

Ways in: the worker's model file when it changes (or on SIGHUP), `POST /admin/model` (api.py),
`leadpulse activate` / `leadpulse rollback` (cli.py). A version names one content: activating a
version string with other YAML is refused, so "which version scored what" has one answer.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from . import scripts
from .errors import ConfigError, ModelError
from .keys import Keys
from .model import ScoringModel, parse_model

log = logging.getLogger("leadpulse.models")


class VersionConflict(ConfigError):
    """The version string was activated before with other content."""


@dataclass(frozen=True, slots=True)
class Activation:
    number: int
    version: str
    sha256: str
    activated_at: int
    activated_by: str
    superseded_at: int | None
    origin: str

    @classmethod
    def from_json(cls, raw: bytes | str) -> Activation:
        data = orjson.loads(raw)
        return cls(int(data["activation"]), data["version"], data["sha256"], int(data["activated_at"]),
                   data.get("activated_by", ""), data.get("superseded_at"), data.get("origin", ""))

    def as_json(self) -> dict[str, Any]:
        from .handoff import iso

        return {
            "activation": self.number, "version": self.version, "sha256": self.sha256,
            "activated_at": iso(self.activated_at), "activated_by": self.activated_by,
            "superseded_at": iso(self.superseded_at) if self.superseded_at is not None else None,
            "origin": self.origin,
        }


@dataclass(frozen=True, slots=True)
class Outcome:
    activation: int
    version: str
    changed: bool  # False: that version was already the active one


def model_text(path: str | Path | None) -> tuple[str, str]:
    """(YAML, origin) of the model at `path`, or of the shipped default model."""
    if path is None:
        return files("leadpulse").joinpath("default_model.yaml").read_text(encoding="utf-8"), "default_model.yaml"
    try:
        return Path(path).read_text(encoding="utf-8"), str(path)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the model: {exc.strerror}") from None


async def activate(redis: Redis, keys: Keys, text: str, by: str, origin: str = "",
                   check: Callable[[ScoringModel], None] | None = None) -> Outcome:
    """Validate `text` and make it the active model. Raises ModelError (invalid; nothing
    changes), VersionConflict, ConfigError from `check` (e.g. the retention settings)."""
    model = parse_model(text, origin or "model")
    if check is not None:
        check(model)
    record = {"version": model.version, "sha256": hashlib.sha256(text.encode()).hexdigest(),
              "activated_by": by, "superseded_at": None, "origin": origin}
    try:
        number, status = await scripts.Scripts(redis).run(
            scripts.ACTIVATE, [keys.model_log, keys.model_yaml, keys.model_active],
            [model.version, text, orjson.dumps(record).decode(), int(time.time() * 1000)],
        )
    except ResponseError as exc:
        if str(exc).startswith("CONFLICT"):
            raise VersionConflict(str(exc).removeprefix("CONFLICT ")) from None
        raise
    return Outcome(int(number), model.version, (status.decode() if isinstance(status, bytes) else status) == "activated")


async def history(redis: Redis, keys: Keys) -> list[Activation]:
    """Every activation, oldest first."""
    raw = await redis.hgetall(keys.model_log)
    out = [Activation.from_json(v) for k, v in raw.items() if k not in (b"#", "#")]
    return sorted(out, key=lambda a: a.number)


async def active(redis: Redis, keys: Keys) -> Activation | None:
    number = await redis.get(keys.model_active)
    if number is None:
        return None
    raw = await redis.hget(keys.model_log, number)
    return Activation.from_json(raw) if raw is not None else None


async def text_of(redis: Redis, keys: Keys, version: str) -> str | None:
    raw = await redis.hget(keys.model_yaml, version)
    return raw.decode() if isinstance(raw, bytes) else raw


async def load_activation(redis: Redis, keys: Keys, number: int) -> ScoringModel | None:
    """The model of an activation (it was valid when activated, so it parses)."""
    raw = await redis.hget(keys.model_log, str(number))
    if raw is None:
        return None
    version = Activation.from_json(raw).version
    text = await text_of(redis, keys, version)
    return None if text is None else parse_model(text, f"model {version} (activation {number})")


async def active_model(redis: Redis, keys: Keys, fallback: ScoringModel) -> ScoringModel:
    """The active model, or `fallback` (the configured file) when none was ever activated."""
    current = await active(redis, keys)
    if current is None:
        return fallback
    return await load_activation(redis, keys, current.number) or fallback


async def rollback(redis: Redis, keys: Keys, version: str | None, by: str) -> Outcome:
    """Activate `version` again, or (None) the version active before the current one."""
    log = await history(redis, keys)
    current = await active(redis, keys)
    if version is None:
        earlier = [a for a in log if current is not None and a.number < current.number and a.version != current.version]
        if not earlier:
            raise ConfigError("no earlier version to roll back to")
        version = earlier[-1].version
    text = await text_of(redis, keys, version)
    if text is None:
        known = ", ".join(sorted({a.version for a in log})) or "none"
        raise ConfigError(f"version {version!r} was never active (known: {known})")
    return await activate(redis, keys, text, by, f"rollback to {version}")


async def adopt(redis: Redis, keys: Keys, configured: ScoringModel, path: str | Path | None) -> None:
    """At a worker's start: activate the configured model when no model was ever activated, or
    when its version never was (a new version deployed with a restart). A version active before
    is not activated again: a rollback stays rolled back when a worker restarts with the file."""
    text, origin = model_text(path)
    held = await text_of(redis, keys, configured.version)
    if held is not None:
        if held != text:
            log.warning("the model file's version %s was activated before with other content; the active model "
                        "stays as it is: give the changed model a new version", configured.version)
        return
    await activate(redis, keys, text, f"worker start on {socket.gethostname()}", origin)


class ModelFile:
    """The worker's model file, watched: `changed()` is its text when it changed since the last
    look (size or modification time), else None. Polling a stat every few seconds costs nothing
    and works on every filesystem and with editors that replace the file (inotify loses a file
    renamed over); no watcher library is needed for one file."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self._seen = self._stat()

    def _stat(self) -> tuple[int, int] | None:
        if self.path is None:
            return None
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def changed(self) -> bool:
        now = self._stat()
        if now is None or now == self._seen:
            return False
        self._seen = now
        return True
