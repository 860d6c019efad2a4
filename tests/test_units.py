"""Durations and sizes as written in the configuration."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.units import format_duration, format_size, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("30s", 30.0),
        ("10m", 600.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("1m30s", 90.0),
        ("1h30m", 5400.0),
        ("1d2h3m4s5ms", 93784.005),
        ("1.5s", 1.5),
        ("0s", 0.0),
        (" 30s ", 30.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("30", "needs a unit"),
        ("1.5", "needs a unit"),
        ("", "empty duration"),
        ("   ", "empty duration"),
        ("-1s", "negative"),
        ("30 s", "cannot read"),
        ("30sec", "cannot read"),
        ("abc", "cannot read"),
        ("1s1m", "largest first"),
        ("1m1m", "largest first"),
        ("s", "cannot read"),
        ("1e3s", "cannot read"),
    ],
)
def test_parse_duration_refuses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("0", 0),
        ("512", 512),
        ("512B", 512),
        ("16KiB", 16 * 1024),
        ("64MiB", 64 * 1024**2),
        ("1GiB", 1024**3),
        ("1TiB", 1024**4),
        ("16KB", 16000),
        ("1MB", 1_000_000),
        ("1GB", 1_000_000_000),
        ("1TB", 1000**4),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty size"),
        ("-1", "negative"),
        ("-1KiB", "negative"),
        ("1.5MiB", "whole numbers"),
        ("16kib", "unknown unit 'kib'"),
        ("16 KiB", "cannot read"),
        ("KiB", "cannot read"),
        ("lots", "cannot read"),
        ("16K", "unknown unit 'K'"),
    ],
)
def test_parse_size_refuses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_size(text)


def test_non_strings_are_refused() -> None:
    with pytest.raises(ValueError, match="must be a string"):
        parse_duration(30)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must be a string"):
        parse_size(512)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0B"), (1500, "1500B"), (16 * 1024, "16KiB"), (16000, "16KB"), (3 * 1024**3, "3GiB"), (1024**4, "1TiB")],
)
def test_format_size(size: int, text: str) -> None:
    assert format_size(size) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.0, "0s"), (0.25, "250ms"), (30.0, "30s"), (90.0, "1m30s"), (7200.0, "2h"), (86400.0, "1d"), (1.5, "1s500ms")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@given(st.integers(min_value=0, max_value=2**50))
def test_format_size_round_trips(size: int) -> None:
    assert parse_size(format_size(size)) == size


@given(st.integers(min_value=0, max_value=10**10))
def test_format_duration_round_trips_whole_milliseconds(ms: int) -> None:
    assert round(parse_duration(format_duration(ms / 1000)) * 1000) == ms
