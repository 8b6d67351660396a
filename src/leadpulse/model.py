"""The scoring model: YAML owned by marketing ops and sales, loaded once into frozen models.

Every key is validated; an error names the path of the bad key (`rules[3].when.url.glob`)
and never surfaces as a traceback. See docs/scoring.md for the format and the math.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from .abmodel import Experiment, check_experiments
from .durations import parse_ms
from .errors import ModelError
from .events import Source
from .lifecycle import Lifecycle
from .patterns import regex_matcher

GRADES = ("A", "B", "C", "D")
#: the grade of a lead too little known to grade (docs/scoring.md, Unknown fit); not a rank
UNKNOWN_GRADE = "U"
Scalar = str | int | float | bool
#: which part of a URL a predicate sees (docs/scoring.md, URL matching)
UrlPart = Literal["path", "host", "full"]
#: event properties holding a URL: their predicates see the normalised path unless `part` says
#: otherwise (`part` on any other property or trait declares it a URL)
URL_PROPERTIES = frozenset({"url", "referrer"})
DurationMs = Annotated[int, BeforeValidator(parse_ms)]
Id = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")]


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


def _one_or_more(value: Any) -> Any:
    return (value,) if isinstance(value, str) else value


Patterns = Annotated[tuple[str, ...], BeforeValidator(_one_or_more), Field(min_length=1)]


class Predicate(Frozen):
    """Conditions on one property or trait; all given operators must hold.

    A bare scalar means `equals`, a bare list means `in`. String comparisons by `equals`,
    `in` and `contains` ignore case; `glob` ignores case; `regex` is as written. `contains`
    and `glob` take one string or a list (any of them). `part` is not an operator: it picks
    what of a URL the operators see.
    """

    part: UrlPart | None = None
    equals: Scalar | None = None
    in_: tuple[Scalar, ...] | None = Field(default=None, alias="in")
    not_in: tuple[Scalar, ...] | None = None
    contains: Patterns | None = None
    regex: str | None = None
    glob: Patterns | None = None
    gte: float | None = None
    gt: float | None = None
    lte: float | None = None
    lt: float | None = None
    exists: bool | None = None
    truthy: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return {"in": value}
        if isinstance(value, (str, int, float, bool)):
            return {"equals": value}
        return value

    @model_validator(mode="after")
    def _check(self) -> Predicate:
        if all(getattr(self, name) is None for name in type(self).model_fields if name != "part"):
            raise ValueError("a predicate needs at least one operator")
        for name in ("gte", "gt", "lte", "lt"):
            bound = getattr(self, name)
            if bound is not None and not math.isfinite(bound):
                raise ValueError(f"{name} must be a finite number")
        if self.regex is not None:
            try:
                regex_matcher(self.regex)
            except ValueError as exc:
                raise ValueError(
                    f"regex does not compile for RE2, the linear-time engine rules are matched with "
                    f"(no backreferences, lookaround or atomic groups; docs/scoring.md): {exc}"
                ) from None
        return self

    def url_part(self, name: str) -> UrlPart:
        """What the operators see of property `name`: `full` is the value as sent."""
        if self.part is not None:
            return self.part
        return "path" if name in URL_PROPERTIES else "full"


def _split_when(value: Any) -> Any:
    """`when: {source: web, type: page_view, url: {...}}`: everything else is a property."""
    if not isinstance(value, Mapping):
        return value
    special = {"source", "type"}
    out = {k: v for k, v in value.items() if k in special}
    out["properties"] = {k: v for k, v in value.items() if k not in special}
    return out


class When(Frozen):
    source: Source
    type: tuple[str, ...] | None = None
    properties: dict[str, Predicate] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _types(cls, value: Any) -> Any:
        value = _split_when(value)
        if isinstance(value, dict) and isinstance(value.get("type"), str):
            value = {**value, "type": (value["type"],)}
        return value


class Cap(Frozen):
    points: Annotated[float, Field(gt=0)]
    window: DurationMs | None = None  # None: for the lifetime of the lead

    @model_validator(mode="after")
    def _check(self) -> Cap:
        if self.window is not None and self.window <= 0:
            raise ValueError("window must be > 0 (leave it out for a lifetime cap)")
        return self


def _once(value: Any) -> bool | int:
    """`true`/`false`, or a renewal period as a duration string (ms). A bare number is refused:
    `once: 1` would read as "one second" to the parser and as "yes" to a person."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        ms = parse_ms(value)
        if ms <= 0:
            raise ValueError("the renewal period must be > 0")
        return ms
    raise ValueError("once is true (for life), false, or a renewal period with a unit such as 90d")


class Rule(Frozen):
    id: Id
    description: str = ""
    category: str
    points: float
    when: When
    cap: Cap | None = None
    #: True: once per lead, ever; an int: once per that many ms (the award renews after it)
    once: Annotated[bool | int, BeforeValidator(_once)] = False
    half_life: DurationMs | None = None  # overrides the category's decay
    #: an intent signal (demo request, pricing, comparison): stages may require one (min_intent)
    intent: bool = False

    @model_validator(mode="after")
    def _check(self) -> Rule:
        _finite(self.points)
        if self.points == 0:
            raise ValueError("points must not be 0")
        if self.intent and self.points < 0:
            raise ValueError("intent marks a buying signal: its points must be positive")
        if (self.cap or self.once) and self.points < 0:
            raise ValueError("cap and once limit awards of positive points only")
        if self.cap and self.once:
            raise ValueError("use either cap or once, not both")
        if self.half_life is not None and self.half_life <= 0:
            raise ValueError("half_life must be > 0")
        return self

    @property
    def renewal_ms(self) -> int | None:
        """`once: 90d`: the renewal period in ms; None for a lifetime `once` or none."""
        return None if isinstance(self.once, bool) else self.once

    @property
    def effective_cap(self) -> Cap | None:
        # `once` is a cap equal to the rule's own points: one mechanism in Redis. For life, or
        # over the renewal period: the awards in (t - period, t] hold the rule's points exactly
        # when one was made less than a period ago (each award is all or nothing).
        if self.once is False:
            return self.cap
        return Cap.model_construct(points=self.points, window=self.renewal_ms)  # both checked already


class FitRule(Frozen):
    id: Id
    description: str = ""
    category: str
    points: float
    when: dict[str, Predicate]

    @model_validator(mode="after")
    def _check(self) -> FitRule:
        _finite(self.points)
        if self.points == 0:
            raise ValueError("points must not be 0")
        if not self.when:
            raise ValueError("when needs at least one trait")
        return self


class IdleDecay(Frozen):
    """The field's rule of thumb "lose X % after N idle days". `mode: continuous` (the default)
    maps it to a half-life; `mode: idle` does it literally (docs/scoring.md §4, Idle decay)."""

    lose_percent: Annotated[float, Field(gt=0, lt=100)]
    after: DurationMs
    mode: Literal["continuous", "idle"] = "continuous"

    @model_validator(mode="after")
    def _check(self) -> IdleDecay:
        if self.after <= 0:
            raise ValueError("after must be > 0")
        return self

    @property
    def half_life_ms(self) -> float:
        # 1 - X/100 = 2^(-N/h)  =>  h = N·ln2 / -ln(1 - X/100)
        return self.after * math.log(2) / -math.log1p(-self.lose_percent / 100)


class Category(Frozen):
    half_life: DurationMs | None = None
    decay: IdleDecay | None = None
    weight: Annotated[float, Field(gt=0)] = 1.0
    cap: Annotated[float, Field(gt=0)] | None = None
    description: str = ""

    @model_validator(mode="after")
    def _check(self) -> Category:
        if self.half_life is not None and self.decay is not None:
            raise ValueError("give half_life or decay, not both")
        if self.half_life is not None and self.half_life <= 0:
            raise ValueError("half_life must be > 0")
        return self

    @property
    def half_life_ms(self) -> float | None:
        """The continuous decay's half-life; None when the category does not decay continuously."""
        if self.decay is not None:
            return None if self.idle else self.decay.half_life_ms
        return None if self.half_life is None else float(self.half_life)

    @property
    def idle(self) -> bool:
        return self.decay is not None and self.decay.mode == "idle"


class Fit(Frozen):
    rules: tuple[FitRule, ...] = ()
    grades: dict[Literal["A", "B", "C"], float] = Field(
        default_factory=lambda: {"A": 60.0, "B": 35.0, "C": 15.0}
    )
    #: a lead that would grade D while less than this share of the fit traits is known, none of
    #: it against the lead, is graded U (unknown) instead; 0: never U
    unknown_below: Annotated[float, Field(ge=0, le=1)] = 0.0

    @model_validator(mode="after")
    def _check(self) -> Fit:
        a, b, c = (self.grades.get(g) for g in ("A", "B", "C"))
        if a is None or b is None or c is None:
            raise ValueError("grades needs minimum fit points for A, B and C")
        if not a > b > c:
            raise ValueError("grades must satisfy A > B > C")
        return self

    @cached_property
    def traits(self) -> tuple[str, ...]:
        """The traits completeness counts: those any fit rule reads, in order of first use."""
        return tuple(dict.fromkeys(name for rule in self.rules for name in rule.when))


class MinPoints(Frozen):
    """`min_points: {points: 20, from: [behavioral, engagement]}`: the lead's points from these
    categories (weighted and capped, as its breakdown shows them) add up to at least `points`."""

    points: Annotated[float, Field(gt=0)]
    from_: Annotated[tuple[str, ...], BeforeValidator(_one_or_more), Field(alias="from", min_length=1)]


class Stage(Frozen):
    name: Id
    min_score: float
    #: a U (unknown) lead meets any min_grade: unknown is not bad fit (docs/scoring.md §5);
    #: min_completeness asks for known fit
    min_grade: Literal["A", "B", "C", "D"] | None = None
    #: engagement conditions: checked to enter the stage, not to stay (docs/scoring.md §5)
    min_points: MinPoints | None = None
    min_intent: Annotated[int, Field(ge=1)] | None = None
    #: share of the model's fit traits known (0..1): checked to enter and to stay, like min_grade
    min_completeness: Annotated[float, Field(gt=0, le=1)] | None = None
    handoff: bool = False
    description: str = ""


class CustomFields(Frozen):
    """Fields the events carry beyond the contract (schemas/event.schema.json). Only
    `check-model` reads this: a rule on a property or trait that is neither in the contract nor
    declared here is reported as a likely typo."""

    traits: tuple[str, ...] = ()
    properties: dict[Source, tuple[str, ...]] = Field(default_factory=dict)


class ScoringModel(Frozen):
    version: Annotated[str, Field(min_length=1, max_length=64)]
    categories: dict[Id, Category]
    rules: tuple[Rule, ...]
    fit: Fit = Field(default_factory=Fit)
    stages: tuple[Stage, ...]
    custom_fields: CustomFields = Field(default_factory=CustomFields)
    hysteresis: Annotated[float, Field(ge=0)] = 0.0
    dedup_window: DurationMs = 7 * 86_400_000
    clock_skew: DurationMs = 5 * 60_000
    max_event_age: DurationMs | None = 30 * 86_400_000  # None: no limit
    #: threshold A/B tests (experiments.py); one at a time: a lead's bars come from one arm
    experiments: tuple[Experiment, ...] = ()
    #: what CRM outcomes do to a lead, and the sales SLA (lifecycle.py, docs/scoring.md §10)
    lifecycle: Lifecycle = Field(default_factory=Lifecycle)

    @model_validator(mode="before")
    @classmethod
    def _bare_categories(cls, value: Any) -> Any:
        # `firmographic:` with nothing under it is a category that never decays.
        if isinstance(value, dict) and isinstance(value.get("categories"), dict):
            cats = {k: ({} if v is None else v) for k, v in value["categories"].items()}
            value = {**value, "categories": cats}
        return value

    @model_validator(mode="after")
    def _check(self) -> ScoringModel:
        ids: set[str] = set()
        for kind, rules in (("rules", self.rules), ("fit.rules", self.fit.rules)):
            for i, rule in enumerate(rules):
                if rule.id in ids:
                    raise ValueError(f"{kind}[{i}].id: duplicate rule id {rule.id!r}")
                ids.add(rule.id)
                if rule.category not in self.categories:
                    raise ValueError(
                        f"{kind}[{i}].category: unknown category {rule.category!r}"
                        f" (known: {', '.join(sorted(self.categories))})"
                    )
        if self.max_event_age is not None and self.max_event_age <= 0:
            raise ValueError("max_event_age: must be > 0 (null: no limit)")
        if len(self.stages) < 2:
            raise ValueError("stages: give at least two stages (e.g. lead and mql)")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError("stages: stage names must be unique")
        for i in range(1, len(self.stages)):
            if not self.stages[i].min_score > self.stages[i - 1].min_score:
                raise ValueError(f"stages[{i}].min_score: must be above the previous stage's")
        check_experiments(self.experiments, self.stages, self.categories)
        for i, s in enumerate(self.lifecycle.stages):
            if s.name in names:
                raise ValueError(f"lifecycle.stages[{i}].name: {s.name!r} is a model stage already")
        self._check_conditions()
        self._check_idle()
        return self

    def _check_conditions(self) -> None:
        intents = sum(r.intent for r in self.rules)
        for i, stage in enumerate(self.stages):
            for name in stage.min_points.from_ if stage.min_points else ():
                if name not in self.categories:
                    raise ValueError(f"stages[{i}].min_points.from: unknown category {name!r}"
                                     f" (known: {', '.join(sorted(self.categories))})")
            if stage.min_intent is not None and stage.min_intent > intents:
                raise ValueError(f"stages[{i}].min_intent: the model has {intents} rule(s) with intent: true,"
                                 f" fewer than {stage.min_intent}")
            if i == 0 and (stage.min_points or stage.min_intent or stage.min_completeness):
                raise ValueError("stages[0]: every lead starts in the first stage: it takes no entry conditions")

    def _check_idle(self) -> None:
        # One idle clock per lead: every idle category loses the same share at the same pace.
        idle = {name: c.decay for name, c in self.categories.items() if c.idle}
        if len({(d.after, d.lose_percent) for d in idle.values() if d}) > 1:
            raise ValueError(f"categories: idle decay must be the same in every category using it"
                             f" ({', '.join(sorted(idle))}): one idle clock per lead")

    @property
    def idle_decay(self) -> IdleDecay | None:
        """The model's idle decay (every idle category has the same), None when none uses it."""
        return next((c.decay for c in self.categories.values() if c.idle), None)

    def is_idle(self, rule: Rule) -> bool:
        """Whether `rule`'s awards decay by idle time (a rule's own half_life overrides it)."""
        return rule.half_life is None and self.categories[rule.category].idle

    @cached_property
    def stage_names(self) -> tuple[str, ...]:
        """Stage names by the index the scripts report: the model's stages, then the lifecycle's."""
        return (*(s.name for s in self.stages), *(s.name for s in self.lifecycle.stages))

    def half_life_ms(self, rule: Rule) -> float | None:
        if rule.half_life is not None:
            return float(rule.half_life)
        return self.categories[rule.category].half_life_ms

    @cached_property
    def rule_index(self) -> dict[str, Rule | FitRule]:
        return {r.id: r for r in (*self.rules, *self.fit.rules)}


class _UniqueKeyLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise ModelError(f"line {key_node.start_mark.line + 1}: duplicate key {key!r}")
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for i, part in enumerate(loc):
        if part == "properties" and i and loc[i - 1] == "when":  # When keeps them apart; users never write it
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-before", "function-after") or "[" in str(part):
            continue
        else:
            out += ("." if out else "") + ("in" if part == "in_" else str(part))
    return out or "(top level)"


def parse_model(text: str, origin: str = "model") -> ScoringModel:
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - SafeLoader subclass
    except ModelError as exc:
        raise ModelError(f"{origin}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ModelError(f"{origin}: not valid YAML: {exc}".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise ModelError(f"{origin}: the model must be a mapping with version, rules, stages…")
    try:
        return ScoringModel.model_validate(data)
    except ValidationError as exc:
        # A misspelt key also makes the real one "missing": name the misspelling first.
        err = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")[0]
        msg = str(err["msg"]).removeprefix("Value error, ")
        where = _path(tuple(err["loc"]))
        if re.match(r"^[\w.\[\]]+: ", msg):  # cross-field checks name their own path, within `where`
            sub, msg = msg.split(": ", 1)
            where = sub if where == "(top level)" else f"{where}.{sub}"
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ModelError(f"{origin}: {where}: {msg}{more}") from None


def load_model(path: str | Path | None = None) -> ScoringModel:
    """The model at `path`, or the default model shipped with the package."""
    if path is None:
        from importlib.resources import files

        text = files("leadpulse").joinpath("default_model.yaml").read_text(encoding="utf-8")
        return parse_model(text, "default_model.yaml")
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ModelError(f"{p}: cannot read the model: {exc.strerror}") from None
    return parse_model(text, str(p))
