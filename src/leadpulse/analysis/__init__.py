"""Offline analysis of what scores predicted: the funnel report and model calibration.

Nothing in the worker's import graph imports this package: it needs scikit-learn and
matplotlib (`pip install 'leadpulse[analysis]'`), which scoring events never does.

  outcomes.py   outcome and handoff records in (a JSONL file or a topic), validated
  bands.py      score deciles and rates: one definition for the report and calibration
  report.py     the report's numbers (report.json)
  render.py     the self-contained report.html (charts as inline SVG)
  features.py   candidate rules and what each lead did before its outcome
  replay.py     leads' events through the real engine (LeadStore on a private key prefix)
  calibrate.py  a readable points model learned from outcomes, judged on a holdout
  commands.py   `leadpulse report` and `leadpulse calibrate`
"""
