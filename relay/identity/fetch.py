"""Reading an issuer's JWKS document: from a file, a URL, or via OIDC discovery.

These functions block (file and socket I/O) and are meant for a worker thread
(``loop.run_in_executor``); ``relay.identity.keys`` schedules them. HTTP uses the
standard library client with a deadline over the whole exchange, a size cap, no
redirects (a key URL that moves is a configuration change, not something to follow
silently) and no proxy for loopback addresses.
"""

from __future__ import annotations

import http.client
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

import orjson

from relay.config import IssuerConfig

__all__ = ["MAX_DOCUMENT_BYTES", "FetchError", "read_jwks"]

MAX_DOCUMENT_BYTES = 1024 * 1024  # a JWKS of a few dozen keys is a few tens of KiB
_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
_CHUNK = 64 * 1024


class FetchError(Exception):
    """The document could not be read; the message says why."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises HTTPError for the 3xx answer


_PROXIED = urllib.request.build_opener(_NoRedirect)  # honours the usual *_proxy variables
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect)


def _http_get(url: str, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    opener = _DIRECT if urlsplit(url).hostname in _LOOPBACK else _PROXIED
    request = urllib.request.Request(url, headers={"Accept": "application/json", "User-Agent": "relay"})
    try:
        with opener.open(request, timeout=timeout) as response:
            if response.status != 200:
                raise FetchError(f"{url}: HTTP {response.status}")
            chunks: list[bytes] = []
            size = 0
            while chunk := response.read(_CHUNK):
                size += len(chunk)
                if size > MAX_DOCUMENT_BYTES:
                    raise FetchError(f"{url}: larger than {MAX_DOCUMENT_BYTES} bytes")
                if time.monotonic() > deadline:
                    raise FetchError(f"{url}: not complete after {timeout:g}s")
                chunks.append(chunk)
            return b"".join(chunks)
    except urllib.error.HTTPError as e:
        raise FetchError(f"{url}: HTTP {e.code}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = e.reason if isinstance(e, urllib.error.URLError) else e
        raise FetchError(f"{url}: {reason or type(e).__name__}") from None


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_DOCUMENT_BYTES + 1)
    except OSError as e:
        raise FetchError(f"{path}: {e.strerror or e}") from None
    if len(data) > MAX_DOCUMENT_BYTES:
        raise FetchError(f"{path}: larger than {MAX_DOCUMENT_BYTES} bytes")
    return data


def _discover(config: IssuerConfig, url: str, timeout: float) -> str:
    """The ``jwks_uri`` of an OpenID Provider configuration document."""
    try:
        document = orjson.loads(_http_get(url, timeout))
    except orjson.JSONDecodeError:
        raise FetchError(f"{url}: not JSON") from None
    if not isinstance(document, dict):
        raise FetchError(f"{url}: not a JSON object")
    # OpenID Connect Discovery 1.0 §4.3: the document must name the issuer we expect,
    # or it may be another tenant's (and its keys would accept that tenant's tokens)
    if document.get("issuer") != config.issuer:
        raise FetchError(f"{url}: issuer {document.get('issuer')!r} is not {config.issuer!r}")
    jwks_uri = document.get("jwks_uri")
    if not isinstance(jwks_uri, str):
        raise FetchError(f"{url}: no jwks_uri")
    parts = urlsplit(jwks_uri)
    if not (parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in _LOOPBACK)):
        raise FetchError(f"{url}: jwks_uri {jwks_uri!r} is not https")
    return jwks_uri


def read_jwks(config: IssuerConfig, timeout: float) -> bytes:
    """The raw JWKS document of ``config``'s key source; raises FetchError. Blocks."""
    if config.jwks_file is not None:
        return _read_file(config.jwks_file)
    if config.jwks_url is not None:
        return _http_get(config.jwks_url, timeout)
    if config.discovery_url is not None:
        deadline = time.monotonic() + timeout
        jwks_uri = _discover(config, config.discovery_url, timeout)
        return _http_get(jwks_uri, max(deadline - time.monotonic(), 0.1))
    raise FetchError(f"issuer {config.name!r} has no key source")
