"""Threshold A/B tests: which arm a lead is in, and the model each arm scores with.

The arm is decided here and nowhere else (`Split.arm_of`): the store picks the arm's compiled
spec for the lead's Lua calls (state.py; lib.lua computes the stage from whichever spec it is
given), and the handoff record names it (handoff.py). The split is a hash of the experiment's
name and the lead id, BLAKE2b from hashlib: the same on every worker, after every restart and
on every Python version (Python's own hash() of a str is salted per process). Renaming the
experiment reshuffles the leads; changing the shares moves only the leads between the old and
new boundaries.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property

from .abmodel import Experiment
from .model import ScoringModel

#: the arm name a handoff carries is "<experiment>/<arm>": records of two experiments never mix
SEPARATOR = "/"


def bucket(experiment: str, lead_id: str) -> float:
    """Where a lead falls in [0, 1) for an experiment: the first 8 bytes of
    BLAKE2b(experiment NUL lead_id) as a fraction of 2^64."""
    digest = hashlib.blake2b(f"{experiment}\x00{lead_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass(frozen=True)
class Split:
    model: ScoringModel
    experiment: Experiment

    @cached_property
    def _bounds(self) -> tuple[tuple[float, str], ...]:
        total = sum(a.share for a in self.experiment.arms)
        acc, out = 0.0, []
        for arm in self.experiment.arms:
            acc += arm.share
            out.append((acc / total, arm.name))
        return tuple(out)

    def arm_of(self, lead_id: str) -> str:
        """The lead's arm, as "<experiment>/<arm>"."""
        b = bucket(self.experiment.name, lead_id)
        for bound, name in self._bounds:
            if b < bound:
                return f"{self.experiment.name}{SEPARATOR}{name}"
        return f"{self.experiment.name}{SEPARATOR}{self._bounds[-1][1]}"  # rounding at the top

    @cached_property
    def models(self) -> dict[str, ScoringModel]:
        """Each arm's model: the model with the arm's stage bars, hysteresis, grade bars and
        category weights and caps (validated by ScoringModel when the model loaded)."""
        out = {}
        for arm in self.experiment.arms:
            stages = tuple(
                s.model_copy(update={k: v for k, v in arm.stages[s.name].model_dump().items() if v is not None})
                if s.name in arm.stages else s
                for s in self.model.stages
            )
            update: dict[str, object] = {"stages": stages, "experiments": ()}
            if arm.hysteresis is not None:
                update["hysteresis"] = arm.hysteresis
            if arm.grades is not None:
                update["fit"] = self.model.fit.model_copy(update={"grades": dict(arm.grades)})
            if arm.categories:
                update["categories"] = {
                    name: c.model_copy(update=arm.categories[name].model_dump(exclude_none=True)) if name in arm.categories else c
                    for name, c in self.model.categories.items()
                }
            out[f"{self.experiment.name}{SEPARATOR}{arm.name}"] = self.model.model_copy(update=update)
        return out


#: id(model) -> (model, its split): a handoff asks per record; the model is kept so its id stays its own
_SPLITS: dict[int, tuple[ScoringModel, Split | None]] = {}


def split(model: ScoringModel) -> Split | None:
    """The model's running experiment, or None."""
    hit = _SPLITS.get(id(model))
    if hit is not None and hit[0] is model:
        return hit[1]
    if len(_SPLITS) > 16:  # a few models live at once (active, shadow, a rollback's)
        _SPLITS.clear()
    made = Split(model, model.experiments[0]) if model.experiments else None
    _SPLITS[id(model)] = (model, made)
    return made


def arm_of(model: ScoringModel, lead_id: str) -> str | None:
    s = split(model)
    return s.arm_of(lead_id) if s is not None else None
