"""What the board says in words: a signal ("requested a demo · 2 h ago · +50"), an age, who a
lead is. Pure functions of what the API returns; no number is computed here, only rounded."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..model import UNKNOWN_GRADE, ScoringModel

#: the traits that say who a lead is when the deployment's who-fields (LEADPULSE_HANDOFF_WHO,
#: who.py) do not name one, first found first (the rest of the traits are shown as they are)
NAME_TRAITS = ("name", "full_name")
ROLE_TRAITS = ("title", "job_title", "seniority")
COMPANY_TRAITS = ("company", "company_name", "organization", "domain", "email_domain")


def ago(ms: int, now: int) -> str:
    """"just now", "5 min ago", "2 h ago", "3 d ago" (a future instant: "just now")."""
    s = max(0, now - ms) // 1000
    if s < 60:
        return "just now"
    if s < 3600:
        return f"{s // 60} min ago"
    if s < 86_400:
        return f"{s // 3600} h ago"
    return f"{s // 86_400} d ago"


def points(value: float) -> str:
    """Signed, whole when it is nearly so: "+50", "−12.5"."""
    rounded = round(value, 1)
    text = f"{abs(rounded):.0f}" if rounded == int(rounded) else f"{abs(rounded):.1f}"
    return ("−" if rounded < 0 else "+") + text


def rule_words(model: ScoringModel, rule_id: str) -> str:
    """The rule's description in the model, else its id in words ("pricing page")."""
    rule = model.rule_index.get(rule_id)
    return (rule.description if rule is not None else "") or rule_id.replace("_", " ")


def first(traits: Mapping[str, Any], names: tuple[str, ...]) -> str | None:
    for name in names:
        value = traits.get(name)
        if value not in (None, ""):
            return str(value)
    return None


def who(traits: Mapping[str, Any], fields: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """Name, role and company as the traits hold them (untrusted text: the page escapes it).

    `fields` is the deployment's who mapping (handoff field -> trait, who.py): the traits Redis
    keeps for handoffs, so the board names a lead as its handoffs do (`title` from `job_title`,
    `company`, else `domain`); the usual trait names are the fallback."""
    fields = fields or {}

    def pick(own: tuple[str, ...], usual: tuple[str, ...]) -> str | None:
        return first(traits, tuple(fields[f] for f in own if f in fields) + usual)

    return {"name": pick(("name",), NAME_TRAITS), "role": pick(("title",), ROLE_TRAITS),
            "company": pick(("company", "domain"), COMPANY_TRAITS)}


def completeness(share: float) -> str:
    """"data 67 %": how much of the model's fit traits is known (lib.lua's completeness)."""
    return f"data {share * 100:.0f} %"


def grade_title(model: ScoringModel, grade: str, share: float) -> str:
    """The hover text of a fit grade: what the letter means, U above all (unknown is not bad fit)."""
    known = f"{share * 100:.0f} % of the fit traits known"
    if grade == UNKNOWN_GRADE:
        return (f"Fit grade U: unknown, not bad — only {known} (under "
                f"{model.fit.unknown_below * 100:.0f} %) and nothing known against the lead")
    return f"Fit grade {grade} (A best, D poorest), {known}"
