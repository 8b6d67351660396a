"""The board's pure parts: session cookies, words, the chart's coordinates."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from itsdangerous import TimestampSigner
from pydantic import SecretStr

from leadpulse.board import session, words
from leadpulse.board.chart import chart
from leadpulse.model import load_model


def request_with(cookie: str | None = None, **headers: str) -> Any:
    if cookie is not None:
        headers["Cookie"] = f"{session.COOKIE}={cookie}"
    return make_mocked_request("GET", "/board", headers=headers)


def issued(sessions: session.Sessions, **headers: str) -> web.Response:
    response = web.Response()
    sessions.sign_in(request_with(**headers), response)
    return response


def test_a_signed_cookie_lets_in_and_a_forged_one_does_not() -> None:
    sessions = session.Sessions(SecretStr("tok-1"))
    cookie = issued(sessions).cookies[session.COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and not cookie["secure"]
    assert "tok-1" not in cookie.value
    assert sessions.signed_in(request_with(cookie.value))
    assert not sessions.signed_in(request_with())
    assert not sessions.signed_in(request_with(cookie.value[:-2] + "xx"))
    # signed with another token's secret: rotating the token signs everybody out
    assert not session.Sessions(SecretStr("tok-2")).signed_in(request_with(cookie.value))
    # a key that is not the derived one, even if it is the token itself
    forged = TimestampSigner(b"tok-1", salt="board-session").sign(b"board").decode()
    assert not sessions.signed_in(request_with(forged))


def test_an_old_cookie_has_expired(monkeypatch: pytest.MonkeyPatch) -> None:
    sessions = session.Sessions(SecretStr("tok-1"))
    cookie = issued(sessions).cookies[session.COOKIE].value
    monkeypatch.setattr(session, "MAX_AGE_S", -1)
    assert not sessions.signed_in(request_with(cookie))


def test_secure_over_https_and_the_bearer_token_still_works() -> None:
    sessions = session.Sessions(SecretStr("tok-1"))
    assert issued(sessions, **{"X-Forwarded-Proto": "https"}).cookies[session.COOKIE]["secure"]
    assert sessions.allowed(request_with(Authorization="Bearer tok-1"))
    assert not sessions.allowed(request_with(Authorization="Bearer tok-2"))
    assert not sessions.token_matches("tok-1\udcff")
    assert session.Sessions(None).allowed(request_with())


def test_words() -> None:
    model = load_model()
    assert words.rule_words(model, "demo_request") == "requested a demo"
    assert words.rule_words(model, "seniority_exec") == "seniority exec"  # no description: the id in words
    assert words.points(50) == "+50" and words.points(-12.46) == "−12.5" and words.points(0.04) == "+0"
    now = 1_800_000_000_000
    assert [words.ago(now - s * 1000, now) for s in (5, 300, 7200, 3 * 86400, -60)] == [
        "just now", "5 min ago", "2 h ago", "3 d ago", "just now"]
    assert words.who({"job_title": "<b>VP</b>", "email_domain": "acme.io"}) == {
        "name": None, "role": "<b>VP</b>", "company": "acme.io"}
    assert words.completeness(2 / 3) == "data 67 %" and words.completeness(0) == "data 0 %"
    assert "unknown, not bad" in words.grade_title(model, "U", 0.2) and "under 50 %" in words.grade_title(model, "U", 0.2)
    assert words.grade_title(model, "B", 0.75).startswith("Fit grade B (A best, D poorest), 75 %")


def test_who_reads_the_deployments_who_traits_first() -> None:
    # LEADPULSE_HANDOFF_WHO maps handoff fields to traits (who.py): the board names a lead the same way
    fields = {"name": "full_legal_name", "title": "role_text", "company": "account", "domain": "company_domain"}
    traits = {"full_legal_name": "Ada Obi", "name": "ada", "role_text": "Growth Lead", "job_title": "x",
              "company_domain": "initech.co", "company": "Other Co"}
    assert words.who(traits, fields) == {"name": "Ada Obi", "role": "Growth Lead", "company": "initech.co"}
    # what a field's trait does not hold falls back to the usual trait names
    assert words.who({"job_title": "VP", "company": "Initech"}, fields) == {"name": None, "role": "VP", "company": "Initech"}


def test_the_chart_fits_every_dot_in_the_frame() -> None:
    assert chart([], []) is None
    drawn = chart([(1000, 10.0, "event"), (5000, 130.0, "promoted"), (9000, 90.0, "now")], [(60, "mql"), (110, "sql")])
    assert drawn is not None
    xs, ys = [d.x for d in drawn.dots], [d.y for d in drawn.dots]
    assert xs == sorted(xs) and min(xs) >= 0 and max(xs) <= drawn.width and 0 <= min(ys) and max(ys) <= drawn.height
    assert ys[1] < ys[2] < ys[0]  # higher scores are drawn higher
    assert [label for _, label in drawn.thresholds] == ["mql", "sql"]
    assert drawn.path.startswith("M") and drawn.path.count("L") == 2
