"""Who a handoff is about: the lead's traits a rep needs (name, email, title, company, …), its
CRM link, and whether it may be contacted at all.

Which fields a handoff carries, and the trait each comes from, is a deployment's PII decision,
not the scoring model's (marketing ops owns the model): it is the worker setting
LEADPULSE_HANDOFF_WHO (settings.py), `{}`/empty for none. Redis keeps the traits the model's fit
rules read plus these (bounds.Retention.who_traits), and the scripts that decide a transition
hand the traits back in the same call (lua/lib.lua `with_traits`), so a handoff names the person
as Redis knew them at that moment without a second read.

Opt-outs: an email `unsubscribe` or `spam_report` event of an identified lead stores a trait
(`unsubscribed`, `spam_reported`: when it happened) beside the others (state.py); an identify may
set or clear them too (`"unsubscribed": false` after a re-subscribe). A handoff lists the ones set
in `do_not_contact`, and the alerts service suppresses sales alerts for it (alerts/routing.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson

from .envtext import json_or_commas

if TYPE_CHECKING:
    from .settings import Settings

#: handoff field -> the trait it comes from (the collector's trait names, docs/integrations.md)
DEFAULT_WHO: dict[str, str] = {
    "name": "name", "email": "email", "title": "job_title", "company": "company", "domain": "company_domain",
    "country": "country", "owner": "owner",
}
#: (source, type) of the events that opt a lead out -> the trait that records it
OPT_OUT_EVENTS: dict[tuple[str, str], str] = {("email", "unsubscribe"): "unsubscribed",
                                              ("email", "spam_report"): "spam_reported"}
OPT_OUT_TRAITS: tuple[str, ...] = tuple(OPT_OUT_EVENTS.values())
#: handoff fields: a name a JSON key and a Slack field can carry
_FIELD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")


def parse_who(value: Any) -> dict[str, str]:
    """LEADPULSE_HANDOFF_WHO: a JSON object {field: trait}, or `field[=trait],…` (a bare field
    comes from the trait of its name); "" or {} for none."""
    if isinstance(value, str):
        value = json_or_commas(value, "{", "object")
        if isinstance(value, list):
            value = {f.strip(): (t.strip() if sep else f.strip()) for f, sep, t in (p.partition("=") for p in value)}
    if not isinstance(value, Mapping):
        raise ValueError("must map handoff fields to trait names")  # noqa: TRY004 - pydantic wants ValueError
    out: dict[str, str] = {}
    for name, trait in value.items():
        if not isinstance(name, str) or not name or not set(name) <= _FIELD_CHARS:
            raise ValueError(f"field {name!r}: lower-case letters, digits and _ only")
        if not isinstance(trait, str) or not trait:
            raise ValueError(f"field {name!r}: the trait must be a non-empty name")
        out[name] = trait
    return out


def crm_link(template: str | None, lead_id: str) -> str | None:
    """The lead's CRM page: `{lead_id}` URL-encoded (ids are untrusted, may hold / ? # …)."""
    # replace(), not format(): a template may hold other braces
    return template.replace("{lead_id}", quote(lead_id, safe="")) if template else None


@dataclass(frozen=True, slots=True)
class Who:
    """The handoff's `who`, `crm_url` and `do_not_contact`, as a deployment configured them."""

    fields: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_WHO))
    crm_url_template: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Who:
        return cls(dict(settings.handoff_who), settings.crm_url_template)

    @property
    def traits(self) -> frozenset[str]:
        """The traits Redis must keep for handoffs, besides those the fit rules read."""
        return who_traits(self.fields)

    def of(self, lead_id: str, traits: Mapping[str, Any] | None) -> dict[str, Any]:
        """The handoff's fields for a lead with these traits (None: none known)."""
        known = traits or {}
        who = {name: known[trait] for name, trait in self.fields.items()
               if known.get(trait) is not None and known.get(trait) != ""}
        return {
            "who": who or None,
            "crm_url": crm_link(self.crm_url_template, lead_id),
            "do_not_contact": [t for t in OPT_OUT_TRAITS if opted_out(known.get(t))],
        }


def who_traits(fields: Mapping[str, str]) -> frozenset[str]:
    return frozenset(fields.values()) | frozenset(OPT_OUT_TRAITS)


def opted_out(value: Any) -> bool:
    """An opt-out trait is set: a time (the worker's), or true; false, "false", "no", 0 clear it."""
    if isinstance(value, str):
        return value.strip().casefold() not in ("", "false", "no", "0", "none", "null")
    return bool(value)


def decode_traits(raw: Any) -> dict[str, Any] | None:
    """The traits JSON a script handed back with a lead's transitions (false: none stored)."""
    if not raw:
        return None
    loaded = orjson.loads(raw)
    return loaded if isinstance(loaded, dict) else None
