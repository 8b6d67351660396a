"""Convert X Education's Leads.csv, calibrate a LeadPulse model on it, print the figures.

    python examples/x_education/run.py [path/to/Leads.csv] [--keep DIR] [--last-activity lead|none|raw]

--last-activity lead (default) maps the lead's own Last Activity to an event and masks sales'
actions; none is the strict figure without the column (convert.py and README.md explain both).

One command: convert.py, then `leadpulse calibrate --json` (the real engine scores the holdout
leads), whose JSON document is printed on stdout; the goal check goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
GOAL_AUC, GOAL_RULES = 0.88, 30
#: the data has no time (synthetic stamps: no decay) and converts at 38.5 %, so a lift of 3×
#: cannot be met: the thresholds are stated as conversion rates instead
CALIBRATE = ["--decay", "none", "--mql-target", "rate:0.6", "--sql-target", "rate:0.9", "--max-rules", str(GOAL_RULES), "--seed", "7"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", nargs="?", type=Path, default=Path("../shared/data/Leads.csv"))
    parser.add_argument("--keep", type=Path, default=None, help="keep events, outcomes and candidate.yaml here")
    parser.add_argument("--last-activity", choices=("lead", "none", "raw"), default="lead",
                        help="passed to convert.py (default lead: the lead's own last activity as an event, sales' masked)")
    args = parser.parse_args()
    if not args.csv.is_file():
        parser.error(f"{args.csv}: no such file (give the path to Leads.csv)")
    with tempfile.TemporaryDirectory(prefix="x-education-") as tmp:
        out = args.keep or Path(tmp)
        subprocess.run([sys.executable, str(HERE / "convert.py"), str(args.csv), str(out), "--last-activity", args.last_activity], check=True)
        done = subprocess.run(
            [sys.executable, "-m", "leadpulse", "calibrate", "--events", str(out / "events.jsonl"),
             "--outcomes", str(out / "outcomes.jsonl"), "--out", str(out / "candidate.yaml"), "--json", *CALIBRATE],
            check=True, capture_output=True, text=True,
        )
    print(done.stdout, end="")
    summary = json.loads(done.stdout)
    auc, rules = summary["holdout"]["candidate"]["auc"], summary["rules"]
    met = auc >= GOAL_AUC and rules <= GOAL_RULES
    print(f"[Last Activity: {args.last_activity}] holdout ROC AUC {auc:.4f} with {rules} rules (current model: {summary['holdout']['current']['auc']:.4f}); "
          f"goal ≥ {GOAL_AUC} with ≤ {GOAL_RULES} rules: {'met' if met else f'missed by {GOAL_AUC - auc:.4f}'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
