"""How upstreams of different families read a forwarded path, for tests to check that
none of them sees a path relay did not route on.

    servlet_reading  Tomcat, Jetty and Spring: cut each segment's ";" parameters off
                     at a raw ";", decode once, merge "//", resolve dot-segments
    double_decoded   an application that decodes the path once more than it should
"""

from __future__ import annotations

from urllib.parse import unquote_to_bytes


def _resolve(segments: list[str]) -> str:
    out: list[str] = []
    for segment in segments:
        if segment == "..":
            if out:
                out.pop()
        elif segment not in (".", ""):
            out.append(segment)
    directory = segments[-1] in ("", ".", "..") and bool(out)
    return "/" + "/".join(out) + ("/" if directory else "")


def _decode(raw: bytes) -> str:
    return unquote_to_bytes(raw).decode("utf-8", "replace")


def servlet_reading(path: bytes) -> str:
    return _resolve([_decode(segment.partition(b";")[0]) for segment in path.split(b"/")])


def double_decoded(path: bytes) -> str:
    once = unquote_to_bytes(path)
    return _resolve([_decode(segment).partition(";")[0] for segment in once.split(b"/")])
