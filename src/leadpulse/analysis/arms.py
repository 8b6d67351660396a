"""A threshold A/B test's verdict: conversion per arm, confidence intervals, significance.

Each resolved lead counts in the arm its records name (`arm`: "<experiment>/<arm>", on the
handoffs and outcome records; the report's groups). Per arm: resolved leads, converted, the
rate and its 95 % Wilson interval (scipy's binomtest; honest near 0 and 1 and for small n,
where the normal interval is not). Each arm is compared with the control arm (`control`, else
the first by name):

- the test: Fisher's exact test when a cell of the 2×2 table would expect fewer than
  MIN_EXPECTED leads (the normal approximation does not hold there), else the pooled
  two-proportion z-test; with more than two arms, each comparison's α is divided by the
  number of comparisons (Bonferroni);
- the verdict, by this rule: **different** when p < α; otherwise **too small to conclude**
  when either arm has fewer resolved leads than needed to detect a difference of `min_effect`
  (absolute, in conversion rate) at α with 80 % power (the standard two-proportion formula at
  the control's rate), and **no difference of min_effect or more** when both have that many.
  An arm without a resolved lead is always too small.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from scipy import stats

ALPHA = 0.05
POWER = 0.8
MIN_EXPECTED = 5
#: the smallest difference in conversion rate worth finding, by default (5 percentage points)
MIN_EFFECT = 0.05

RULE = (
    "Per arm: resolved leads, converted, rate and its 95 % Wilson interval. Each arm against the control: "
    "Fisher's exact test when a cell of the 2x2 table expects fewer than {expected} leads, else the pooled "
    "two-proportion z-test; alpha {alpha} (divided by the number of comparisons when there are several). "
    "Verdict: 'different' when p < alpha; else 'too small to conclude' when an arm has fewer resolved leads "
    "than needed to detect a difference of {effect} in conversion rate at alpha with {power} power "
    "(at the control's rate), else 'no difference of {effect} or more'."
)


def wilson(converted: int, n: int) -> tuple[float, float] | None:
    if n == 0:
        return None
    ci = stats.binomtest(converted, n).proportion_ci(confidence_level=1 - ALPHA, method="wilson")
    return float(ci.low), float(ci.high)


def needed_per_arm(p: float, effect: float, alpha: float, power: float = POWER) -> int:
    """Resolved leads per arm to detect p vs p + effect (two-sided, equal arms)."""
    q = p + effect if p + effect <= 1 else p - effect
    bar = (p + q) / 2
    za, zb = stats.norm.ppf(1 - alpha / 2), stats.norm.ppf(power)
    spread = za * math.sqrt(2 * bar * (1 - bar)) + zb * math.sqrt(p * (1 - p) + q * (1 - q))
    return math.ceil((spread / abs(q - p)) ** 2) if q != p else 0


def _test(c1: int, n1: int, c2: int, n2: int) -> tuple[str, float]:
    pooled = (c1 + c2) / (n1 + n2)
    expected = [n * share for n in (n1, n2) for share in (pooled, 1 - pooled)]
    if min(expected) < MIN_EXPECTED:
        return "fisher_exact", float(stats.fisher_exact([[c1, n1 - c1], [c2, n2 - c2]]).pvalue)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    z = (c2 / n2 - c1 / n1) / se
    return "two_proportion_z", float(2 * stats.norm.sf(abs(z)))


def _compare(control: dict[str, Any], arm: dict[str, Any], alpha: float, min_effect: float) -> dict[str, Any]:
    out: dict[str, Any] = {"arm": arm["arm"], "against": control["arm"], "alpha": alpha}
    n1, c1, n2, c2 = control["resolved"], control["converted"], arm["resolved"], arm["converted"]
    if not n1 or not n2:
        return out | {"difference": None, "test": None, "p_value": None, "needed_per_arm": None,
                      "verdict": "too small to conclude", "why": "an arm has no resolved lead"}
    needed = needed_per_arm(c1 / n1, min_effect, alpha)
    difference = c2 / n2 - c1 / n1
    out |= {"difference": difference, "needed_per_arm": needed}
    if c1 + c2 in (0, n1 + n2):  # every lead alike: no test can tell the arms apart
        test, p = "none (all leads alike)", 1.0
    else:
        test, p = _test(c1, n1, c2, n2)
    out |= {"test": test, "p_value": p}
    if p < alpha:
        better = arm["arm"] if difference > 0 else control["arm"]
        return out | {"verdict": "different", "why": f"p = {p:.3g} < {alpha:g}: {better} converts better"}
    if min(n1, n2) < needed:
        return out | {"verdict": "too small to conclude",
                      "why": f"p = {p:.3g}; {needed} resolved leads per arm are needed to detect a difference of "
                             f"{min_effect:.0%} with {POWER:.0%} power (smallest arm: {min(n1, n2)})"}
    return out | {"verdict": f"no difference of {min_effect:.0%} or more",
                  "why": f"p = {p:.3g}, with {min(n1, n2)} resolved leads per arm or more (≥ {needed} needed)"}


def compare(labelled: Iterable[tuple[str, bool]], control: str = "control", min_effect: float = MIN_EFFECT) -> list[dict[str, Any]]:
    """Per experiment, from (arm as "<experiment>/<arm>", converted) of each resolved lead."""
    counts: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for label, converted in labelled:
        experiment, _, arm = label.rpartition("/")
        slot = counts[experiment or "(experiment)"][arm]
        slot[0] += 1
        slot[1] += int(converted)
    out = []
    for experiment, arms in sorted(counts.items()):
        rows = [
            {"arm": arm, "resolved": n, "converted": c, "rate": c / n if n else None, "ci95": wilson(c, n)}
            for arm, (n, c) in sorted(arms.items())
        ]
        base = next((r for r in rows if r["arm"] == control), rows[0])
        others = [r for r in rows if r is not base]
        alpha = ALPHA / max(1, len(others))
        out.append({
            "experiment": experiment, "control": base["arm"], "arms": rows,
            "comparisons": [_compare(base, r, alpha, min_effect) for r in others],
        })
    return out


def rule(min_effect: float = MIN_EFFECT) -> str:
    return RULE.format(expected=MIN_EXPECTED, alpha=ALPHA, effect=f"{min_effect:.0%}", power=f"{POWER:.0%}")
