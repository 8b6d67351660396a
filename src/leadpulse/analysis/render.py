"""report.html: one self-contained page, charts drawn by matplotlib as inline SVG.

Why matplotlib: it renders SVG offline with no JavaScript, no CDN and no browser at build time
(the page must open on a laptop without network), it is the best-kept plotting library in
Python, and its SVG output is plain <path>/<text> elements that any browser draws. Text stays
text (svg.fonttype none), so the page is small and its numbers can be searched and copied.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from importlib.resources import files
from typing import Any

import jinja2
import matplotlib
from matplotlib.figure import Figure

ACCENT = "#2563eb"
MUTED = "#9ca3af"
BAD = "#dc2626"
_RC = {
    "svg.fonttype": "none",  # text as <text>, not glyph paths
    "svg.hashsalt": "leadpulse",  # the same report gives the same bytes
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


def _svg(fig: Figure) -> str:
    buf = io.StringIO()
    with matplotlib.rc_context(_RC):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.index("<svg"):]  # drop the XML prologue and doctype: inline in HTML


def _figure(width: float = 5.2, height: float = 2.6) -> tuple[Figure, Any]:
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(width, height))
        return fig, fig.subplots()


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def decile_chart(rows: Sequence[dict[str, Any]], base: float | None) -> str | None:
    if not rows:
        return None
    with matplotlib.rc_context(_RC):
        fig, ax = _figure()
        x = [str(r["decile"]) for r in rows]
        ax.bar(x, [100 * (r["rate"] or 0) for r in rows], color=ACCENT)
        if base is not None:
            ax.axhline(100 * base, color=MUTED, linestyle="--", linewidth=1, label=f"all resolved leads: {_pct(base)}")
            ax.legend(loc="upper left", frameon=False)
        ax.set_xlabel("score decile (1 = lowest scores, 10 = highest)")
        ax.set_ylabel("converted (%)")
        ax.set_ylim(0, 105)
        return _svg(fig)


def funnel_chart(funnel: Sequence[dict[str, Any]]) -> str | None:
    if not funnel or not funnel[0]["leads"]:
        return None
    with matplotlib.rc_context(_RC):
        fig, ax = _figure(5.2, 2.4)
        labels = [r["step"].upper() if r["step"] in ("mql", "sql", "sal") else r["step"] for r in funnel]
        counts = [r["leads"] for r in funnel]
        ax.barh(labels[::-1], counts[::-1], color=ACCENT)
        for i, r in enumerate(funnel[::-1]):
            note = f"{r['leads']}" + ("" if r["rate_from_previous"] is None else f"  ({_pct(r['rate_from_previous'])} of previous)")
            ax.annotate(note, (r["leads"], i), xytext=(4, 0), textcoords="offset points", va="center")
        ax.set_xlim(0, max(counts) * 1.6)
        ax.set_xlabel("leads")
        return _svg(fig)


def category_chart(rows: Sequence[dict[str, Any]], xlabel: str) -> str | None:
    if not rows:
        return None
    with matplotlib.rc_context(_RC):
        fig, ax = _figure(3.6, 2.4)
        ax.bar([str(r["value"]) for r in rows], [100 * (r["rate"] or 0) for r in rows], color=ACCENT)
        for i, r in enumerate(rows):
            ax.annotate(f"n={r['leads']}", (i, 100 * (r["rate"] or 0)), xytext=(0, 2), textcoords="offset points", ha="center", fontsize=7)
        ax.set_ylim(0, 110)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("converted (%)")
        return _svg(fig)


def reasons_chart(reasons: Sequence[dict[str, Any]]) -> str | None:
    if not reasons:
        return None
    shown = list(reasons[:10])
    with matplotlib.rc_context(_RC):
        fig, ax = _figure(5.2, 0.5 + 0.28 * len(shown))
        ax.barh([_short(r["reason"]) for r in shown][::-1], [r["count"] for r in shown][::-1], color=BAD)
        ax.set_xlabel("rejected SQLs")
        ax.xaxis.get_major_locator().set_params(integer=True)
        return _svg(fig)


def sla_chart(sla: dict[str, Any]) -> str | None:
    if not sla["sqls"]:
        return None
    parts = [("answered in SLA", sla["answered_within_sla"], ACCENT), ("answered late", sla["answered_late"], BAD),
             ("open, in SLA", sla["open_within_sla"], MUTED), ("open past SLA", sla["open_past_sla"], "#f59e0b")]
    with matplotlib.rc_context(_RC):
        fig, ax = _figure(5.2, 1.9)
        ax.barh([p[0] for p in parts][::-1], [p[1] for p in parts][::-1], color=[p[2] for p in parts][::-1])
        ax.set_xlabel(f"SQLs (SLA {sla['sla_hours']:g} h)")
        ax.xaxis.get_major_locator().set_params(integer=True)
        return _svg(fig)


def _short(text: str, limit: int = 48) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _charts(group: dict[str, Any]) -> dict[str, str | None]:
    return {
        "deciles": decile_chart(group["by_score_decile"], group["conversion_rate"]),
        "funnel": funnel_chart(group["funnel"]),
        "grade": category_chart(group["by_fit_grade"], "fit grade at the deciding outcome"),
        "stage": category_chart(group["by_stage_at_handoff"], "stage reached before the outcome"),
        "reasons": reasons_chart(group["acceptance"]["rejection_reasons"]),
        "sla": sla_chart(group["sla"]),
    }


def _hours(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.1f} h" if value < 72 else f"{value / 24:.1f} d"


def experiment_lines(experiment: dict[str, Any]) -> str:
    """An A/B test in words, for the terminal (analysis/arms.py says what each figure is)."""
    lines = [f"experiment {experiment['experiment']} (control {experiment['control']}):"]
    for a in experiment["arms"]:
        ci = a["ci95"]
        span = f" (95 % CI {_pct(ci[0])}–{_pct(ci[1])})" if ci else ""
        lines.append(f"  {a['arm']}: {a['converted']}/{a['resolved']} resolved converted, {_pct(a['rate'])}{span}")
    for c in experiment["comparisons"]:
        test = f", {c['test']}" if c["test"] else ""
        lines.append(f"  {c['arm']} vs {c['against']}: {c['verdict']}{test} - {c['why']}")
    return "\n".join(lines)


def render(report: dict[str, Any]) -> str:
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = _pct
    env.filters["hours"] = _hours
    template = env.from_string(files("leadpulse.analysis").joinpath("report.html.j2").read_text(encoding="utf-8"))
    groups = report["groups"] if len(report["groups"]) == 1 else [report["all"], *report["groups"]]
    sections = [{"group": g, "charts": _charts(g)} for g in groups]
    html = template.render(report=report, sections=sections)
    # An SVG's ids must be unique in the page: matplotlib numbers them per figure.
    return _unique_ids(html)


def _unique_ids(html: str) -> str:
    counter = iter(range(1, 1 << 30))
    out: list[str] = []
    for chunk in re.split(r"(<svg.*?</svg>)", html, flags=re.S):
        if chunk.startswith("<svg"):
            n = next(counter)
            chunk = re.sub(r'id="([^"]+)"', lambda m: f'id="c{n}-{m[1]}"', chunk)
            chunk = re.sub(r'(url\(#|href="#)([^")]+)', lambda m: f"{m[1]}c{n}-{m[2]}", chunk)
        out.append(chunk)
    return "".join(out)
