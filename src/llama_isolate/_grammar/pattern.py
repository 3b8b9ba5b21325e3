"""JSON-schema `pattern`s: checked against what a grammar can enforce cheaply, and spelled for the converter.

What passes, between the ``^`` and ``$`` anchors every pattern needs:
- literal characters, except ``"``, ``\\``, control characters and characters
  beyond the Basic Multilingual Plane (they would break the JSON string, or
  the grammar's text);
- ``\\d``, ``\\w`` and escaped punctuation (``\\.``, ``\\-``, ...);
- classes ``[a-z0-9_]`` (not negated, not empty);
- groups ``( )`` and alternatives ``|`` (no empty branch, no ``(?...)``);
- quantifiers ``? * + {m} {m,} {m,n}`` after something to repeat, not lazy.

Refused besides: ``.`` and other escapes (``\\s``, ``\\b``, back-references),
and a repeated group that repeats something inside it (``(a{0,100}){0,100}``,
``(a*)*``): llama.cpp's grammar works through such nesting by brute force,
and one such pattern stalled every sequence of the engine for 22 s. So do
stray ``]`` and ``}``, on which llama-cpp-python's converter loops forever.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .._errors import LlamaSchemaError

MAX_PATTERN = 512  # characters
MAX_REPEATS = 2000  # llama.cpp's cap on a grammar's repetitions, for all the pattern's bounds together
_SHORTHANDS = {"d": "0-9", "w": "a-zA-Z0-9_"}
_PUNCTUATION = frozenset(".*+?()[]{}|/-^$:,;!=<>@#%&'~`")
_BOUNDS = re.compile(r"\{(\d{1,4})(,(\d{0,4}))?\}")


@dataclass
class _Group:
    repeats_inside: bool = False  # something in it has a quantifier
    branch_empty: bool = True


def translate(pattern: Any, path: str) -> str:
    """`pattern` as the converter must be given it; `LlamaSchemaError` says what is refused and why."""
    if not isinstance(pattern, str):
        raise LlamaSchemaError("pattern must be a string", path)
    if len(pattern) > MAX_PATTERN:
        raise LlamaSchemaError(f"a pattern of {len(pattern)} characters; {MAX_PATTERN} at most", path)
    if not (pattern.startswith("^") and pattern.endswith("$") and not pattern.endswith("\\$")) or len(pattern) < 3:
        raise LlamaSchemaError(
            f"pattern {pattern!r} must be anchored with ^ and $ around something "
            "(an unanchored pattern allows any text around it)",
            path,
        )
    try:
        re.compile(pattern)
    except re.error as exc:
        raise LlamaSchemaError(f"pattern {pattern!r} is not a valid regular expression: {exc}", path) from exc
    return "^" + _Translation(pattern, path).run() + "$"


class _Translation:
    def __init__(self, pattern: str, path: str) -> None:
        self.pattern, self.path = pattern, path
        self.body = pattern[1:-1]
        self.out: list[str] = []
        self.groups = [_Group()]
        self.repeatable: _Group | bool = False  # what a quantifier here would repeat (a group, a single atom)
        self.repeats = 0

    def refuse(self, why: str) -> LlamaSchemaError:
        return LlamaSchemaError(f"pattern {self.pattern!r}: {why}", self.path)

    def run(self) -> str:
        i = 0
        while i < len(self.body):
            i = self.step(i)
        if len(self.groups) > 1:
            raise self.refuse("a group is not closed")
        if self.groups[0].branch_empty:
            raise self.refuse("an empty alternative")
        return "".join(self.out)

    def atom(self, text: str, group: _Group | None = None) -> None:
        self.out.append(text)
        self.groups[-1].branch_empty = False
        self.repeatable = group if group is not None else True

    def step(self, i: int) -> int:
        c = self.body[i]
        self.check_char(c)
        special = {
            "\\": self.escaped,
            "[": self.char_class,
            "(": self.open_group,
            ")": self.close_group,
            "|": self.alternative,
        }.get(c)
        if special is not None:
            return special(i)
        if c in "*+?{":
            return self.quantifier(i)
        refusal = {
            ".": "'.' is not supported; use a class such as [a-z]",
            "^": "^ is only supported at the start",
            "$": "$ is only supported at the end",
            "]": "a ']' outside a class",
            "}": "a '}' that ends no quantifier",
        }.get(c)
        if refusal:
            raise self.refuse(refusal)
        self.atom(c)
        return i + 1

    def escaped(self, i: int) -> int:
        self.atom(f"[{self.escape(i + 1, in_class=False)}]")
        return i + 2

    def open_group(self, i: int) -> int:
        if self.body[i + 1 : i + 2] == "?":
            raise self.refuse("(?...) groups are not supported")
        self.groups.append(_Group())
        self.out.append("(")
        self.repeatable = False
        return i + 1

    def alternative(self, i: int) -> int:
        if self.groups[-1].branch_empty:
            raise self.refuse("an empty alternative")
        self.out.append("|")
        self.groups[-1].branch_empty = True
        self.repeatable = False
        return i + 1

    def check_char(self, c: str) -> None:
        if ord(c) > 0xFFFF:
            raise self.refuse(f"{c!r}: characters beyond the Basic Multilingual Plane are not supported")
        if ord(c) < 0x20 or c == '"':
            raise self.refuse(f"{c!r} cannot be written raw inside a JSON string")

    def escape(self, i: int, *, in_class: bool) -> str:
        nxt = self.body[i] if i < len(self.body) else ""
        if nxt in _SHORTHANDS:
            return _SHORTHANDS[nxt]
        if nxt in _PUNCTUATION:
            return f"\\x{ord(nxt):02X}"
        raise self.refuse(f"the escape \\{nxt} is not supported" + (" in a class" if in_class else ""))

    def char_class(self, i: int) -> int:
        if self.body[i + 1 : i + 2] in ("^", "]", ""):
            raise self.refuse("negated, empty and ']'-first classes are not supported")
        j, inside = i + 1, []
        while j < len(self.body) and self.body[j] != "]":
            c = self.body[j]
            self.check_char(c)
            if c == "[":
                raise self.refuse("a '[' inside a class")
            if c == "\\":
                inside.append(self.escape(j + 1, in_class=True))
                j += 2
            else:
                inside.append(c)
                j += 1
        if j >= len(self.body):
            raise self.refuse("a class is not closed")
        self.atom("[" + "".join(inside) + "]")
        return j + 1

    def close_group(self, i: int) -> int:
        if len(self.groups) == 1:
            raise self.refuse("a ')' closes no group")
        group = self.groups.pop()
        if group.branch_empty:
            raise self.refuse("an empty alternative")
        self.groups[-1].repeats_inside |= group.repeats_inside
        self.out.append(")")
        self.atom("", group)
        return i + 1

    def quantifier(self, i: int) -> int:
        target = self.repeatable
        if target is False:
            raise self.refuse("a quantifier with nothing to repeat")
        c = self.body[i]
        if c == "{":
            bounds = _BOUNDS.match(self.body, i)
            if bounds is None:
                raise self.refuse("a '{' that starts no quantifier {m}, {m,} or {m,n}")
            low = int(bounds[1])
            high = low if bounds[2] is None else (int(bounds[3]) if bounds[3] else None)
            if high is not None and high < low:
                raise self.refuse(f"{bounds[0]} repeats fewer times at most than at least")
            text, end = bounds[0], bounds.end()
        else:
            low, high, text, end = (0, 1, c, i + 1) if c == "?" else (int(c == "+"), None, c, i + 1)
        if self.body[end : end + 1] in ("?", "+", "*", "{"):
            raise self.refuse("lazy, possessive or stacked quantifiers are not supported")
        self.repeats += high if high is not None else max(low, 1)
        if self.repeats > MAX_REPEATS:
            raise self.refuse(f"more than {MAX_REPEATS} repetitions in all")
        if isinstance(target, _Group) and target.repeats_inside and (high is None or high > 1):
            raise self.refuse("a repeated group may not repeat anything inside it (the grammar's work explodes)")
        self.groups[-1].repeats_inside = True
        self.out.append(text)
        self.repeatable = False
        return end
