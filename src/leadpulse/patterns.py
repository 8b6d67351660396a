"""The model's `regex` and `glob` predicates, matched in linear time by RE2.

Python's `re` backtracks: a careless model pattern such as `(a+)+$` took the worker's CPU for
minutes on one 41-character URL. RE2 (google-re2, Google's bindings) matches in time linear in
the value, whatever the pattern, and refuses what it cannot do that way (backreferences,
lookaround, atomic groups): `check-model` reports those as model errors. Globs are translated to
RE2 too: `fnmatch.translate` writes atomic groups and `\\Z`, which RE2 does not read. Either way
only the first MATCH_LIMIT characters of a value are matched (docs/scoring.md, Predicates).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import re2

#: characters of a property or trait a regex or glob looks at: a longer value is matched as
#: if it ended there
MATCH_LIMIT = 8192

Matcher = Callable[[str], bool]


def _options(*, case_sensitive: bool = True, dot_nl: bool = False) -> re2.Options:
    options = re2.Options()
    options.log_errors = False  # an invalid pattern is a model error, not a line on stderr
    options.case_sensitive = case_sensitive
    options.dot_nl = dot_nl
    return options


def _compile(pattern: str, options: re2.Options) -> Any:  # a compiled RE2 pattern
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise ValueError(reason) from None


def regex_matcher(pattern: str) -> Matcher:
    """`re.search`-like: the pattern anywhere in the value, case-sensitive unless `(?i)`.

    Raises ValueError (with RE2's reason) for a pattern RE2 cannot run."""
    search = _compile(pattern, _options()).search
    return lambda value: search(value[:MATCH_LIMIT].encode()) is not None


def glob_matcher(globs: str | Sequence[str]) -> Matcher:
    """fnmatch's meaning (`*`, `?`, `[seq]`, `[!seq]`; `*` also matches `/`), case-insensitive,
    against the whole value; several globs: any of them (one RE2 alternation, one pass)."""
    globs = (globs,) if isinstance(globs, str) else globs
    pattern = "|".join(f"(?:{glob_to_re2(g)})" for g in globs)
    full = _compile(pattern, _options(case_sensitive=False, dot_nl=True)).fullmatch
    return lambda value: full(value[:MATCH_LIMIT].encode()) is not None


def _class_char(c: str) -> str:
    return "\\" + c if c in "\\]^-[" else c


_NEVER = r"[^\x00-\x{10FFFF}]"  # an empty set: RE2 has no (?!)


def glob_to_re2(glob: str) -> str:
    """A shell glob as an RE2 pattern, following fnmatch.translate's reading of brackets: `[`
    without a closing `]` is literal, a `]` right after `[` or `[!` is a member, `-` between
    two members is a range (an inverted range is empty), at either end it is literal."""
    out: list[str] = []
    i, n = 0, len(glob)
    while i < n:
        c = glob[i]
        i += 1
        if c == "*":
            if not out or out[-1] != ".*":
                out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            j = i
            if j < n and glob[j] == "!":
                j += 1
            if j < n and glob[j] == "]":
                j += 1
            while j < n and glob[j] != "]":
                j += 1
            if j >= n:
                out.append(r"\[")
                continue
            body, i = glob[i:j], j + 1
            negate = body.startswith("!")
            if negate:
                body = body[1:]
            members: list[str] = []
            k = 0
            while k < len(body):
                if k + 2 < len(body) and body[k + 1] == "-":
                    lo, hi = body[k], body[k + 2]
                    if lo <= hi:
                        members.append(f"{_class_char(lo)}-{_class_char(hi)}")
                    k += 3
                else:
                    members.append(_class_char(body[k]))
                    k += 1
            if members:
                out.append(("[^" if negate else "[") + "".join(members) + "]")
            else:
                out.append("." if negate else _NEVER)
        else:
            out.append(re2.escape(c))
    return "".join(out)
