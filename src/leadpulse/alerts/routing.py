"""Where a handoff goes: destinations with their filters, suppression, SLA reminders (pure).

The alerts YAML (`alerts.destinations`, `alerts.owners`; docs/integrations.md, Routing) lists
destinations, each a Slack incoming webhook or a signed JSON webhook with filters: kinds,
stages, fit grades, and rules on the handoff's `who` fields (the lead's traits the worker put
there, e.g. country → an EMEA channel). A handoff goes to every destination whose filters all
hold. Validated like the scoring model: a wrong key is named by its path.

Suppression (a destination's `suppress`: every reason by default; a marketing channel keeps
only the opt-outs): no alert about a customer (kind `closed` or stage `customer`), a lead
inside its cool-down after a lost or rejected deal (`cooldown_until` after its `crossed_at`), or
a lead that unsubscribed or reported spam (the worker's `do_not_contact`, who.py). A suppressed handoff is counted and logged by the service,
never silently dropped.

SLA reminders (kind `sla_overdue`) go to the owner's destination when `alerts.owners` maps the
handoff's owner (the `who` field `owner_field`) to one, instead of the Slack channels whose
filters take them (webhooks that take them still do); else to those channels (the sales one).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

KINDS = ("promoted", "demoted", "advanced", "closed", "recycled", "sla_overdue")
Kind = Literal["promoted", "demoted", "advanced", "closed", "recycled", "sla_overdue"]
#: moves sales itself made in the CRM (lifecycle)
LIFECYCLE_KINDS = ("advanced", "closed", "recycled")
Grade = Literal["A", "B", "C", "D", "U"]
#: kinds a destination takes when it names none: new sales-ready leads, and reminders about them
DEFAULT_KINDS: tuple[Kind, ...] = ("promoted", "sla_overdue")
#: suppression reasons, in the order they are checked (the first a destination suppresses is counted)
Reason = Literal["customer", "cooldown", "unsubscribed", "spam_reported"]
REASONS: tuple[Reason, ...] = ("customer", "cooldown", "unsubscribed", "spam_reported")


def _http(value: str, name: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{name} must be an http:// or https:// URL")
    return value


def _listed(value: Any) -> Any:
    """A filter's values: one value or a list of them."""
    return [value] if isinstance(value, str | int | float) else value


class DestinationConfig(BaseModel):
    """One destination of `alerts.destinations`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$",
                      description="label in metrics, logs and dead letters")
    slack_webhook_url: SecretStr | None = Field(None, description="a Slack incoming webhook (a secret)")
    webhook_url: str | None = Field(None, description="a JSON webhook, signed with `secret`")
    secret: SecretStr | None = Field(None, description="HMAC-SHA256 key of the webhook's signature")
    kinds: tuple[Kind, ...] = Field(DEFAULT_KINDS, min_length=1, description="handoff kinds it takes")
    stages: tuple[str, ...] | None = Field(None, min_length=1, description="stages it takes (the handoff's `stage`)")
    fit_grades: tuple[Grade, ...] | None = Field(None, min_length=1, description="fit grades it takes")
    who: dict[str, tuple[str, ...]] = Field(
        default_factory=dict, description="who field -> values it takes (any of them, case-insensitive): "
        "territory and owner rules")
    suppress: tuple[Reason, ...] = Field(
        REASONS, description="no alert for a lead that is a customer, in its cool-down, unsubscribed or "
        "reported spam: the reasons this destination honours (true: all, false: none)")

    @field_validator("stages", "fit_grades", "kinds", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return _listed(value)

    @field_validator("suppress", mode="before")
    @classmethod
    def _reasons(cls, value: Any) -> Any:
        if isinstance(value, bool):
            return REASONS if value else ()
        return _listed(value)

    @field_validator("who", mode="before")
    @classmethod
    def _who(cls, value: Any) -> Any:
        if isinstance(value, Mapping):  # YAML reads an owner id 123 as a number: compare it as text
            return {k: [str(x) if isinstance(x, int | float) else x for x in _listed(v)] for k, v in value.items()}
        return value

    @field_validator("slack_webhook_url")
    @classmethod
    def _slack(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            _http(value.get_secret_value(), "slack_webhook_url")
        return value

    @field_validator("webhook_url")
    @classmethod
    def _webhook(cls, value: str | None) -> str | None:
        return None if value is None else _http(value, "webhook_url")

    @model_validator(mode="after")
    def _one_target(self) -> DestinationConfig:
        if (self.slack_webhook_url is None) == (self.webhook_url is None):
            raise ValueError("give exactly one of slack_webhook_url and webhook_url")
        if self.webhook_url is not None and self.secret is None:
            raise ValueError("webhook_url needs secret: webhook calls are always signed")
        return self

    @property
    def type(self) -> str:
        return "slack" if self.slack_webhook_url is not None else "webhook"

    def masked(self) -> dict[str, Any]:
        from ..settings import cut_query

        shown = self.model_dump(exclude_none=True)
        if self.slack_webhook_url is not None:
            shown["slack_webhook_url"] = "***"
        if self.secret is not None:
            shown["secret"] = "***"
        if self.webhook_url:
            shown["webhook_url"] = cut_query(self.webhook_url)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in shown.items()}

    def takes(self, handoff: Mapping[str, Any]) -> bool:
        """Every filter holds (kinds, stages, fit grades, who)."""
        if handoff["kind"] not in self.kinds:
            return False
        if self.stages is not None and handoff["stage"] not in self.stages:
            return False
        if self.fit_grades is not None and handoff.get("fit_grade") not in self.fit_grades:
            return False
        who = handoff.get("who") or {}
        for name, values in self.who.items():
            if _folded(who.get(name)) not in {v.casefold() for v in values}:
                return False
        return True


def _folded(value: Any) -> str | None:
    return value.strip().casefold() if isinstance(value, str) else None if value is None else str(value).casefold()


def reasons(handoff: Mapping[str, Any]) -> tuple[str, ...]:
    """Why sales must not be alerted about this handoff (REASONS entries, in order), if at all."""
    out = []
    if handoff["kind"] == "closed" or handoff["stage"] == "customer":
        out.append("customer")
    until = handoff.get("cooldown_until")
    if until and datetime.fromisoformat(until) > datetime.fromisoformat(handoff["crossed_at"]):
        out.append("cooldown")
    opted = handoff.get("do_not_contact") or ()
    out.extend(r for r in ("unsubscribed", "spam_reported") if r in opted)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Route:
    """Where one handoff goes: destination names to deliver to, and those suppressed (with why)."""

    deliver: tuple[str, ...]
    suppressed: tuple[tuple[str, str], ...] = ()


def route(handoff: Mapping[str, Any], destinations: Sequence[DestinationConfig], owners: Mapping[str, str],
          owner_field: str = "owner") -> Route:
    """The destinations a handoff goes to. A reminder goes to its owner's destination when
    `owners` names one, else wherever the filters send it."""
    chosen: list[DestinationConfig]
    by_name = {d.name: d for d in destinations}
    owner = _folded((handoff.get("who") or {}).get(owner_field))
    owned = {k.casefold(): v for k, v in owners.items()}
    chosen = [d for d in destinations if d.takes(handoff)]
    if handoff["kind"] == "sla_overdue" and owner is not None and owner in owned:
        # the owner's destination instead of the channels people read; systems (webhooks) that
        # take reminders still get the record
        mine = by_name[owned[owner]]
        chosen = [mine, *(d for d in chosen if d.type == "webhook" and d is not mine)]
    why = reasons(handoff)
    deliver, held = [], []
    for d in chosen:
        hit = next((r for r in why if r in d.suppress), None)
        if hit is None:
            deliver.append(d.name)
        else:
            held.append((d.name, hit))
    return Route(tuple(deliver), tuple(held))
