"""A fast check generated from a JSON Schema: straight-line Python that answers only "certainly
valid" (no exceptions, no error messages, strict types), for the validator that stands behind it.

`compile_check(schema)` emits the check's source and builds it with `exec`. It is sound by
construction: it supports a small set of keywords (those of schemas/event.schema.json), and a
schema using any other keyword gives an inactive check (`FastCheck.active` False, `reason` the
keyword), which accepts nothing, so every value then takes the full validator. events.py logs
that, and tests/test_events.py asserts the shipped schema compiles.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class _Unsupported(Exception):
    pass


#: keywords that never change validity
_ANNOTATIONS = frozenset({
    "$schema", "$id", "$comment", "$defs", "definitions", "title", "description", "default", "examples",
    "deprecated", "readOnly", "writeOnly",
})
# Two ways to check a type. `sure`: only exact Python types (a subclass, an integral float, … is
# left to the full validator). `maybe`: everything the full validator might accept.
_SURE_TYPES = {
    "object": ("type({v}) is dict", {dict}),
    "array": ("type({v}) is list", {list}),
    "string": ("type({v}) is str", {str}),
    "integer": ("type({v}) is int", {int}),
    "number": ("(type({v}) is int or type({v}) is float)", {int, float}),
    "boolean": ("({v} is True or {v} is False)", {bool}),
    "null": ("{v} is None", {type(None)}),
}
_MAYBE_TYPES = {
    "object": "isinstance({v}, dict)",
    "array": "isinstance({v}, (list, tuple))",
    "string": "isinstance({v}, str)",
    "integer": "not isinstance({v}, _NOT_NUMBER)",
    "number": "not isinstance({v}, _NOT_NUMBER)",
    "boolean": "isinstance({v}, bool)",
    "null": "{v} is None",
}
_COMPARE = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}
# The same anchoring as fastjsonschema: an unescaped `$` only matches at the very end.
_DOLLAR = re.compile(r"(?<!\\)\$")
_FAIL_LINE = re.compile(r"^( *)if (.*): return False$")


class _Facts:
    """What earlier checks established about one value: its exact type, keys known present."""

    def __init__(self, types: frozenset[type] | None = None, present: frozenset[str] = frozenset()) -> None:
        self.types = types  # None: unknown
        self.present = present


class _Generator:
    """Generates `check(v) -> bool` from a JSON Schema, answering True only for valid values.

    Each subschema is emitted in one of two modes: `sure` (True only if valid) for what must
    hold, `maybe` (False only if invalid) for the conditions of `if` and `not`. Validity is that
    of fastjsonschema, which the generated check stands in front of.
    """

    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root
        self.defs: list[str] = []
        self.consts: dict[str, Any] = {}
        self.n = 0

    def _name(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    def _const(self, value: Any) -> str:
        name = self._name("_c")
        self.consts[name] = value
        return name

    def _function(self, schema: Any, sure: bool, depth: int) -> str:
        name = self._name("_s")
        body: list[str] = []
        self._emit(schema, "v", body, 1, depth, sure, _Facts())
        self.defs += [f"def {name}(v):", *body, "    return True", ""]
        return name

    def _resolve(self, ref: str) -> Any:
        if not ref.startswith("#/"):
            raise _Unsupported(ref)
        node: Any = self.root
        for part in ref[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return node

    def _strings(self, values: Any) -> str:
        if not isinstance(values, list) or not values or not all(type(x) is str for x in values):
            raise _Unsupported(f"enum/const {values!r}")  # JSON equality of non-strings: not here
        return self._const(frozenset(values))

    def _condition(self, schema: Any, v: str, facts: _Facts) -> str | None:
        """An exact expression for a discriminator (`required` and string `const`/`enum`), or None."""
        if not isinstance(schema, dict):
            return None
        is_dict = facts.types is not None and facts.types <= {dict}
        parts: list[str] = []
        for key, arg in schema.items():
            if key in _ANNOTATIONS:
                continue
            if key == "required" and isinstance(arg, list) and all(type(x) is str for x in arg):
                parts += [f"{x!r} in {v}" for x in arg if x not in facts.present]
                if is_dict:
                    facts = _Facts(facts.types, facts.present | frozenset(arg))
            elif key == "properties" and isinstance(arg, dict):
                for prop, sub in arg.items():
                    if not isinstance(sub, dict) or set(sub) - _ANNOTATIONS - {"const", "enum"} or len(sub.keys() & {"const", "enum"}) != 1:
                        return None
                    values = sub["enum"] if "enum" in sub else [sub["const"]]
                    if not isinstance(values, list) or not values or not all(type(x) is str for x in values):
                        return None
                    item = f"{v}[{prop!r}]"
                    check = f"(isinstance({item}, str) and {item} in {self._const(frozenset(values))})"
                    parts.append(check if prop in facts.present else f"({prop!r} not in {v} or {check})")
            else:
                return None
        expr = " and ".join(parts) or "True"
        return expr if is_dict else f"(not isinstance({v}, dict) or ({expr}))"

    def _emit(self, schema: Any, v: str, out: list[str], indent: int, depth: int, sure: bool, facts: _Facts) -> _Facts:
        """Append the checks of `schema` on variable `v`; return the facts known after them."""
        pad = "    " * indent
        fail = "return False"
        if depth > 32:
            raise _Unsupported("$ref depth")
        if schema is True:
            return facts
        if schema is False:
            out.append(f"{pad}{fail}")
            return facts
        if not isinstance(schema, dict):
            raise _Unsupported(repr(schema))
        unknown = set(schema) - _ANNOTATIONS - {
            "$ref", "type", "enum", "const", "minLength", "maxLength", "pattern", *_COMPARE, "required",
            "maxProperties", "minProperties", "properties", "additionalProperties", "maxItems", "minItems", "items",
            "allOf", "anyOf", "not", "if", "then", "else",
        }
        if unknown:
            raise _Unsupported(", ".join(sorted(unknown)))

        def guard(kind: type, maybe_guard: str, sure_guard: str) -> str | None:
            """The test that a keyword applies to `v`: None when it never does, "" when it always does."""
            if facts.types is None:
                return sure_guard if sure else maybe_guard
            if kind not in facts.types:
                return None
            return "" if facts.types <= {kind} else f"type({v}) is {kind.__name__}"

        def check(applies: str | None, failed: str) -> None:
            if applies is None:
                return
            out.append(f"{pad}if {applies + ' and ' if applies else ''}{failed}: {fail}")

        if "$ref" in schema:  # first: what it establishes (an object, keys present) helps the rest
            found = self._emit(self._resolve(schema["$ref"]), v, out, indent, depth + 1, sure, facts)
            if sure:
                facts = found
        if "type" in schema:
            arg = schema["type"]
            names = [arg] if isinstance(arg, str) else arg
            if not isinstance(names, list) or not names or any(t not in _SURE_TYPES for t in names):
                raise _Unsupported(f"type {arg!r}")
            if sure:
                out.append(f"{pad}if not ({' or '.join(_SURE_TYPES[t][0].format(v=v) for t in names)}): {fail}")
                known: set[type] = set().union(*(_SURE_TYPES[t][1] for t in names))
                facts = _Facts(frozenset(known if facts.types is None else known & facts.types), facts.present)
            else:
                out.append(f"{pad}if not ({' or '.join(_MAYBE_TYPES[t].format(v=v) for t in names)}): {fail}")
        for key in ("enum", "const"):
            if key in schema:
                values = self._strings(schema[key] if key == "enum" else [schema[key]])
                test = f"type({v}) is str" if sure else f"isinstance({v}, str)"
                out.append(f"{pad}if not ({test} and {v} in {values}): {fail}")
        if "minLength" in schema or "maxLength" in schema:
            low, high = int(schema.get("minLength", 0)), schema.get("maxLength")
            bounds = f"{low} <= len({v})" if high is None else f"{low} <= len({v}) <= {int(high)}"
            if low > 0 or high is not None:
                check(guard(str, f"isinstance({v}, str)", f"isinstance({v}, str)"), f"not ({bounds})")
        if "pattern" in schema:
            regex = self._const(re.compile(_DOLLAR.sub(r"\\Z", schema["pattern"])))
            check(guard(str, f"isinstance({v}, str)", f"isinstance({v}, str)"), f"not {regex}.search({v})")
        for key, op in _COMPARE.items():
            if key in schema:
                bound = schema[key]
                if type(bound) not in (int, float):
                    raise _Unsupported(f"{key} {bound!r}")
                if facts.types is not None:
                    numeric = facts.types & {int, float}
                    if numeric:
                        applies = "" if facts.types <= {int, float} else " or ".join(f"type({v}) is {t.__name__}" for t in sorted(numeric, key=str))
                        check(applies if not applies or len(numeric) == 1 else f"({applies})", f"not ({v} {op} {bound!r})")
                elif sure:  # anything number-like must be an int or float that satisfies the bound
                    out.append(f"{pad}if not isinstance({v}, _NOT_NUMBER) and not (type({v}) in _INT_FLOAT and {v} {op} {bound!r}): {fail}")
                else:
                    out.append(f"{pad}if type({v}) in _INT_FLOAT and not ({v} {op} {bound!r}): {fail}")
        present = facts.present
        is_object = guard(dict, f"isinstance({v}, dict)", f"isinstance({v}, dict)")
        if "required" in schema:
            names = schema["required"]
            if not isinstance(names, list) or not all(type(x) is str for x in names):
                raise _Unsupported("required")
            missing = [x for x in names if x not in present]
            if missing:
                check(is_object, f"not ({' and '.join(f'{x!r} in {v}' for x in missing)})")
            if is_object == "":
                present = present | frozenset(names)
                facts = _Facts(facts.types, present)
        for key, op in (("maxProperties", ">"), ("minProperties", "<")):
            if key in schema:
                check(is_object, f"len({v}) {op} {int(schema[key])}")
        if "properties" in schema and is_object is not None:
            block: list[str] = []
            inner_pad = pad + ("" if is_object == "" else "    ")
            inner_indent = indent + (0 if is_object == "" else 1)
            for prop, sub in schema["properties"].items():
                item = self._name("_x")
                inner: list[str] = []
                if prop in present:
                    self._emit(sub, item, inner, inner_indent, depth, sure, _Facts())
                    if inner:
                        block += [f"{inner_pad}{item} = {v}[{prop!r}]", *inner]
                else:
                    self._emit(sub, item, inner, inner_indent + 1, depth, sure, _Facts())
                    if inner:
                        block += [f"{inner_pad}{item} = {v}.get({prop!r}, _MISSING)", f"{inner_pad}if {item} is not _MISSING:", *inner]
            if block:
                if is_object:
                    out.append(f"{pad}if {is_object}:")
                out.extend(block)
        extra = schema.get("additionalProperties", True)
        if extra is not True and is_object is not None:
            self._each(v, out, indent, is_object, depth, sure, extra, self._const(frozenset(schema.get("properties", ()))))
        is_array = guard(list, f"isinstance({v}, (list, tuple))", f"isinstance({v}, (list, tuple))")
        for key, op in (("maxItems", ">"), ("minItems", "<")):
            if key in schema:
                check(is_array, f"len({v}) {op} {int(schema[key])}")
        if "items" in schema and is_array is not None:
            if not isinstance(schema["items"], (dict, bool)):
                raise _Unsupported("items as a list")
            self._each(v, out, indent, is_array, depth, sure, schema["items"], None)
        for sub in schema.get("allOf", ()):
            found = self._emit(sub, v, out, indent, depth, sure, facts)
            if sure:
                facts = found
        if "anyOf" in schema:
            exact = [self._condition(sub, v, facts) for sub in schema["anyOf"]]
            if all(e is not None for e in exact):
                calls = " or ".join(f"({e})" for e in exact)  # type: ignore[misc]
            else:
                calls = " or ".join(f"{self._function(sub, sure, depth)}({v})" for sub in schema["anyOf"])
            out.append(f"{pad}if not ({calls}): {fail}")
        if "not" in schema:
            # valid when the inner schema fails: surely when it surely fails, maybe unless it surely holds
            out.append(f"{pad}if {self._function(schema['not'], not sure, depth)}({v}): {fail}")
        if "if" in schema:
            then: list[str] = []
            other: list[str] = []
            self._emit(schema.get("then", True), v, then, indent + 1, depth, sure, facts)
            self._emit(schema.get("else", True), v, other, indent + 1, depth, sure, facts)
            if then or other:
                exact = self._condition(schema["if"], v, facts)
                if exact is not None:
                    out.append(f"{pad}if {exact}:")
                    out.extend(then or [f"{pad}    pass"])
                    if other:
                        out += [f"{pad}else:", *other]
                else:
                    holds = f"{self._function(schema['if'], True, depth)}({v})"
                    could = f"{self._function(schema['if'], False, depth)}({v})"
                    # Unsure whether the condition holds: apply both branches (never wrongly lenient).
                    out.append(f"{pad}if {holds}:")
                    out.extend(then or [f"{pad}    pass"])
                    out.append(f"{pad}elif not {could}:")
                    out.extend(other or [f"{pad}    pass"])
                    out.append(f"{pad}else:")
                    out.extend(then + other or [f"{pad}    pass"])
        return facts

    def _each(self, v: str, out: list[str], indent: int, applies: str, depth: int, sure: bool, schema: Any,
              known: str | None) -> None:
        """Check `schema` on every item of an array (`known` None) or on every value of an object
        whose key is not in the constant `known` (additionalProperties)."""
        pad = "    " * indent
        body = indent + (1 if applies else 0)
        item = self._name("_x")
        inner: list[str] = []
        self._emit(schema, item, inner, body + (2 if known else 1), depth, sure, _Facts())
        if not inner:
            return
        if applies:
            out.append(f"{pad}if {applies}:")
        if known is None:
            out.append(f"{'    ' * body}for {item} in {v}:")
        else:
            key = self._name("_k")
            out += [f"{'    ' * body}for {key}, {item} in {v}.items():", f"{'    ' * (body + 1)}if {key} not in {known}:"]
        out.extend(inner)

    @staticmethod
    def _merge(lines: list[str]) -> list[str]:
        """Consecutive `if A: return False` / `if B: …` at one depth → `if (A) or (B): return False`."""
        out: list[str] = []
        for line in lines:
            match = _FAIL_LINE.match(line)
            previous = _FAIL_LINE.match(out[-1]) if out else None
            if match and previous and match[1] == previous[1]:
                out[-1] = f"{match[1]}if ({previous[2]}) or ({match[2]}): return False"
            else:
                out.append(line)
        return out

    def compile(self) -> tuple[Any, str]:
        body: list[str] = []
        self._emit(self.root, "v", body, 1, 0, True, _Facts())
        source = "\n".join(self._merge([*self.defs, "def check(v):", *body, "    return True", ""]))
        namespace: dict[str, Any] = {
            "_MISSING": object(), "_NOT_NUMBER": (str, dict, list, tuple, bool, type(None)),
            "_INT_FLOAT": (int, float), **self.consts,
        }
        exec(compile(source, "<event.schema.json fast check>", "exec"), namespace)  # noqa: S102
        return namespace["check"], source


@dataclass(frozen=True)
class FastCheck:
    #: True only for values the schema accepts; always False when the schema did not compile
    check: Callable[[Any], bool]
    #: whether the schema compiled: when False, every value takes the full validator
    active: bool
    #: why it did not compile (the keyword or value it does not support), else None
    reason: str | None
    #: the generated Python ("" when it did not compile)
    source: str


def _never(value: Any) -> bool:
    return False


def compile_check(schema: dict[str, Any]) -> FastCheck:
    """The fast check of `schema`, or an inactive one that says why it could not be compiled."""
    try:
        check, source = _Generator(schema).compile()
    except (_Unsupported, KeyError, TypeError, ValueError, re.error) as exc:
        return FastCheck(_never, False, f"{type(exc).__name__}: {exc}", "")
    return FastCheck(check, True, None, source)
