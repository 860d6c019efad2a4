"""The chunked transfer coding's framing, encode_chunk and LAST_CHUNK, on both
implementations, with a property test that httptools (which decodes chunked bodies for
relay on both sides) reads back every body framed this way, however it is split."""

from __future__ import annotations

import array
from types import ModuleType

import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay import _fastpath_py
from support.impls import COMPILED, IMPLS, NOT_BUILT

SIZES = [1, 9, 10, 15, 16, 17, 255, 256, 4095, 4096, 16384, 65535, 65536, 262144, 1_000_000]


def test_same_public_api() -> None:
    if COMPILED is None:
        pytest.skip(NOT_BUILT)
    for name in ("encode_chunk", "LAST_CHUNK"):
        assert name in COMPILED.__all__ and name in _fastpath_py.__all__
    assert COMPILED.LAST_CHUNK == _fastpath_py.LAST_CHUNK == b"0\r\n\r\n"


@pytest.mark.parametrize("size", SIZES)
def test_encode_chunk(impl: ModuleType, size: int) -> None:
    for data in (b"x" * size, bytearray(size), memoryview(b"y" * size)):
        line, payload, end = impl.encode_chunk(data)
        assert (line, end) == (b"%x\r\n" % size, b"\r\n") and payload is data
    # again, now that the compiled side may have the line cached
    assert impl.encode_chunk(b"x" * size)[0] == b"%x\r\n" % size


def test_encode_chunk_counts_bytes_not_items(impl: ModuleType) -> None:
    words = memoryview(array.array("I", [1, 2, 3]))
    assert impl.encode_chunk(words)[0] == b"%x\r\n" % words.nbytes


def test_an_empty_chunk_is_refused(impl: ModuleType) -> None:
    for empty in (b"", bytearray(), memoryview(b"abc")[3:]):
        with pytest.raises(ValueError, match="would end the body"):
            impl.encode_chunk(empty)


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.one_of(st.integers(1, 300), st.sampled_from(SIZES)), max_size=40))
def test_size_lines_are_right_whatever_the_order(sizes: list[int]) -> None:
    pieces = [bytes(size) for size in sizes] * 2  # the second round meets cached lines
    for impl in IMPLS:
        assert [impl.encode_chunk(piece)[0] for piece in pieces] == [b"%x\r\n" % len(p) for p in pieces]


class _Body:
    def __init__(self) -> None:
        self.data = b""
        self.complete = False

    def on_body(self, data: bytes) -> None:
        self.data += data

    def on_message_complete(self) -> None:
        self.complete = True


@settings(max_examples=200, deadline=None)
@given(payloads=st.lists(st.binary(min_size=1, max_size=200), max_size=12), data=st.data())
def test_httptools_reads_back_what_is_framed(payloads: list[bytes], data: st.DataObject) -> None:
    for impl in IMPLS:
        framed = b"".join(b"".join(impl.encode_chunk(p)) for p in payloads) + impl.LAST_CHUNK
        wire = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + framed
        cuts = sorted(set(data.draw(st.lists(st.integers(1, len(wire) - 1), max_size=8))))
        body = _Body()
        parser = httptools.HttpRequestParser(body)
        for start, stop in zip([0, *cuts], [*cuts, len(wire)]):
            parser.feed_data(wire[start:stop])
        assert body.complete and body.data == b"".join(payloads)
