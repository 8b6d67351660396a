"""The model's `experiments:` section (a threshold A/B test), as written and validated.

Apart from model.py so that the model stays one concept a module; what an arm means at run
time (the split, each arm's model) is experiments.py's. docs/scoring.md §2 and §9.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: as model.Id: experiment and arm names are ids (they travel in `arm` as "<experiment>/<arm>")
Id = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class StageBar(_Frozen):
    """An arm's bar for one stage: what it changes of the model's."""

    min_score: float | None = None
    min_grade: Literal["A", "B", "C", "D"] | None = None


class CategoryWeight(_Frozen):
    """An arm's weight and cap for one category."""

    weight: Annotated[float, Field(gt=0)] | None = None
    cap: Annotated[float, Field(gt=0)] | None = None


class Arm(_Frozen):
    """What an arm changes of the model: everything lib.lua reads from the spec (stage bars,
    hysteresis, grade bars, category weights and caps); rules and their points stay the model's
    (they are matched in Python, before the lead's arm matters for a visitor's events)."""

    name: Id
    #: its part of the leads, relative to the other arms' (50 and 50: half each)
    share: Annotated[float, Field(gt=0)]
    #: stage name -> the arm's bar; stages not named keep the model's
    stages: dict[str, StageBar] = Field(default_factory=dict)
    hysteresis: Annotated[float, Field(ge=0)] | None = None
    #: the arm's minimum fit points per grade (all three), or the model's
    grades: dict[Literal["A", "B", "C"], float] | None = None
    #: category name -> the arm's weight and cap; categories not named keep the model's
    categories: dict[str, CategoryWeight] = Field(default_factory=dict)
    description: str = ""

    @field_validator("grades")
    @classmethod
    def _grades(cls, grades: dict[str, float] | None) -> dict[str, float] | None:
        if grades is not None:
            a, b, c = (grades.get(g) for g in ("A", "B", "C"))
            if a is None or b is None or c is None:
                raise ValueError("grades needs minimum fit points for A, B and C")
            if not a > b > c:
                raise ValueError("grades must satisfy A > B > C")
        return grades


class Experiment(_Frozen):
    """A threshold A/B test: leads split by a stable hash of their id (experiments.py)."""

    name: Id
    arms: tuple[Arm, ...] = Field(min_length=2)
    description: str = ""

    @model_validator(mode="after")
    def _check(self) -> Experiment:
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError("arm names must be unique")
        return self


def check_experiments(experiments: Sequence[Experiment], stages: Sequence[Any], categories: Mapping[str, Any]) -> None:
    """What an experiment must agree on with its model: one at a time, stages and categories
    that exist, bars that still increase. Raises ValueError naming the path."""
    if len(experiments) > 1:
        raise ValueError("experiments: one experiment at a time (a lead's stage bars come from one arm)")
    names = [s.name for s in stages]
    for e, exp in enumerate(experiments):
        for a, arm in enumerate(exp.arms):
            where = f"experiments[{e}].arms[{a}]"
            for stage in arm.stages:
                if stage not in names:
                    raise ValueError(f"{where}.stages.{stage}: unknown stage (known: {', '.join(names)})")
            for cat in arm.categories:
                if cat not in categories:
                    raise ValueError(f"{where}.categories.{cat}: unknown category (known: {', '.join(categories)})")
            bars = [arm.stages[s.name].min_score if s.name in arm.stages and arm.stages[s.name].min_score is not None
                    else s.min_score for s in stages]
            for i in range(1, len(bars)):
                if not bars[i] > bars[i - 1]:
                    raise ValueError(f"{where}.stages: {names[i]}'s min_score must be above {names[i - 1]}'s")
