"""The score over time as an inline SVG's coordinates (the lead page draws them; no script and
no charting library, so the page works offline and under a strict CSP). Each dot is a score
lib.lua computed (after a logged event, at a move, now); the lines between dots join them
straight, where the real score decays along a curve."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

WIDTH, HEIGHT = 640, 220
PAD_L, PAD_R, PAD_T, PAD_B = 44, 12, 14, 30


@dataclass(frozen=True, slots=True)
class Dot:
    x: float
    y: float
    at: int
    score: float
    kind: str  # event | promoted | demoted | … (a move's kind) | now


@dataclass(frozen=True, slots=True)
class Chart:
    dots: tuple[Dot, ...]
    path: str
    #: (y, label) per stage threshold within the range, and per y-axis tick
    thresholds: tuple[tuple[float, str], ...]
    ticks: tuple[tuple[float, str], ...]
    #: (x, label): the first instant and the last, in UTC
    xlabels: tuple[tuple[float, str], ...] = ()
    width: int = WIDTH
    height: int = HEIGHT


def chart(points: Sequence[tuple[int, float, str]], thresholds: Sequence[tuple[float, str]]) -> Chart | None:
    """`points`: (epoch ms, score, kind) in time order; None when there is nothing to draw."""
    if not points:
        return None
    t0, t1 = points[0][0], points[-1][0]
    span_t = max(t1 - t0, 1)
    scores = [s for _, s, _ in points] + [v for v, _ in thresholds]
    lo, hi = min(0.0, *scores), max(10.0, *scores) * 1.08
    inner_w, inner_h = WIDTH - PAD_L - PAD_R, HEIGHT - PAD_T - PAD_B

    def x(t: int) -> float:
        return round(PAD_L + inner_w * ((t - t0) / span_t if t1 > t0 else 0.5), 1)

    def y(v: float) -> float:
        return round(PAD_T + inner_h * (1 - (v - lo) / (hi - lo)), 1)

    dots = tuple(Dot(x(t), y(s), t, s, kind) for t, s, kind in points)
    path = " ".join(f"{'M' if i == 0 else 'L'}{d.x},{d.y}" for i, d in enumerate(dots))
    step = _step(hi - lo)
    ticks = tuple((y(v), f"{v:g}") for v in _range(lo, hi, step))
    xlabels = ((dots[0].x, _when(t0)), (dots[-1].x, _when(t1))) if t1 > t0 else ((dots[0].x, _when(t0)),)
    return Chart(dots, path, tuple((y(v), label) for v, label in thresholds if lo <= v <= hi), ticks, xlabels)


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%d %b %H:%M UTC")


def _step(span: float) -> float:
    for step in (5, 10, 20, 25, 50, 100, 200, 250, 500, 1000):
        if span / step <= 5:
            return float(step)
    return float(10 ** len(str(int(span))) / 10)


def _range(lo: float, hi: float, step: float) -> list[float]:
    v = (lo // step) * step
    out = []
    while v <= hi:
        if v >= lo:
            out.append(v)
        v += step
    return out
