"""The chunked transfer coding: ChunkedDecoder's every rule and the chunk framing, on both
implementations, and property tests holding the compiled decoder, its twin and an independent
one-shot reference decoder to each other on messages split at random points and fed as
bytes, bytearray or memoryview."""

from __future__ import annotations

import array
import re
from collections.abc import Callable, Iterable, Sequence
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay import _fastpath_py
from support.impls import COMPILED, IMPLS, NOT_BUILT
from relay.errors import BadRequest




Kind = Callable[[bytes], Any]
KINDS: dict[str, Kind] = {
    "bytes": bytes,
    "bytearray": bytearray,
    "memoryview": memoryview,
    "memoryview of bytearray": lambda b: memoryview(bytearray(b)),
}
#: what decoding came to: ("done", payload, where the message ended), ("pending", payload)
#: when the input ran out first, or ("error", reason)
Outcome = tuple[Any, ...]


def decode(impl: ModuleType, wire: bytes, cuts: Iterable[int] = (), kind: Kind = bytes, /,
           **limits: int) -> Outcome:
    """Feeds wire in the pieces cuts make, each converted by kind; stops once done."""
    decoder = impl.ChunkedDecoder(**limits)
    bounds = [0, *sorted({cut for cut in cuts if 0 < cut < len(wire)}), len(wire)]
    payload = b""
    for start, stop in zip(bounds, bounds[1:]):
        try:
            runs = decoder.feed(kind(wire[start:stop]))
        except BadRequest as error:
            return ("error", error.detail)
        payload += b"".join(runs)
        if decoder.done:
            return ("done", payload, start + decoder.tail)
    return ("pending", payload)


def byte_by_byte(impl: ModuleType, wire: bytes, kind: Kind = bytes, /, **limits: int) -> Outcome:
    return decode(impl, wire, range(len(wire)), kind, **limits)


def rejected(impl: ModuleType, wire: bytes, **limits: int) -> str:
    """The reason the decoder refuses wire, the same whether fed at once or byte by byte."""
    outcome = decode(impl, wire, **limits)
    assert outcome[0] == "error", outcome
    assert byte_by_byte(impl, wire, **limits) == outcome
    reason: str = outcome[1]
    return reason


def wire_of(impl: ModuleType, payloads: Sequence[bytes]) -> bytes:
    wire: bytes = b"".join(impl.encode_chunks(payloads)) + impl.LAST_CHUNK
    return wire


def test_same_public_api() -> None:
    if COMPILED is None:
        pytest.skip(NOT_BUILT)
    for name in ("ChunkedDecoder", "encode_chunk", "encode_chunks", "LAST_CHUNK"):
        assert name in COMPILED.__all__ and name in _fastpath_py.__all__
    assert COMPILED.LAST_CHUNK == _fastpath_py.LAST_CHUNK == b"0\r\n\r\n"


# -- valid messages ---------------------------------------------------------------------------

VALID = [
    (b"0\r\n\r\n", b""),
    (b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
    (b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", b"hello world"),
    (b"A\r\n0123456789\r\na\r\nabcdefghij\r\n0\r\n\r\n", b"0123456789abcdefghij"),  # either case
    (b"0005\r\nhello\r\n000\r\n\r\n", b"hello"),  # leading zeros are hex digits too
    (b"5\r\n\r\n\r\n\r\r\n0\r\n\r\n", b"\r\n\r\n\r"),  # data is never looked at
    (b"5;name\r\nhello\r\n0\r\n\r\n", b"hello"),
    (b"5;a=b;c;d=1\r\nhello\r\n0;last=yes\r\n\r\n", b"hello"),
    (b'5;a="quoted; with \\"escapes\\" and \\\\"\r\nhello\r\n0\r\n\r\n', b"hello"),
    (b'5;a="";b="\t\x80\xff"\r\nhello\r\n0\r\n\r\n', b"hello"),  # empty, HTAB, obs-text
    (b"5;!#$%&'*+-.^_`|~=x\r\nhello\r\n0\r\n\r\n", b"hello"),  # every tchar
    (b"5\r\nhello\r\n0\r\nExpires: never\r\nX-Sum:  abc \t\r\n\r\n", b"hello"),
    (b"0\r\nX-Empty:\r\nX-Obs-Text:\x80\xff\r\n\r\n", b""),
]


@pytest.mark.parametrize("wire, payload", VALID)
@pytest.mark.parametrize("kind", KINDS.values(), ids=KINDS.keys())
def test_valid_messages(impl: ModuleType, wire: bytes, payload: bytes, kind: Kind) -> None:
    expected = ("done", payload, len(wire))
    assert decode(impl, wire, (), kind) == expected
    assert byte_by_byte(impl, wire, kind) == expected
    assert reference_outcome(wire) == expected


def test_limits_are_inclusive(impl: ModuleType) -> None:
    assert decode(impl, b"10\r\n" + b"x" * 16 + b"\r\n0\r\n\r\n", max_chunk=16)[0] == "done"
    assert decode(impl, b"5;a=bc\r\nhello\r\n0\r\n\r\n", max_line=6)[0] == "done"
    assert decode(impl, b"0\r\nA:1\r\nB:2\r\n\r\n", max_line=3, max_trailers=6)[0] == "done"
    assert decode(impl, b"0\r\n\r\n", max_trailers=0)[0] == "done"
    big = b"%x\r\n" % 2**40
    assert decode(impl, big)[0] == "pending"  # the default max_chunk is 2**40
    assert decode(impl, b"7fffffffffffffff\r\n", max_chunk=2**63 - 1)[0] == "pending"


# -- invalid messages: the smuggling classics and every other rule ------------------------------

INVALID = [
    # the chunk size: hex digits only
    (b"0x5\r\nhello\r\n0\r\n\r\n", "bad chunk size"),
    (b"-5\r\nhello\r\n0\r\n\r\n", "bad chunk size"),
    (b"+5\r\nhello\r\n0\r\n\r\n", "bad chunk size"),
    (b" 5\r\nhello\r\n0\r\n\r\n", "bad chunk size"),
    (b"5 \r\nhello\r\n0\r\n\r\n", "bad chunk size"),
    (b"\t5\r\nhello\r\n0\r\n\r\n", "bad chunk size"),
    (b"5 ;a=b\r\nhello\r\n0\r\n\r\n", "bad chunk size"),  # no BWS before ";" either
    (b"\r\nhello\r\n0\r\n\r\n", "bad chunk size"),  # no digits
    (b"5g\r\nhello\r\n0\r\n\r\n", "bad chunk size"),
    (b"\xef\xbc\x95\r\n", "bad chunk size"),  # a full-width digit
    (b"ffffffffffffffffffffffff\r\n", "chunk too large"),
    (b"10000000001\r\n", "chunk too large"),  # 2**40 + 1
    (b"8000000000000000\r\n", "chunk too large"),  # 2**63 overflows signed 64 bits
    # line endings: CRLF exactly
    (b"5\nhello\r\n0\r\n\r\n", "bare LF in chunk size line"),
    (b"5;a=b\nhello\r\n0\r\n\r\n", "bare LF in chunk size line"),
    (b"5\rhello\r\n0\r\n\r\n", "bare CR in chunk size line"),
    (b"5\r\r\nhello\r\n0\r\n\r\n", "bare CR in chunk size line"),
    (b"5\r\nhello\n0\r\n\r\n", "missing CRLF after chunk data"),
    (b"5\r\nhello\r0\r\n\r\n", "missing CRLF after chunk data"),
    (b"5\r\nhello0\r\n\r\n", "missing CRLF after chunk data"),  # no CRLF at all
    (b"5\r\nhello!\r\n0\r\n\r\n", "missing CRLF after chunk data"),  # data too long
    (b"5\r\nhell\r\n0\r\n\r\n", "missing CRLF after chunk data"),  # data too short
    (b"0\r\n\n", "bare LF in trailer section"),
    (b"0\r\nX: 1\n\r\n", "bare LF in trailer section"),
    (b"0\r\n\r\r\n", "bare CR in trailer section"),
    (b"0\r\nX: 1\r\r\n\r\n", "bare CR in trailer section"),
    # extensions
    (b"5;\r\nhello\r\n0\r\n\r\n", "bad chunk extension"),
    (b"5;;a\r\nhello\r\n0\r\n\r\n", "bad chunk extension"),
    (b"5;=b\r\nhello\r\n0\r\n\r\n", "bad chunk extension"),
    (b"5;a=\r\nhello\r\n0\r\n\r\n", "bad chunk extension"),
    (b"5; a\r\nhello\r\n0\r\n\r\n", "bad chunk extension"),
    (b"5;a =b\r\nhello\r\n0\r\n\r\n", "bad chunk extension"),
    (b"5;a= b\r\nhello\r\n0\r\n\r\n", "bad chunk extension"),
    (b"5;a=b \r\nhello\r\n0\r\n\r\n", "bad chunk extension"),
    (b"5;a@b\r\nhello\r\n0\r\n\r\n", "bad chunk extension"),
    (b"5;a=b=c\r\nhello\r\n0\r\n\r\n", "bad chunk extension"),
    (b'5;a="unterminated\r\nhello\r\n0\r\n\r\n', "bad chunk extension"),
    (b'5;a="x"y\r\nhello\r\n0\r\n\r\n', "bad chunk extension"),
    (b'5;a=x"y"\r\nhello\r\n0\r\n\r\n', "bad chunk extension"),
    (b'5;a="\x00"\r\nhello\r\n0\r\n\r\n', "bad chunk extension"),
    (b'5;a="\x7f"\r\nhello\r\n0\r\n\r\n', "bad chunk extension"),
    (b'5;a="\\\x7f"\r\nhello\r\n0\r\n\r\n', "bad chunk extension"),  # quoted-pair of DEL
    (b'5;a="\\\r\n"\r\nhello\r\n0\r\n\r\n', "bad chunk extension"),
    # trailers
    (b"0\r\n:x\r\n\r\n", "bad trailer"),
    (b"0\r\nX\r\n\r\n", "bad trailer"),
    (b"0\r\nX :1\r\n\r\n", "bad trailer"),
    (b"0\r\n X:1\r\n\r\n", "bad trailer"),  # obs-fold continuation
    (b"0\r\nX:1\r\n\t2\r\n\r\n", "bad trailer"),
    (b"0\r\nX:\x00\r\n\r\n", "bad trailer"),
    (b"0\r\nX:\x7f\r\n\r\n", "bad trailer"),
    (b"0\r\nX@Y:1\r\n\r\n", "bad trailer"),
]


@pytest.mark.parametrize("wire, reason", INVALID)
def test_invalid_messages(impl: ModuleType, wire: bytes, reason: str) -> None:
    assert rejected(impl, wire) == reason
    assert reference_outcome(wire)[0] in ("error", "pending")


def test_chunk_size_limit(impl: ModuleType) -> None:
    assert rejected(impl, b"11\r\n", max_chunk=16) == "chunk too large"
    assert rejected(impl, b"00000011", max_chunk=16) == "chunk too large"  # before the CRLF
    assert rejected(impl, b"2\r\n", max_chunk=1) == "chunk too large"
    assert rejected(impl, b"8000000000000000", max_chunk=2**63 - 1) == "chunk too large"


def test_line_limits(impl: ModuleType) -> None:
    assert rejected(impl, b"5;a=bcd\r\nhello\r\n0\r\n\r\n", max_line=6) == "chunk size line too long"
    assert rejected(impl, b"0000005\r\n", max_line=6) == "chunk size line too long"
    assert rejected(impl, b"0\r\nA:12\r\n\r\n", max_line=3) == "trailer line too long"
    assert rejected(impl, b"0\r\nA:1\r\nB:23\r\n", max_trailers=6) == "trailers too long"
    assert rejected(impl, b"0\r\nA:1\r\n\r\n", max_trailers=0) == "trailers too long"


def test_a_64_kib_extension_fails_once_past_the_line_limit(impl: ModuleType) -> None:
    wire = b"5;a=" + b"x" * 65536 + b"\r\nhello\r\n0\r\n\r\n"
    decoder = impl.ChunkedDecoder()
    for fed in range(0, len(wire), 1024):
        try:
            assert decoder.feed(wire[fed:fed + 1024]) == []
        except BadRequest as error:
            assert error.detail == "chunk size line too long"
            break
    assert fed == 4096  # the fifth KiB holds byte 4097 of the line


def test_a_failed_decoder_keeps_failing(impl: ModuleType) -> None:
    decoder = impl.ChunkedDecoder()
    with pytest.raises(BadRequest, match="bad chunk size"):
        decoder.feed(b"0x5\r\n")
    for data in (b"", b"0\r\n\r\n"):
        with pytest.raises(BadRequest, match="bad chunk size"):
            decoder.feed(data)
    assert not decoder.done


@pytest.mark.parametrize("limits", [
    {"max_chunk": 0}, {"max_chunk": 2**63}, {"max_line": 0}, {"max_line": 2**63},
    {"max_trailers": -1}, {"max_trailers": 2**63},
])  # fmt: skip
def test_limits_must_be_in_range(impl: ModuleType, limits: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=f"{next(iter(limits))} must be between"):
        impl.ChunkedDecoder(**limits)


# -- where the message ends, and what the runs are --------------------------------------------

NEXT_REQUEST = b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n"


def test_tail_marks_the_pipelined_request(impl: ModuleType) -> None:
    wire = b"5\r\nhello\r\n0\r\nX: 1\r\n\r\n"
    decoder = impl.ChunkedDecoder()
    assert decoder.tail == 0 and not decoder.done
    runs = decoder.feed(wire[:4])
    assert (runs, decoder.tail, decoder.done) == ([b"h"], 4, False)
    data = wire[4:] + NEXT_REQUEST
    assert [bytes(run) for run in decoder.feed(data)] == [b"ello"]
    assert decoder.done and data[decoder.tail:] == NEXT_REQUEST
    # once done, nothing more is the decoder's
    assert (decoder.feed(NEXT_REQUEST), decoder.tail, decoder.done) == ([], 0, True)


def test_tail_at_every_split_point(impl: ModuleType) -> None:
    wire = b"3;x=\"y\"\r\nabc\r\n0\r\nT:v\r\n\r\n"
    for cut in range(len(wire) + len(NEXT_REQUEST) + 1):
        assert decode(impl, wire + NEXT_REQUEST, [cut]) == ("done", b"abc", len(wire))


def test_runs_from_bytes_are_views_into_it(impl: ModuleType) -> None:
    data = b"5\r\nhello\r\n6\r\n world\r\n"
    runs = impl.ChunkedDecoder().feed(data)
    assert [bytes(run) for run in runs] == [b"hello", b" world"]
    assert all(type(run) is memoryview and run.obj is data and run.readonly for run in runs)
    inside = b"x" * 100
    decoder = impl.ChunkedDecoder()
    decoder.feed(b"1000\r\n")
    (run,) = decoder.feed(inside)
    assert type(run) is memoryview and run.obj is inside and run.nbytes == 100


@pytest.mark.parametrize("kind", ["bytearray", "memoryview", "memoryview of bytearray"])
def test_runs_from_other_buffers_are_copies(impl: ModuleType, kind: str) -> None:
    data = KINDS[kind](b"5\r\nhello\r\n6\r\n world\r\n")
    runs = impl.ChunkedDecoder().feed(data)
    assert runs == [b"hello", b" world"] and all(type(run) is bytes for run in runs)


def test_a_fed_bytearray_is_free_again_even_after_an_error(impl: ModuleType) -> None:
    buffer = bytearray(b"5\r\nhello\r\n")
    impl.ChunkedDecoder().feed(buffer)
    buffer.clear()  # raises BufferError while anything still exports the buffer
    buffer += b"5\r\nhello!"
    with pytest.raises(BadRequest):
        impl.ChunkedDecoder().feed(buffer)
    buffer.clear()


# -- framing ----------------------------------------------------------------------------------

SIZES = [1, 9, 10, 15, 16, 17, 255, 256, 4095, 4096, 16384, 65535, 65536, 262144, 1_000_000]


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


def test_encode_chunks(impl: ModuleType) -> None:
    a, b, c = b"abc", bytearray(b"0123456789abcdefX"), memoryview(b"xyz")[1:]
    framed = impl.encode_chunks([a, b"", b, memoryview(b""), c])
    assert framed == [b"3\r\n", a, b"\r\n", b"11\r\n", b, b"\r\n", b"2\r\n", c, b"\r\n"]
    assert framed[1] is a and framed[4] is b and framed[7] is c
    assert impl.encode_chunks(piece for piece in (a, c)) == [b"3\r\n", a, b"\r\n", b"2\r\n", c, b"\r\n"]
    assert impl.encode_chunks(()) == [] and impl.encode_chunks([b""]) == []


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.one_of(st.integers(0, 300), st.sampled_from(SIZES)), max_size=40))
def test_size_lines_are_right_whatever_the_order(sizes: list[int]) -> None:
    pieces = [bytes(size) for size in sizes] * 2  # the second round meets cached lines
    for impl in IMPLS:
        lines = impl.encode_chunks(pieces)[::3]
        assert lines == [b"%x\r\n" % size for size in sizes * 2 if size]


@settings(max_examples=200, deadline=None)
@given(payloads=st.lists(st.binary(max_size=200), max_size=12), data=st.data())
def test_decoding_undoes_encoding(payloads: list[bytes], data: st.DataObject) -> None:
    for impl in IMPLS:
        wire = wire_of(impl, payloads)
        cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=8))
        kind = data.draw(st.sampled_from(list(KINDS.values())))
        assert decode(impl, wire, cuts, kind) == ("done", b"".join(payloads), len(wire))


# -- property tests: compiled, twin and the reference agree ------------------------------------

# An independent reading of RFC 9112 §7.1 (with relay's no-whitespace rule), one whole
# message at a time with regular expressions, to hold both decoders to.
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]+)(?:;%s(?:=(?:%s|%s))?)*\r\n" % (_TOKEN, _TOKEN, _QUOTED))
_FIELD_LINE = re.compile(rb"%s:[\t -~\x80-\xff]*\r\n" % _TOKEN)


def reference_decode(wire: bytes, max_chunk: int = 2**40, max_line: int = 4096,
                     max_trailers: int = 16384) -> Outcome:
    """("done", payload, end) or ("pending", None) when wire ends first; ValueError if invalid."""
    payload, pos = [], 0
    while True:
        end = wire.find(b"\r\n", pos)
        if end < 0:
            return ("pending", None)
        line = _SIZE_LINE.fullmatch(wire, pos, end + 2)
        if line is None or end - pos > max_line or int(line[1], 16) > max_chunk:
            raise ValueError("bad size line")
        size, pos = int(line[1], 16), end + 2
        if size == 0:
            break
        if len(wire) < pos + size + 2:
            return ("pending", None)
        if wire[pos + size:pos + size + 2] != b"\r\n":
            raise ValueError("no CRLF after data")
        payload.append(wire[pos:pos + size])
        pos += size + 2
    trailers = 0
    while (end := wire.find(b"\r\n", pos)) != pos:
        if end < 0:
            return ("pending", None)
        trailers += end - pos
        if not _FIELD_LINE.fullmatch(wire, pos, end + 2) or end - pos > max_line or trailers > max_trailers:
            raise ValueError("bad trailer")
        pos = end + 2
    return ("done", b"".join(payload), pos + 2)


def reference_outcome(wire: bytes, **limits: int) -> Outcome:
    try:
        return reference_decode(wire, **limits)
    except ValueError:
        return ("error",)


_TCHARS = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_VALUE_BYTES = bytes([9, *range(0x20, 0x7F), *range(0x80, 0x100)])
tokens = st.text(st.sampled_from(_TCHARS.decode()), min_size=1, max_size=6).map(str.encode)
quoted = st.lists(st.one_of(
    st.sampled_from([bytes([c]) for c in _VALUE_BYTES if c not in b'"\\']),
    st.sampled_from(_VALUE_BYTES).map(lambda c: b"\\" + bytes([c])),
), max_size=6).map(lambda parts: b'"' + b"".join(parts) + b'"')  # fmt: skip
extensions = st.lists(
    st.tuples(tokens, st.one_of(st.none(), tokens, quoted)).map(
        lambda ext: b";" + ext[0] + (b"" if ext[1] is None else b"=" + ext[1])),
    max_size=3,
).map(b"".join)


@st.composite
def messages(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """A valid chunked message with random sizes, hex spellings, extensions and trailers,
    followed by the start of a next request; and its payload."""
    wire, payload = [], []
    for data in draw(st.lists(st.binary(min_size=1, max_size=300), max_size=6)) + [b""]:
        size = b"%x" % len(data)
        size = b"0" * draw(st.integers(0, 3)) + (size.upper() if draw(st.booleans()) else size)
        wire.append(size + draw(extensions) + b"\r\n" + (data + b"\r\n" if data else b""))
        payload.append(data)
    for name, value in draw(st.lists(st.tuples(tokens, st.binary(max_size=20)), max_size=3)):
        wire.append(name + b":" + bytes(c for c in value if c in _VALUE_BYTES) + b"\r\n")
    wire.append(b"\r\n")
    return b"".join(wire) + draw(st.binary(max_size=20)), b"".join(payload)


#: bytes that matter to the framing, for mutations that break it in interesting ways
FRAMING_BYTES = b'0159aAfFgx;=":\\ \t\r\n\x00\x7f\x80'


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A message with a few bytes replaced, inserted or deleted, or cut short."""
    wire = bytearray(draw(messages())[0])
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(wire)))
        byte = draw(st.sampled_from(FRAMING_BYTES))
        operation = draw(st.sampled_from(["replace", "insert", "delete"]))
        if operation == "insert" or at == len(wire):
            wire.insert(at, byte)
        elif operation == "replace":
            wire[at] = byte
        else:
            del wire[at]
    return bytes(wire[:draw(st.integers(0, len(wire)))] if draw(st.booleans()) else wire)


limits = st.fixed_dictionaries({}, optional={
    "max_chunk": st.sampled_from([1, 15, 16, 300]),
    "max_line": st.sampled_from([1, 3, 8, 40]),
    "max_trailers": st.sampled_from([0, 5, 40]),
})  # fmt: skip


def outcomes(wire: bytes, data: st.DataObject, limits: dict[str, int]) -> list[Outcome]:
    """Every implementation's outcome, each fed at its own random split points and kind."""
    results = []
    for impl in IMPLS:
        cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=10), label=impl.__name__)
        kind = data.draw(st.sampled_from(list(KINDS.values())))
        results.append(decode(impl, wire, cuts, kind, **limits))
    return results


@settings(max_examples=400, deadline=None)
@given(message=messages(), data=st.data())
def test_valid_messages_decode_alike(message: tuple[bytes, bytes], data: st.DataObject) -> None:
    wire, payload = message
    expected = reference_decode(wire)
    assert expected[:2] == ("done", payload)
    assert outcomes(wire, data, {}) == [expected] * len(IMPLS)


@settings(max_examples=1000, deadline=None)
@given(wire=mutated(), limits=limits, data=st.data())
def test_any_input_decodes_alike(wire: bytes, limits: dict[str, int], data: st.DataObject) -> None:
    """Both decoders reach the same outcome, reasons included, whatever the splits; and that
    outcome is what the reference says: done alike, an error for what it refuses, never done
    on what it finds incomplete (the decoders may fail early on a line still coming)."""
    results = outcomes(wire, data, limits)
    results.append(byte_by_byte(IMPLS[-1], wire, **limits))
    assert all(result == results[0] for result in results)
    expected = reference_outcome(wire, **limits)
    if expected[0] == "pending":
        assert results[0][0] in ("pending", "error")
    else:
        assert results[0][: len(expected)] == expected
