"""reeval.py's pure decisions: which model changes can move a stored lead's stage."""

from __future__ import annotations

from leadpulse.model import ScoringModel, load_model
from leadpulse.reeval import may_promote


def with_mql_grade(model: ScoringModel, grade: str | None) -> ScoringModel:
    stages = list(model.stages)
    stages[1] = stages[1].model_copy(update={"min_grade": grade})
    return model.model_copy(update={"stages": tuple(stages)})


def test_a_relaxed_grade_bar_into_the_second_stage_may_promote_and_a_stricter_one_may_not() -> None:
    base = load_model()
    assert base.stages[1].min_grade is None
    assert may_promote(with_mql_grade(base, "B"), base)  # B required before, no grade now
    assert may_promote(with_mql_grade(base, "B"), with_mql_grade(base, "C"))
    assert not may_promote(base, with_mql_grade(base, "A"))
    assert not may_promote(with_mql_grade(base, "C"), with_mql_grade(base, "B"))
    assert not may_promote(base, base)
