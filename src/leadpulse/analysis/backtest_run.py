"""What `leadpulse backtest` reads and writes: the history (topics or a file), the baseline (the
active model, read from the registry), the outcomes, an engine Redis of its own; report.json
and report.html. The figures themselves are backtest.py's."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any

import jinja2
import orjson

from .. import models
from ..keys import Keys
from ..model import ScoringModel, load_model
from ..retained import Retained
from ..settings import Settings
from ..redisconn import connect
from . import backtest as figures
from . import outcomes as records_in
from .render import _pct, decile_chart


async def _baseline(settings: Settings, path: Path | None) -> ScoringModel:
    """The model to compare with: a file, or the active one (read only), or the configured one."""
    if path is not None:
        return load_model(path)
    redis = connect(settings.redis_url.get_secret_value(), settings.redis_cluster)
    try:
        return await models.active_model(redis, Keys(cluster=settings.redis_cluster), load_model(settings.model))
    finally:
        await redis.aclose()


async def _topic_history(settings: Settings, model: ScoringModel) -> figures.History:
    reader = Retained(settings, list(settings.input_topics))
    await reader.start()
    try:
        records: list[Any] = []
        async for batch in reader.read(await reader.ends()):
            records.extend(batch)
    finally:
        await reader.stop()
    return figures.from_records(records, model)


async def _run(settings: Settings, candidate: ScoringModel, events_path: Path | None, outcomes_path: Path | None,
               baseline_path: Path | None, positive: Sequence[str], negative: Sequence[str],
               engine_redis: str | None) -> dict[str, Any]:
    from .replay import engine_redis as engine

    baseline = await _baseline(settings, baseline_path)
    history = figures.from_file(events_path) if events_path else await _topic_history(settings, baseline)
    if outcomes_path is not None:
        records = records_in.collect(records_in.jsonl(outcomes_path))
    elif events_path is None:
        records = records_in.collect(await records_in.read_topic(settings, settings.outcomes_topic))
    else:
        records = None
    async with engine(engine_redis) as redis:
        return await figures.backtest(redis, baseline, candidate, history, records, positive, negative)


def render(data: dict[str, Any]) -> str:
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = _pct
    env.filters["num"] = lambda v: "–" if v is None else f"{v:.1f}"
    template = env.from_string(files("leadpulse.analysis").joinpath("backtest.html.j2").read_text(encoding="utf-8"))
    charts = {}
    if data["outcomes"]:
        for name in ("active", "candidate"):
            charts[name] = decile_chart(data["outcomes"][name]["by_score_decile"], data["outcomes"]["base_rate"])
    return template.render(report=data, charts=charts)


def run(settings: Settings, candidate_path: Path, out_dir: Path, *, events_path: Path | None = None,
        outcomes_path: Path | None = None, baseline_path: Path | None = None,
        positive: Sequence[str] = records_in.POSITIVE_DEFAULT, negative: Sequence[str] = records_in.NEGATIVE_DEFAULT,
        engine_redis: str | None = None) -> dict[str, Any]:
    candidate = load_model(candidate_path)
    data = asyncio.run(_run(settings, candidate, events_path, outcomes_path, baseline_path, positive, negative, engine_redis))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    (out_dir / "report.html").write_text(render(data), encoding="utf-8")
    return data
