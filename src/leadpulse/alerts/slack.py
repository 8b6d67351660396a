"""The Slack message of a handoff: what a rep needs to act on it — who (name, title, company),
what happened (now an SQL; a reminder that an SQL waits for follow-up; won; recycled), why the
lead is hot (its top signals in words, with when and the points), and a link to the CRM.

Every string from the handoff is untrusted (lead ids and traits come from forms and
integrations): it is escaped for Slack's mrkdwn, in the blocks and in the `text` fallback, which
Slack parses too (`<!channel>` would ping everyone, `<url|label>` would hide a link).
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from ..who import crm_link

TOP_REASONS = 5
#: Slack shows at most 10 fields in a section
MAX_FIELDS = 10

#: the default model's rules in the words a salesperson uses; a rule's own `description` wins
PLAIN_WORDS = {
    "demo_request": "requested a demo",
    "pricing_page": "looked at pricing",
    "competitor_comparison": "compared us with a competitor",
    "case_study": "read customer stories",
    "page_view": "browsed the website",
    "form_submit": "filled in a form",
    "content_download": "downloaded content",
    "email_open": "opened our emails",
    "email_click": "clicked links in our emails",
    "email_reply": "replied to an email",
    "webinar_registered": "registered for a webinar",
    "webinar_attended": "attended a webinar",
    "webinar_attended_briefly": "dropped into a webinar",
    "webinar_question": "asked a question in a webinar",
}
#: who fields shown as the message's fields, in this order, with their labels; others follow
FIELD_LABELS = {"email": "Email", "title": "Title", "company": "Company", "domain": "Website",
                "country": "Country", "owner": "Owner"}


def mrkdwn(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _link_target(url: str) -> str | None:
    """A URL as the target of a mrkdwn link: only http(s), and nothing that would end the link."""
    if not url.startswith(("https://", "http://")):
        return None
    return url.replace("&", "&amp;").replace("<", "%3C").replace(">", "%3E").replace("|", "%7C").replace(" ", "%20")


def reason_text(signal: dict[str, Any]) -> str:
    rule = str(signal.get("rule_id", ""))
    return str(signal.get("description") or PLAIN_WORDS.get(rule) or rule.replace("_", " "))


def ago(when: str | None, now: float) -> str:
    """"2 h ago" for an ISO instant; "" when unknown."""
    if not when:
        return ""
    seconds = now - datetime.fromisoformat(when).timestamp()
    if seconds < 60:
        return "just now"
    for unit, size in (("day", 86_400), ("h", 3_600), ("min", 60)):
        if seconds >= size:
            n = int(seconds // size)
            return f"{n} {unit}{'s' if unit == 'day' and n > 1 else ''} ago"
    return ""  # unreachable: seconds >= 60 here


def _person(handoff: dict[str, Any]) -> tuple[str, str]:
    """(the lead's name or id, "title at company" or ""), unescaped."""
    who = handoff.get("who") or {}
    name = str(who.get("name") or who.get("email") or handoff["lead_id"])
    title, company = who.get("title"), who.get("company")
    role = f"{title} at {company}" if title and company else str(title or company or "")
    return name, role


def _happened(handoff: dict[str, Any]) -> tuple[str, str, str]:
    """(emoji, what happened in mrkdwn, the same in plain text)."""
    kind = handoff["kind"]
    stage, previous = str(handoff["stage"]).upper(), str(handoff["previous_stage"]).upper()
    s, p = mrkdwn(stage), mrkdwn(previous)
    outcome = str(handoff.get("outcome") or "").replace("_", " ")
    reason = f": {handoff['reason']}" if handoff.get("reason") else ""
    if kind == "promoted":
        return ":arrow_up:", f"is now *{s}* (was {p})", f"is now {stage}"
    if kind == "demoted":
        return ":arrow_down:", f"left *{p}* for {s}", f"left {previous} for {stage}"
    if kind == "sla_overdue":
        return (":alarm_clock:", f"is still an unanswered *{s}*, past the sales SLA: accept or reject it in the CRM",
                f"is still an unanswered {stage}, past the sales SLA")
    if kind == "closed":
        return ":trophy:", f"is now a *customer* ({mrkdwn(outcome or 'won')})", "is now a customer"
    if kind == "recycled":
        until = f"; cool-down until {handoff['cooldown_until'][:10]}" if handoff.get("cooldown_until") else ""
        words = f"went back to nurture ({stage}) after {outcome or 'the CRM'}{reason}{until}"
        return ":recycle:", mrkdwn(words), words
    extra = f" ({outcome})" if outcome else ""  # advanced: accepted, an opportunity
    return ":white_check_mark:", f"moved to *{s}*{mrkdwn(extra)}", f"moved to {stage}{extra}"


def slack_message(handoff: dict[str, Any], crm_template: str | None = None, now: float | None = None) -> dict[str, Any]:
    """A Slack incoming-webhook payload: a plain `text` fallback and Block Kit blocks. The CRM
    link is the handoff's `crm_url`, else `crm_template` (records of older workers)."""
    now = time.time() if now is None else now
    lead = str(handoff["lead_id"])
    link = handoff.get("crm_url") or crm_link(crm_template, lead)
    target = _link_target(link) if link else None
    name, role = _person(handoff)
    label = mrkdwn(name)
    person = f"*<{target}|{label}>*" if target else f"*{label}*"
    if role:
        person += f" · {mrkdwn(role)}"
    display = f"{name} ({role})" if role else name
    emoji, what, plain = _happened(handoff)
    reminder = handoff["kind"] == "sla_overdue"
    headline = f"{emoji} {'*Reminder:* ' if reminder else ''}{person} {what}"

    score, grade = float(handoff["score"]), handoff["fit_grade"]
    threshold = float(handoff["threshold"])
    if handoff["kind"] == "promoted":
        numbers = f"score {score:.0f} (≥{threshold:g}), fit grade {grade}"
        text = f"▲ {display} {plain}: {numbers}"
    elif handoff["kind"] == "demoted":
        text = f"▼ {display} {plain}: score {score:.0f} (<{threshold:g}), fit grade {grade}"
    elif reminder:
        text = f"⏰ Reminder: {display} {plain} (since {handoff['crossed_at'][:16].replace('T', ' ')} UTC): " \
               f"score {score:.0f}, fit grade {grade}"
    else:
        text = f"{display} {plain}: score {score:.0f}, fit grade {grade}"
    signals = handoff.get("top_signals", [])[:TOP_REASONS]
    reasons = []
    for sig in signals:
        when = ago(sig.get("last_occurred_at"), now)
        reasons.append(f"• {mrkdwn(reason_text(sig))}{' ' + when if when else ''} ({float(sig['points']):+.0f})")
    if signals and handoff["kind"] != "demoted":
        text += " because " + ", ".join(reason_text(s) for s in signals)

    fields = [{"type": "mrkdwn", "text": f"*Score*\n{score:.0f} (threshold {threshold:g})"},
              {"type": "mrkdwn", "text": f"*Fit grade*\n{mrkdwn(str(grade))}"},
              {"type": "mrkdwn", "text": f"*Stage*\n{mrkdwn(str(handoff['stage']).upper())}"}]
    who = handoff.get("who") or {}
    ordered = [k for k in FIELD_LABELS if k in who] + [k for k in who if k not in FIELD_LABELS and k != "name"]
    for key in ordered[: MAX_FIELDS - len(fields)]:
        value = who[key]
        shown = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
        fields.append({"type": "mrkdwn",
                       "text": f"*{mrkdwn(FIELD_LABELS.get(key, key.replace('_', ' ').capitalize()))}*\n{mrkdwn(shown)}"})
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": headline}},
        {"type": "section", "fields": fields},
    ]
    if reasons:
        title = "*Why it is hot*" if handoff["kind"] in ("promoted", "sla_overdue") else "*Top signals*"
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": title + "\n" + "\n".join(reasons)}})
    if link and target:
        blocks.append({"type": "actions", "elements": [
            {"type": "button", "text": {"type": "plain_text", "text": "Open in CRM"}, "url": link},
        ]})
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": mrkdwn(
        f"lead {lead} · crossed at {handoff['crossed_at']} · model {handoff['model_version']} · "
        f"id {handoff['handoff_id']}")}]})
    return {"text": mrkdwn(text), "blocks": blocks}
