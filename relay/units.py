"""Durations and sizes as people write them in the configuration.

Durations carry a unit always ("250ms", "30s", "10m", "2h", "1d", "1m30s"): a bare
number is refused because "30" could mean seconds or milliseconds and a wrong guess
is silent. Sizes may be bare byte counts ("512"); "KiB"/"MiB"/... are powers of 1024,
"KB"/"MB"/... powers of 1000. Everything raises ``ValueError`` with a message fit to
show the operator; nothing here knows about TOML.
"""

from __future__ import annotations

import re

_DURATION_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
# "ms" before "m" so the alternation never stops at the "m" of "ms"
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|d|h|m|s)")
_BARE_NUMBER = re.compile(r"\+?\d+(?:\.\d*)?")
_SIZE_UNITS = {
    "": 1, "B": 1,
    "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4,
    "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4,
}
_SIZE = re.compile(r"(\d+)([A-Za-z]*)")


def parse_duration(text: str) -> float:
    """Parse a duration such as "250ms", "30s", "1m30s" into seconds (>= 0).

    Parts must come from the largest unit down, each unit at most once.
    """
    if not isinstance(text, str):
        raise ValueError(f"a duration must be a string such as '30s', not {text!r}")
    s = text.strip()
    if not s:
        raise ValueError("empty duration: write e.g. '30s' or '250ms'")
    if s.startswith("-"):
        raise ValueError(f"duration '{text}' is negative")
    if _BARE_NUMBER.fullmatch(s):
        raise ValueError(f"duration '{text}' needs a unit (ms, s, m, h, d), e.g. '{s}s'")
    total = 0.0
    pos = 0
    order = list(_DURATION_UNITS)
    last = -1
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if m is None:
            raise ValueError(
                f"cannot read duration '{text}': use a number and a unit "
                "(ms, s, m, h, d), e.g. '30s', '10m', '1m30s'"
            )
        rank = order.index(m.group(2))
        if rank <= last:
            raise ValueError(f"duration '{text}': write units largest first, each once (e.g. '1h30m')")
        last = rank
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    return total


def parse_size(text: str) -> int:
    """Parse a size such as "512", "16KiB", "64MiB" or "16KB" into bytes (>= 0)."""
    if not isinstance(text, str):
        raise ValueError(f"a size must be a string such as '64KiB', not {text!r}")
    s = text.strip()
    if not s:
        raise ValueError("empty size: write e.g. '64KiB' or '16MiB'")
    if s.startswith("-"):
        raise ValueError(f"size '{text}' is negative")
    m = _SIZE.fullmatch(s)
    if m is None:
        raise ValueError(
            f"cannot read size '{text}': use whole numbers with B, KiB, MiB, GiB, TiB "
            "(1024-based) or KB, MB, GB, TB (1000-based), e.g. '64KiB'"
        )
    unit = m.group(2)
    factor = _SIZE_UNITS.get(unit)
    if factor is None:
        raise ValueError(f"size '{text}': unknown unit '{unit}' (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)")
    return int(m.group(1)) * factor


def format_size(n: int) -> str:
    """Render a byte count the way a person would write it in the config ("16KiB", "1500B").

    The result parses back to ``n`` with :func:`parse_size`.
    """
    for unit in ("TiB", "GiB", "MiB", "KiB", "TB", "GB", "MB", "KB"):
        factor = _SIZE_UNITS[unit]
        if n >= factor and n % factor == 0:
            return f"{n // factor}{unit}"
    return f"{n}B"


def format_duration(seconds: float) -> str:
    """Render seconds as a config-style duration ("250ms", "1m30s", "2h").

    Whole milliseconds round-trip through :func:`parse_duration`; finer values are
    rounded to the millisecond.
    """
    ms = round(seconds * 1000)
    if ms == 0:
        return "0s"
    parts = []
    for unit in ("d", "h", "m", "s", "ms"):
        size = round(_DURATION_UNITS[unit] * 1000)
        count, ms = divmod(ms, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
