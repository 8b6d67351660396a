"""X Education's Leads.csv -> LeadPulse events and outcomes, ready for `leadpulse calibrate`.

    python examples/x_education/convert.py ../shared/data/Leads.csv OUTDIR [--last-activity MODE]

writes OUTDIR/events.jsonl (event contract: schemas/event.schema.json) and OUTDIR/outcomes.jsonl
(outcome contract: won for Converted = 1, lost otherwise). The mapping, and why some columns
are left out, is in README.md beside this file. The data has no timestamps: every time here is
synthetic but deterministic (the same file gives the same bytes).

`Last Activity` (--last-activity): `lead` (default) sends the values that are the lead's own
behaviour as the event they are (LEAD_ACTIVITY) and masks the values that are sales' actions or
their results (SALES_ACTIVITY: no event, as if not recorded); `none` leaves the column out
(the strict figure); `raw` sends both snapshot columns whole as traits, only to measure their
leak. `Last Notable Activity` is never used otherwise (README.md: why).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

START = datetime(2025, 1, 6, tzinfo=UTC)
LEAD_GAP = timedelta(minutes=37)  # one new lead every 37 minutes, in file order
VISIT_GAP = timedelta(days=1)
PAGE_GAP = timedelta(minutes=1)
PING_SECONDS = 30  # one engaged-time ping per 30 s on the site
SITE = "https://www.x-education.example"

#: trait name <- column (profile/identify); "Select" (an untouched dropdown) and "" are not sent
TRAITS = {
    "lead_origin": "Lead Origin",
    "lead_source": "Lead Source",
    "country": "Country",
    "city": "City",
    "specialization": "Specialization",
    "occupation": "What is your current occupation",
    "what_matters": "What matters most to you in choosing a course",
    "how_heard": "How did you hear about X Education",
}
#: yes/no columns sent as boolean traits
FLAGS = {
    "do_not_call": "Do Not Call",
    "ad_search": "Search",
    "ad_magazine": "Magazine",
    "ad_newspaper_article": "Newspaper Article",
    "ad_forums": "X Education Forums",
    "ad_newspaper": "Newspaper",
    "ad_digital": "Digital Advertisement",
    "ad_recommendation": "Through Recommendations",
    "wants_course_updates": "Receive More Updates About Our Courses",
    "wants_supply_chain_updates": "Update me on Supply Chain Content",
    "wants_dm_updates": "Get updates on DM Content",
    "pays_by_cheque": "I agree to pay the amount through cheque",
}
#: filled in by sales after contact, or a snapshot taken after the outcome: they leak the label
#: (README.md gives the evidence). Never read as traits; Last Activity's lead-side values are
#: read as events (LEAD_ACTIVITY), and both snapshots as traits only with --last-activity raw.
EXCLUDED = (
    "Tags", "Lead Quality", "Lead Profile", "Asymmetrique Activity Index", "Asymmetrique Profile Index",
    "Asymmetrique Activity Score", "Asymmetrique Profile Score", "Last Activity", "Last Notable Activity",
)
#: Last Activity values that are the lead's own behaviour -> the event they are (source, type,
#: properties). The event happens after the lead's visits and before its outcome: it is the *last*
#: activity. Olark is the site's chat widget: a chat the visitor opens, sent as a form submission
#: (the event contract has no chat type), told apart by `form`.
LEAD_ACTIVITY: dict[str, tuple[str, str, dict[str, Any]]] = {
    "Email Opened": ("email", "open", {}),
    "Email Link Clicked": ("email", "click", {"url": f"{SITE}/courses"}),
    "View in browser link Clicked": ("email", "click", {"url": f"{SITE}/email/view-in-browser"}),
    "Email Bounced": ("email", "bounce", {}),
    "Unsubscribed": ("email", "unsubscribe", {}),
    "Email Marked Spam": ("email", "spam_report", {}),
    "Page Visited on Website": ("web", "page_view", {"url": f"{SITE}/"}),
    "Form Submitted on Website": ("web", "form_submit", {"form": "website"}),
    "Converted to Lead": ("web", "form_submit", {"form": "lead_form"}),
    "Olark Chat Conversation": ("web", "form_submit", {"form": "olark_chat"}),
}
#: Last Activity values that are sales' actions or their results (a lead sales already texted,
#: called or reached): they would leak the outcome, so they are masked (no event). "Email
#: Received" is an email sales received in a thread sales started. Blank: nothing recorded.
SALES_ACTIVITY = frozenset({"SMS Sent", "Had a Phone Conversation", "Unreachable", "Approached upfront", "Email Received"})
#: the lead's own, but no event type of the contract says it (one lead each): not sent
UNMAPPED_ACTIVITY = frozenset({"Resubscribed to emails", "Visited Booth in Tradeshow"})
LAST_ACTIVITY_MODES = ("lead", "none", "raw")
#: the two snapshot columns, sent as traits only with --last-activity raw, to measure the leak
LEAKY_SNAPSHOTS = {"last_activity": "Last Activity", "last_notable_activity": "Last Notable Activity"}


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _number(text: str) -> float | None:
    text = text.strip()
    return float(text) if text else None


def _value(text: str) -> str | None:
    text = re.sub(r"\s+", " ", text.strip())
    return None if text in ("", "Select") else text[:64]


def lead_events(row: dict[str, str], index: int, last_activity: str = "lead") -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One CSV row -> (its events in time order, its outcome)."""
    lead = row["Prospect ID"].strip()
    t = START + index * LEAD_GAP
    events: list[dict[str, Any]] = []

    def emit(source: str, type_: str, at: datetime, properties: dict[str, Any] | None = None, traits: dict[str, Any] | None = None) -> None:
        event: dict[str, Any] = {"event_id": f"{lead}:{len(events)}", "lead_id": lead, "source": source, "type": type_, "occurred_at": _iso(at)}
        if properties:
            event["properties"] = properties
        if traits is not None:
            event["traits"] = traits
        events.append(event)

    traits: dict[str, Any] = {name: v for name, col in TRAITS.items() if (v := _value(row[col])) is not None}
    traits.update({name: row[col].strip() == "Yes" for name, col in FLAGS.items() if row[col].strip() in ("Yes", "No")})
    if last_activity == "raw":
        traits.update({name: v for name, col in LEAKY_SNAPSHOTS.items() if (v := _value(row[col])) is not None})
    emit("profile", "identify", t, traits=traits)
    if row["Do Not Email"].strip() == "Yes":
        emit("email", "unsubscribe", t + timedelta(seconds=1))
    if row["A free copy of Mastering The Interview"].strip() == "Yes":
        emit("web", "content_download", t + timedelta(seconds=2), {"asset": "Mastering The Interview"})

    visits_raw = _number(row["TotalVisits"])
    seconds = int(_number(row["Total Time Spent on Website"]) or 0)
    visits = int(visits_raw or 0)
    if visits == 0 and seconds > 0:
        visits = 1  # time on the site implies a visit
    per_visit = _number(row["Page Views Per Visit"]) or 1.0
    pages = max(visits, round(visits * per_visit))
    pings = seconds // PING_SECONDS
    engaged = 0
    for v in range(visits):
        start = t + timedelta(minutes=5) + v * VISIT_GAP
        # pages and pings spread evenly over the visits (the file has totals only)
        n_pages = pages // visits + (1 if v < pages % visits else 0)
        n_pings = pings // visits + (1 if v < pings % visits else 0)
        for p in range(n_pages):
            emit("web", "page_view", start + p * PAGE_GAP, {"url": f"{SITE}/courses/page-{p + 1}", "visit": v + 1})
        for k in range(n_pings):
            engaged += PING_SECONDS
            emit("web", "page_view", start + timedelta(seconds=PING_SECONDS * (k + 1)),
                 {"url": f"{SITE}/courses/page-1", "visit": v + 1, "ping": True, "engaged_seconds": engaged})
    last = max(datetime.fromisoformat(e["occurred_at"].replace("Z", "+00:00")) for e in events)
    activity = re.sub(r"\s+", " ", row["Last Activity"].strip())
    if last_activity == "lead" and activity in LEAD_ACTIVITY:
        source, type_, properties = LEAD_ACTIVITY[activity]
    else:
        source = type_ = ""
    # "Unsubscribed" of a lead whose Do Not Email is Yes is that same unsubscribe, already sent
    if source and not (type_ == "unsubscribe" and row["Do Not Email"].strip() == "Yes"):
        last += timedelta(hours=1)  # the last thing the lead did: after everything else
        emit(source, type_, last, dict(properties) or None)
    events.sort(key=lambda e: e["occurred_at"])
    outcome = {
        "outcome_id": f"{lead}:outcome", "lead_id": lead,
        "outcome": "won" if row["Converted"].strip() == "1" else "lost",
        "occurred_at": _iso(last + VISIT_GAP),
    }
    return events, outcome


def convert(source: Path, out: Path, limit: int | None = None, last_activity: str = "lead") -> tuple[int, int]:
    out.mkdir(parents=True, exist_ok=True)
    n_leads = n_events = 0
    with source.open(encoding="utf-8", newline="") as f, (out / "events.jsonl").open("w") as ev, (out / "outcomes.jsonl").open("w") as oc:
        for index, row in enumerate(csv.DictReader(f)):
            if limit is not None and index >= limit:
                break
            events, outcome = lead_events(row, index, last_activity)
            for event in events:
                ev.write(json.dumps(event, separators=(",", ":")) + "\n")
            oc.write(json.dumps(outcome, separators=(",", ":")) + "\n")
            n_leads += 1
            n_events += len(events)
    return n_leads, n_events


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", type=Path, help="Leads.csv")
    parser.add_argument("out", type=Path, help="output directory")
    parser.add_argument("--limit", type=int, default=None, help="only the first N rows")
    parser.add_argument("--last-activity", choices=LAST_ACTIVITY_MODES, default="lead",
                        help="lead: the lead's own last activity as an event, sales' masked (default); none: left out "
                             "(strict); raw: both snapshot columns as traits, only to measure their leak (README.md)")
    args = parser.parse_args(argv)
    leads, events = convert(args.csv, args.out, args.limit, args.last_activity)
    print(f"{args.out}: {leads} leads, {events} events", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
