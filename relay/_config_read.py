"""Typed, problem-collecting access to parsed TOML tables.

The config builders read every value through a :class:`Table`. A wrong value never
raises: it is recorded as a :class:`~relay.errors.ConfigProblem` (file, key path,
line) and the reader hands back the default, so checking carries on and the operator
sees every problem of the file at once. The builder raises one ``ConfigError`` at
the end when anything was recorded, so placeholder values never escape.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from relay._toml_locate import find_line, join_key, locate_keys
from relay.errors import ConfigProblem
from relay.units import format_duration, format_size, parse_duration, parse_size

NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
NAME_RULE = "a name of letters, digits, '_' and '-' starting with a letter"
#: an HTTP header name: an RFC 9110 token without "*", which config uses to mark a prefix
HEADER_NAME = re.compile(r"[!#$%&'+.^_`|~0-9A-Za-z-]+")

D = TypeVar("D")
L = TypeVar("L", bound=str)
N = TypeVar("N", int, float)


class Problems:
    """Every problem found in one file, each located by key path and, when found, line."""

    def __init__(self, file: str, text: str) -> None:
        self.file = file
        self.items: list[ConfigProblem] = []
        self._text = text
        self._lines: dict[str, int] | None = None

    def add(self, key: str, message: str) -> None:
        """Record a problem at key path ``key`` ("" = the file as a whole)."""
        line = None
        if key:
            if self._lines is None:  # scan the text only once something is wrong
                self._lines = locate_keys(self._text)
            line = find_line(self._lines, key)
        self.items.append(ConfigProblem(self.file, key, message, line))


class Table:
    """One TOML table at key path ``key``; unknown keys are reported on construction.

    ``label`` (e.g. "flow 'orders'") is appended to messages so that a problem in
    ``flow[2]`` also names the flow.
    """

    def __init__(
        self,
        problems: Problems,
        data: dict[str, Any],
        key: str,
        allowed: Iterable[str],
        label: str = "",
    ) -> None:
        self.problems = problems
        self.data = data
        self.key = key
        self.label = label
        allowed = tuple(allowed)
        for name in data:
            if name not in allowed:
                close = difflib.get_close_matches(name, allowed, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                self.problem(name, f"unknown key '{name}'{hint}")

    def path(self, name: str) -> str:
        """The key path of ``name`` in this table."""
        return join_key(self.key, name)

    def problem(self, name: str, message: str) -> None:
        """Record a problem with key ``name`` of this table ("" = the table itself)."""
        self.report(self.path(name) if name else self.key, message)

    def report(self, key: str, message: str) -> None:
        """Record a problem at key path ``key``, below this table."""
        self.problems.add(key, f"{message} ({self.label})" if self.label else message)

    def has(self, name: str) -> bool:
        return name in self.data

    def _typed(self, name: str, check: Callable[[Any], bool], want: str) -> Any:
        """The raw value of ``name`` if present and passing ``check``; else None."""
        value = self.data.get(name)
        if value is None:
            return None
        if not check(value):
            self.problem(name, f"must be {want}, not {describe(value)}")
            return None
        return value

    def require_str(self, name: str) -> str:
        """A required non-empty string; "" (and a recorded problem) when absent or wrong."""
        value = self.string(name, None)
        if value is None:
            if name not in self.data:
                self.problem(name, f"required key '{name}' is missing")
            return ""
        if not value:
            self.problem(name, "must not be empty")
        return value

    def string(self, name: str, default: D) -> str | D:
        value = self._typed(name, lambda v: isinstance(v, str), "a string")
        return default if value is None else str(value)

    def strings(self, name: str, default: D, *, allow_empty: bool = False) -> tuple[str, ...] | D:
        """A list of strings; duplicates and (unless ``allow_empty``) an empty list are problems."""
        value = self._typed(
            name,
            lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
            'a list of strings, e.g. ["a", "b"]',
        )
        if value is None:
            return default
        if not value and not allow_empty:
            self.problem(name, "must not be an empty list")
            return default
        seen: set[str] = set()
        for i, item in enumerate(value):
            if item in seen:
                self.report(f"{self.path(name)}[{i}]", f"'{item}' is listed twice")
            seen.add(item)
        return tuple(value)

    def boolean(self, name: str, default: bool) -> bool:
        value = self._typed(name, lambda v: isinstance(v, bool), "true or false")
        return default if value is None else bool(value)

    def header_patterns(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        """Header names, lowercased; a trailing "*" makes one a prefix ("x-foo-*")."""
        out = []
        for i, header in enumerate(self.strings(name, default, allow_empty=True)):
            if HEADER_NAME.fullmatch(header.removesuffix("*")):
                out.append(header.lower())
            else:
                self.report(f"{self.path(name)}[{i}]", f"'{header}' is not a header name or prefix")
        return tuple(out)

    def integer(self, name: str, default: D, lo: int, hi: int) -> int | D:
        value = self._typed(
            name, lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"
        )
        if value is None:
            return default
        return self._bounded(name, int(value), default, lo, hi, str)

    def choice(self, name: str, default: L, choices: tuple[L, ...]) -> L:
        value = self.string(name, None)
        if value is None:
            return default
        for option in choices:
            if value == option:
                return option
        self.problem(name, f"'{value}' is not one of {', '.join(choices)}")
        return default

    def duration(self, name: str, default: D, lo: float, hi: float) -> float | D:
        """A duration string ("30s"); a bare number is a problem (its unit is ambiguous)."""
        value = self.data.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            self.problem(name, f'a duration needs a unit: write "{value}s" or "{value}ms"')
            return default
        want = 'a duration such as "30s"'
        return self._parsed(name, default, parse_duration, want, lo, hi, format_duration)

    def size(self, name: str, default: D, lo: int, hi: int) -> int | D:
        """A size string ("64KiB") or a plain integer byte count."""
        value = self.data.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return self._bounded(name, value, default, lo, hi, format_size)
        return self._parsed(name, default, parse_size, 'a size such as "64KiB"', lo, hi, format_size)

    def file_path(self, name: str, default: D) -> str | D:
        """A filesystem path, made absolute against the current directory."""
        value = self.string(name, None)
        if value is None:
            return default
        if not value or "\0" in value:
            self.problem(name, "must be a non-empty path")
            return default
        return os.path.abspath(value)

    def table(self, name: str) -> dict[str, Any] | None:
        value = self._typed(name, lambda v: isinstance(v, dict), "a table")
        return value if isinstance(value, dict) else None

    def _parsed(
        self,
        name: str,
        default: D,
        parse: Callable[[str], N],
        want: str,
        lo: N,
        hi: N,
        fmt: Callable[[N], str],
    ) -> N | D:
        text = self._typed(name, lambda v: isinstance(v, str), want)
        if text is None:
            return default
        try:
            value = parse(text)
        except ValueError as e:
            self.problem(name, str(e))
            return default
        return self._bounded(name, value, default, lo, hi, fmt)

    def _bounded(
        self, name: str, value: N, default: D, lo: N, hi: N, fmt: Callable[[N], str]
    ) -> N | D:
        if lo <= value <= hi:
            return value
        self.problem(name, f"{fmt(value)} is out of range ({fmt(lo)} .. {fmt(hi)})")
        return default


def array_of_tables(root: Table, name: str) -> list[tuple[int, dict[str, Any]]]:
    """The elements of ``[[name]]`` with their indexes; a problem if it is something else."""
    value = root.data.get(name)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        root.problem(name, f"must be written as [[{name}]] sections")
        return []
    return list(enumerate(value))


def label(kind: str, data: dict[str, Any]) -> str:
    """ "flow 'orders'" for a table with a usable name, else "" (the key path says enough)."""
    name = data.get("name")
    return f"{kind} '{name}'" if isinstance(name, str) and name else ""


def describe(value: object) -> str:
    """A short, TOML-flavoured description of a parsed value for error messages."""
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return f'the string "{value}"'
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return f"a {type(value).__name__}"
