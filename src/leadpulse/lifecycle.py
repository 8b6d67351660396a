"""The model's `lifecycle:` section: what each CRM outcome (`events.crm`) does to a lead.

Score-driven stages (the model's `stages`) end where sales takes over. From there the CRM is the
truth: `sql_accepted` moves a lead to `sal`, `opportunity_created` to `opportunity`, `won` to
`customer` (closed: no more sales alerts, scores stay readable), and `sql_rejected` / `lost`
recycle it to the first model stage with a cool-down before the score can promote it again.
lua/lib.lua (`lifecycle`) decides every move; this module only validates the section and hands
it to the scripts (`spec`). docs/scoring.md §10 documents it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from .durations import parse_ms

#: the CRM outcomes the event contract defines (schemas/event.schema.json, source crm)
OUTCOMES = ("sql_accepted", "sql_rejected", "opportunity_created", "won", "lost")
Outcome = Literal["sql_accepted", "sql_rejected", "opportunity_created", "won", "lost"]
#: handoff kinds a CRM outcome or the sales SLA causes (schemas/handoff.schema.json)
KINDS = ("advanced", "closed", "recycled", "sla_overdue")
DurationMs = Annotated[int, BeforeValidator(parse_ms)]
_Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LifecycleStage(_Frozen):
    name: _Name
    description: str = ""
    #: a closed stage ends the lead's sales cycle: its handoff kind is `closed`, not `advanced`
    closed: bool = False


class OutcomeAction(_Frozen):
    """Exactly one of: `stage` (advance to that lifecycle stage), `recycle` (back to the first
    model stage, no promotion until the cool-down has passed; 0 for none), `ignore: true` (the
    outcome is recorded and published on leads.outcomes, the lead does not move)."""

    stage: _Name | None = None
    recycle: DurationMs | None = None
    ignore: bool = False

    @model_validator(mode="after")
    def _one(self) -> OutcomeAction:
        given = [self.stage is not None, self.recycle is not None, self.ignore]
        if sum(given) != 1:
            raise ValueError("give exactly one of stage, recycle (a cool-down such as 30d) or ignore: true")
        return self


def _default_stages() -> tuple[LifecycleStage, ...]:
    return (LifecycleStage(name="sal", description="sales accepted"),
            LifecycleStage(name="opportunity", description="an opportunity in the CRM"),
            LifecycleStage(name="customer", description="won", closed=True))


def _default_outcomes() -> dict[str, OutcomeAction]:
    return {
        "sql_accepted": OutcomeAction(stage="sal"),
        "opportunity_created": OutcomeAction(stage="opportunity"),
        "won": OutcomeAction(stage="customer"),
        "sql_rejected": OutcomeAction.model_validate({"recycle": "30d"}),
        "lost": OutcomeAction.model_validate({"recycle": "90d"}),
    }


class Lifecycle(_Frozen):
    #: in order: a lead only moves forward through them (a late or repeated outcome does not
    #: move it back); a recycle starts over
    stages: tuple[LifecycleStage, ...] = Field(default_factory=_default_stages)
    #: outcome -> what it does; an outcome not listed is recorded and moves nothing
    outcomes: dict[Outcome, OutcomeAction] = Field(default_factory=_default_outcomes)
    #: the sales SLA: an SQL (the top model stage) neither accepted nor rejected this long after
    #: its handoff gets one `sla_overdue` handoff; null: no SLA. A sales agreement is stated, not
    #: assumed: none unless the model says so (the default model: 2d).
    sla: DurationMs | None = None

    @model_validator(mode="before")
    @classmethod
    def _bare_outcomes(cls, value: Any) -> Any:
        # `won: customer` is short for `won: {stage: customer}`
        if isinstance(value, dict) and isinstance(value.get("outcomes"), dict):
            outcomes = {k: ({"stage": v} if isinstance(v, str) else v) for k, v in value["outcomes"].items()}
            value = {**value, "outcomes": outcomes}
        return value

    @model_validator(mode="after")
    def _check(self) -> Lifecycle:
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError("stages: stage names must be unique")
        for outcome, action in self.outcomes.items():
            if action.stage is not None and action.stage not in names:
                raise ValueError(f"outcomes.{outcome}.stage: unknown lifecycle stage {action.stage!r}"
                                 f" (known: {', '.join(names) or 'none'})")
        if self.sla is not None and self.sla <= 0:
            raise ValueError("sla: must be > 0 (null: no SLA)")
        return self

    def spec(self) -> dict[str, Any]:
        """The section as lib.lua reads it (SPEC.lc): lifecycle stages by 1-based index (`closed`
        per stage), each outcome's action as [kind, target stage | 0, cool-down ms]."""
        names = [s.name for s in self.stages]
        actions: dict[str, list[Any]] = {}
        for outcome, action in self.outcomes.items():
            if action.stage is not None:
                i = names.index(action.stage)
                actions[outcome] = ["closed" if self.stages[i].closed else "advanced", i + 1, 0]
            elif action.recycle is not None:
                actions[outcome] = ["recycled", 0, action.recycle]
        return {"n": len(names), "closed": [s.closed for s in self.stages], "outcomes": actions, "sla": self.sla or 0}
