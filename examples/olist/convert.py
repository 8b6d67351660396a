"""Olist's marketing funnel -> LeadPulse events (and labels), ready for replay and calibration.

    python examples/olist/convert.py ../shared/data OUTDIR [--limit N]

reads `olist_marketing_qualified_leads_dataset.csv` (8,000 MQLs: mql_id, first_contact_date,
landing_page_id, origin) and `olist_closed_deals_dataset.csv` (842 deals won from them) and
writes, in time order:

- OUTDIR/events.jsonl — per MQL, at its first contact: `profile/identify` with the traits the
  data has (`origin`: the marketing channel; `landing_page`: the landing page's id), the landing
  page's `web/page_view` and the sign-up `web/form_submit` on it (an Olist MQL is a seller who
  filled in the form on a landing page); per closed deal, a `crm/won` event at its won_date.
- OUTDIR/outcomes.jsonl — the labels (outcome contract): `won` at won_date for the closed
  deals; for every other MQL a `lost` **label by absence** (reason "not closed by <as-of>") at
  the as-of time, the day after the last won_date in the file. The data has no lost deals: "not
  closed" means no deal in the file by then. These `lost` records are labels for the report and
  calibration only; no `lost` event is sent to the worker (nobody recorded one).

The closed-deal columns beyond mql_id and won_date (business segment, lead type, behaviour
profile, catalog size, declared revenue, seller/SDR/SR ids) are filled in by sales while
closing and exist only for won leads: they would give the label away and are never read.
The files' quirks (`;`, UTF-8 BOM, CRLF, dates `YYYY.MM.DD` and `YYYY.MM.DD H:MM`) are
handled by csv + the formats below. Times are read as UTC (the data gives no zone); a date
alone is its midnight. Deterministic: the same files give the same bytes.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

MQLS = "olist_marketing_qualified_leads_dataset.csv"
DEALS = "olist_closed_deals_dataset.csv"
SITE = "https://sellers.olist.example"


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as f:  # utf-8-sig drops the BOM
        return [{k.strip(): v.strip() for k, v in row.items()} for row in csv.DictReader(f, delimiter=";")]


def contact_time(row: dict[str, str]) -> datetime:
    return datetime.strptime(row["first_contact_date"], "%Y.%m.%d").replace(tzinfo=UTC)


def won_time(deal: dict[str, str]) -> datetime:
    return datetime.strptime(deal["won_date"], "%Y.%m.%d %H:%M").replace(tzinfo=UTC)


def mql_events(row: dict[str, str]) -> list[dict[str, Any]]:
    """The first contact of one MQL: identify (traits), landing page view, sign-up form."""
    lead, t = row["mql_id"], contact_time(row)
    page = f"{SITE}/lp/{row['landing_page_id']}"
    traits = {k: v for k, v in (("origin", row["origin"].casefold()), ("landing_page", row["landing_page_id"])) if v}
    base = {"lead_id": lead}
    return [
        {"event_id": f"{lead}:identify", **base, "source": "profile", "type": "identify", "occurred_at": _iso(t), "traits": traits},
        {"event_id": f"{lead}:landing", **base, "source": "web", "type": "page_view", "occurred_at": _iso(t + timedelta(seconds=1)),
         "properties": {"url": page}},
        {"event_id": f"{lead}:signup", **base, "source": "web", "type": "form_submit", "occurred_at": _iso(t + timedelta(seconds=2)),
         "properties": {"url": page, "form": "seller_signup"}},
    ]


def won_event(deal: dict[str, str]) -> dict[str, Any]:
    lead = deal["mql_id"]
    return {"event_id": f"{lead}:won", "lead_id": lead, "source": "crm", "type": "won", "occurred_at": _iso(won_time(deal))}


def convert(data_dir: Path, out: Path, limit: int | None = None) -> dict[str, Any]:
    """Write events.jsonl and outcomes.jsonl; return counts and the as-of time."""
    mqls = _read(data_dir / MQLS)
    deals = _read(data_dir / DEALS)
    if limit is not None:
        mqls = mqls[:limit]
    as_of = max(won_time(d) for d in deals).replace(hour=0, minute=0) + timedelta(days=1)
    known = {r["mql_id"] for r in mqls}
    won = {d["mql_id"]: d for d in deals if d["mql_id"] in known}
    events = [e for r in mqls for e in mql_events(r)] + [won_event(d) for d in won.values()]
    events.sort(key=lambda e: (e["occurred_at"], e["event_id"]))
    outcomes = []
    for r in mqls:
        lead = r["mql_id"]
        if lead in won:
            outcomes.append({"outcome_id": f"{lead}:won", "lead_id": lead, "outcome": "won",
                             "occurred_at": _iso(won_time(won[lead])), "event_id": f"{lead}:won"})
        else:
            outcomes.append({"outcome_id": f"{lead}:not-closed", "lead_id": lead, "outcome": "lost",
                             "reason": f"not closed by {as_of.date().isoformat()}", "occurred_at": _iso(as_of)})
    outcomes.sort(key=lambda o: (o["occurred_at"], o["outcome_id"]))
    out.mkdir(parents=True, exist_ok=True)
    for name, items in (("events.jsonl", events), ("outcomes.jsonl", outcomes)):
        with (out / name).open("w") as f:
            f.writelines(json.dumps(x, separators=(",", ":")) + "\n" for x in items)
    return {"mqls": len(mqls), "won": len(won), "events": len(events), "as_of": _iso(as_of)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help=f"the directory holding {MQLS} and {DEALS}")
    parser.add_argument("out", type=Path, help="output directory")
    parser.add_argument("--limit", type=int, default=None, help="only the first N MQLs (and their deals)")
    args = parser.parse_args(argv)
    for name in (MQLS, DEALS):
        if not (args.data / name).is_file():
            parser.error(f"{args.data / name}: no such file")
    counts = convert(args.data, args.out, args.limit)
    print(f"{args.out}: {counts['mqls']} MQLs, {counts['won']} won, {counts['events']} events; "
          f"not closed by {counts['as_of']} = lost (label by absence)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
