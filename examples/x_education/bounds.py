"""Reference ROC AUCs on Leads.csv straight from the columns (no LeadPulse): what bounds the
calibrated model. Same leads held out as `leadpulse calibrate --seed 7 --holdout 0.3`.

    python examples/x_education/bounds.py [path/to/Leads.csv]

Prints, for the columns convert.py uses (and with the leaky Last Activity columns added):
a logistic regression on one-hot columns with log-scaled numbers (the published approach), the
same with the numbers cut into 20 quantile bins (an additive model: the most a points model can
express), and gradient-boosted trees (interactions too); and with the two snapshot columns'
sales values (SMS Sent, Had a Phone Conversation, Modified, …) masked as one value; and Last
Activity alone with its sales values masked (what convert.py --last-activity lead sends). Each
AUC is also given on the holdout leads whose Last Activity is the lead's own (not a sales action).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

sys.path.insert(0, str(Path(__file__).resolve().parent))
from convert import FLAGS, SALES_ACTIVITY, TRAITS  # noqa: E402

NUMBERS = ("TotalVisits", "Total Time Spent on Website", "Page Views Per Visit")
CATEGORIES = (*TRAITS.values(), *FLAGS.values(), "Do Not Email", "A free copy of Mastering The Interview")
LEAKY = ("Last Activity", "Last Notable Activity")
#: values of the two snapshot columns that are sales' actions or CRM edits, not the lead's
SALES_VALUES = {v.casefold() for v in SALES_ACTIVITY} | {"modified"}


def _cell(row: dict[str, str], col: str, mask: bool) -> str:
    value = row[col].strip().casefold()
    return "(a sales action)" if mask and col in LEAKY and value in SALES_VALUES else value


def matrix(rows: list[dict[str, str]], columns: tuple[str, ...], binned: bool, mask: bool = False) -> np.ndarray:
    parts = []
    for col in columns:
        cells = [_cell(r, col, mask) for r in rows]
        values = sorted(set(cells))
        parts.append(np.array([[c == v for v in values] for c in cells], dtype=float))
    for col in NUMBERS:
        x = np.array([float(r[col] or 0) for r in rows])
        if binned:
            edges = np.unique(np.quantile(x[x > 0], np.linspace(0.05, 0.95, 19)))
            parts.append(np.column_stack([x > 0, *(x >= e for e in edges)]).astype(float))
        else:
            parts.append(np.log1p(x)[:, None])
    return np.hstack(parts)


def main() -> int:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/Leads.csv")
    rows = sorted(csv.DictReader(path.open(encoding="utf-8", newline="")), key=lambda r: r["Prospect ID"].strip())
    y = np.array([int(r["Converted"]) for r in rows])
    train, test = train_test_split(np.arange(len(rows)), test_size=0.3, random_state=7, stratify=y)
    for name, columns, mask in (
        ("without the leaky columns", CATEGORIES, False),
        ("with Last Activity + Last Notable Activity", (*CATEGORIES, *LEAKY), False),
        ("with them, their sales values masked", (*CATEGORIES, *LEAKY), True),
        ("Last Activity only, sales values masked", (*CATEGORIES, "Last Activity"), True),
    ):
        for label, binned, model in (
            ("logistic, log numbers", False, LogisticRegression(C=1.0, max_iter=5000)),
            ("logistic, binned numbers", True, LogisticRegression(C=0.5, max_iter=5000)),
            ("gradient-boosted trees", False, HistGradientBoostingClassifier(max_iter=300, learning_rate=0.05, random_state=0)),
        ):
            x = matrix(rows, columns, binned, mask)
            p = model.fit(x[train], y[train]).predict_proba(x[test])[:, 1]
            # the same AUC on the holdout leads whose Last Activity is not a sales action: there
            # the masked value's gap cannot speak, only the lead's own activity can
            own = np.array([_cell(rows[i], "Last Activity", True) != "(a sales action)" for i in test])
            print(f"{name:44} {label:26} holdout ROC AUC {roc_auc_score(y[test], p):.4f}"
                  f"  (on the {own.sum()} whose last activity is the lead's own: {roc_auc_score(y[test][own], p[own]):.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
