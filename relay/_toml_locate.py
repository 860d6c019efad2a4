"""Find the line on which a key of a TOML document is written.

tomllib reports lines only for syntax errors, yet an operator fixing
``flow[2].allow.groups`` wants to be sent to the line. This is a small structural
scanner for documents tomllib has already accepted: it follows table headers,
arrays of tables, dotted keys, inline tables and arrays, and records the first line
of every key path, in the same spelling the config checker uses
(``server.listen[1]``, ``sink.api.timeout``, ``flow[2].headers.set."X-Flow"``).
It never interprets values and never raises: a construct it does not follow just
yields no line.
"""

from __future__ import annotations

import bisect
import json
import re

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_TOKEN = re.compile(
    r"""
    (?P<nl>\n)
  | (?P<space>[ \t\r]+)
  | (?P<comment>\#[^\n]*)
  | (?P<mlbasic>\"\"\"(?:[^"\\]|\\.|"(?!""))*\"\"\"(?:"{1,2}(?!"))?)
  | (?P<mlliteral>'''.*?'''(?:'{1,2}(?!'))?)
  | (?P<basic>"(?:[^"\\\n]|\\.)*")
  | (?P<literal>'[^'\n]*')
  | (?P<punct>[\[\]{}=,.])
  | (?P<bare>[^\s\[\]{}=,.\#"']+)
  | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)
_STRING_KINDS = ("basic", "literal")
_Token = tuple[str, str, int]  # kind, text, offset


def join_key(prefix: str, key: str) -> str:
    """Append one key to a key path, quoting it when it is not a bare TOML key."""
    part = key if _BARE_KEY.fullmatch(key) else json.dumps(key)
    return f"{prefix}.{part}" if prefix else part


def parent_key(path: str) -> str:
    """The key path one level up: ``a.b[2]`` → ``a.b`` → ``a`` → ``""``."""
    if path.endswith("]"):
        return path[: path.rfind("[")]
    if path.endswith('"'):
        cut = path.rfind('"', 0, len(path) - 1)
    else:
        cut = path.rfind(".") + 1
    return path[: max(cut - 1, 0)]


def find_line(lines: dict[str, int], path: str) -> int | None:
    """The line of ``path``, else of its nearest written ancestor, else None."""
    while path:
        line = lines.get(path)
        if line is not None:
            return line
        path = parent_key(path)
    return None


def locate_keys(text: str) -> dict[str, int]:
    """Map every key path written in ``text`` to its 1-based line number."""
    return _Scanner(text).run()


class _Scanner:
    def __init__(self, text: str) -> None:
        self._starts = [0] + [m.end() for m in re.finditer("\n", text)]
        self._toks: list[_Token] = [
            (m.lastgroup or "other", m.group(), m.start())
            for m in _TOKEN.finditer(text)
            if m.lastgroup not in ("space", "comment")
        ]
        self._i = 0
        self._lines: dict[str, int] = {}
        self._aot: dict[str, int] = {}  # array-of-tables path → index of its last element

    def run(self) -> dict[str, int]:
        table = ""
        while self._i < len(self._toks):
            kind, text, pos = self._toks[self._i]
            if kind == "nl":
                self._i += 1
            elif text == "[":
                table = self._header()
            else:
                keys = self._key()
                if keys and self._peek() == "=":
                    self._i += 1
                    path = self._record(table, keys, pos)
                    self._value(path)
                self._skip_line()
        return self._lines

    def _peek(self) -> str:
        return self._toks[self._i][1] if self._i < len(self._toks) else ""

    def _line(self, pos: int) -> int:
        return bisect.bisect_right(self._starts, pos)

    def _record(self, prefix: str, keys: list[str], pos: int) -> str:
        path = prefix
        for key in keys:
            path = join_key(path, key)
            self._lines.setdefault(path, self._line(pos))
        return path

    def _header(self) -> str:
        pos = self._toks[self._i][2]
        self._i += 1
        array = self._peek() == "[" and self._toks[self._i][2] == pos + 1
        if array:
            self._i += 1
        keys = self._key()
        path = ""
        for n, key in enumerate(keys):
            path = join_key(path, key)
            if array and n == len(keys) - 1:
                index = self._aot.get(path, -1) + 1
                self._aot[path] = index
                path = f"{path}[{index}]"
            elif path in self._aot:
                path = f"{path}[{self._aot[path]}]"
            self._lines.setdefault(path, self._line(pos))
        self._skip_line()
        return path

    def _key(self) -> list[str]:
        keys: list[str] = []
        while self._i < len(self._toks):
            kind, text, _ = self._toks[self._i]
            if kind == "bare":
                keys.append(text)
            elif kind in _STRING_KINDS:
                keys.append(_unquote(kind, text))
            else:
                break
            self._i += 1
            if self._peek() != ".":
                break
            self._i += 1
        return keys

    def _value(self, path: str) -> None:
        opener = self._peek()
        if opener not in ("[", "{"):
            self._i += 1
            return
        self._i += 1
        closer = "]" if opener == "[" else "}"
        index = 0
        while self._i < len(self._toks):
            kind, text, pos = self._toks[self._i]
            if kind == "nl" or text == ",":
                self._i += 1
            elif text == closer:
                self._i += 1
                return
            elif opener == "[":
                item = f"{path}[{index}]"
                self._lines.setdefault(item, self._line(pos))
                self._value(item)
                index += 1
                self._skip_scalar_tail(closer)
            else:
                keys = self._key()
                if not keys or self._peek() != "=":
                    return
                self._i += 1
                self._value(self._record(path, keys, pos))
                self._skip_scalar_tail(closer)

    def _skip_scalar_tail(self, closer: str) -> None:
        # a number such as 1.5 or a local date-time with a space is several tokens
        while self._i < len(self._toks) and self._peek() not in (",", closer, "[", "{"):
            self._i += 1

    def _skip_line(self) -> None:
        while self._i < len(self._toks) and self._toks[self._i][0] != "nl":
            self._i += 1


def _unquote(kind: str, text: str) -> str:
    if kind == "literal":
        return text[1:-1]
    try:
        value = json.loads(text)
    except ValueError:
        return text[1:-1]
    return value if isinstance(value, str) else text[1:-1]
