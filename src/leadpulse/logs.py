"""Logging set-up for every command, and the escaping that keeps one record on one line.

Ids in log lines come from outside: lead and anonymous ids, event ids, what a client sent. The
event contract refuses C0 controls in ids, but a C1 control (U+0085 is a line break to many
viewers), a line separator or a bidi override (U+202E shows `lead‮txt.exe` reversed) passes,
and other text (an exception's message, a header) has no such check. So escaping is done once,
for every record, by the record factory — not at each call site, where one would be forgotten.
The record factory also survives Faust replacing the root handlers and formatters when the
worker starts, which a Formatter or handler Filter installed here would not.
"""

from __future__ import annotations

import logging
import re

_BIDI_AND_SEPARATORS = "\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
#: in a message: every C0 and C1 control, DEL, bidi marks/overrides/isolates, line separators
_UNSAFE = re.compile(f"[\x00-\x1f\x7f-\x9f{_BIDI_AND_SEPARATORS}]")
#: in a traceback, whose lines are its structure: the same except the line feed
_UNSAFE_IN_TRACEBACK = re.compile(f"[\x00-\x09\x0b-\x1f\x7f-\x9f{_BIDI_AND_SEPARATORS}]")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str) -> str:
    """`text` with control, bidi and line-separator characters as visible escapes (`\\x1b`, `\\u202e`)."""
    return _UNSAFE.sub(_escaped, text)


class SafeLogRecord(logging.LogRecord):
    """A LogRecord whose message, traceback and stack text are escaped when formatted."""

    def getMessage(self) -> str:  # noqa: N802 - logging's name
        return escape(super().getMessage())

    # Formatters cache the formatted traceback in `exc_text`: escaping on assignment covers every
    # formatter (logging's, colorlog's) without replacing any of them.
    @property
    def exc_text(self) -> str | None:
        return self._exc_text

    @exc_text.setter
    def exc_text(self, value: str | None) -> None:
        self._exc_text = None if value is None else _UNSAFE_IN_TRACEBACK.sub(_escaped, value)

    @property
    def stack_info(self) -> str | None:
        return self._stack_info

    @stack_info.setter
    def stack_info(self, value: str | None) -> None:
        self._stack_info = None if value is None else _UNSAFE_IN_TRACEBACK.sub(_escaped, value)


def install_escaping() -> None:
    """Make every record created from now on a SafeLogRecord (idempotent)."""
    if logging.getLogRecordFactory() is not SafeLogRecord:
        logging.setLogRecordFactory(SafeLogRecord)


def configure(level: str) -> None:
    """What every long-running command does first: the level, one line per record, escaped."""
    install_escaping()
    logging.basicConfig(level=level.upper(), format=FORMAT)
