"""Log lines stay one line and show hostile characters as escapes, whatever the formatter."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from leadpulse.logs import SafeLogRecord, escape, install_escaping

HOSTILE = "lead\n2026-01-01 INFO forged\r\x1b[2J\x85\u2028\u202etxt.exe\u2066\u200f\t"


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    previous = logging.getLogRecordFactory()
    install_escaping()
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("leadpulse.test_logs")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        yield logger, out
    finally:
        logger.removeHandler(handler)
        logging.setLogRecordFactory(previous)


def test_escape_covers_c0_c1_bidi_and_line_separators_and_keeps_the_rest() -> None:
    assert escape(HOSTILE) == ("lead\\x0a2026-01-01 INFO forged\\x0d\\x1b[2J\\x85\\u2028\\u202etxt.exe"
                               "\\u2066\\u200f\\x09")
    assert escape("Zürich {x} a/b «ok» 日本") == "Zürich {x} a/b «ok» 日本"


def test_every_record_is_escaped_args_tracebacks_and_all(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, out = captured
    logger.info("handoff %s -> %s", HOSTILE, "mql")
    assert out.getvalue().count("\n") == 1  # one record, one line
    assert "lead\\x0a2026-01-01 INFO forged\\x0d\\x1b[2J\\x85\\u2028\\u202etxt.exe" in out.getvalue()
    out.truncate(0)
    out.seek(0)
    try:
        raise ValueError(f"bad id {HOSTILE}")
    except ValueError:
        logger.exception("failed for %s", "\u202eid")
    text = out.getvalue()
    assert text.startswith("ERROR failed for \\u202eid\nTraceback (most recent call last):\n")
    assert "\x1b" not in text and "\u202e" not in text and "\x85" not in text and "\r" not in text
    assert "ValueError: bad id lead\n2026" in text  # a traceback keeps its line feeds, only those


def test_installing_is_idempotent_and_records_are_safe_records(captured: tuple[logging.Logger, io.StringIO]) -> None:
    install_escaping()
    assert logging.getLogRecordFactory() is SafeLogRecord
    assert isinstance(logging.getLogger("x").makeRecord("x", logging.INFO, "f", 1, "m", (), None), SafeLogRecord)
