"""The one place that picks relay's fast path: the compiled module or its pure-Python twin.

``relay._fastpath`` (Cython, built by setup.py) serves unless the environment variable
``RELAY_NO_EXTENSIONS`` is set to anything but "" or "0", or it is not built, in which case
a warning is logged. Then ``relay._fastpath_py``, the executable spec with the same API,
serves. Everything else in relay imports the fast path from here, never from either module.
"""

from __future__ import annotations

import logging
import os
from types import ModuleType
from typing import TYPE_CHECKING

from relay import _fastpath_py

__all__ = ["COMPILED", "WHOLE_HEADS", "LAST_CHUNK", "ClaimPath", "ClaimRules", "Compact", "HeaderRules", "HeaderScan",
           "TokenCache", "admit_head", "b64url_decode", "check_request_line", "encode_chunk", "identity_block",
           "parse_compact", "scan_headers", "whole_answer", "whole_request"]

log = logging.getLogger(__name__)


def _choose() -> ModuleType:
    if os.environ.get("RELAY_NO_EXTENSIONS", "") not in ("", "0"):
        return _fastpath_py
    try:
        from relay import _fastpath
    except ImportError as exc:
        log.warning("compiled fast path unavailable (%s); using the pure-Python twin", exc)
        return _fastpath_py
    return _fastpath


_impl = _choose()
#: True when the compiled module serves.
COMPILED: bool = _impl is not _fastpath_py
#: Whether a message that came whole is offered to whole_request / whole_answer before
#: httptools: only compiled, as the twin's regular expressions cost more than httptools'
#: callbacks (the twin's two functions are the spec the compiled ones are tested against).
WHOLE_HEADS: bool = COMPILED

if TYPE_CHECKING:
    # Both implementations share one API; type-check callers against the compiled stub.
    from relay._fastpath import (LAST_CHUNK, ClaimPath, ClaimRules, Compact, HeaderRules, HeaderScan, TokenCache,
                                 admit_head, b64url_decode, check_request_line, encode_chunk, identity_block,
                                 parse_compact, scan_headers, whole_answer, whole_request)
else:
    # 1. header scanning
    HeaderRules = _impl.HeaderRules
    HeaderScan = _impl.HeaderScan
    scan_headers = _impl.scan_headers
    # 2. verified-token cache
    TokenCache = _impl.TokenCache
    # 3. chunked transfer coding (framing)
    encode_chunk = _impl.encode_chunk
    LAST_CHUNK = _impl.LAST_CHUNK
    # 4. admission
    admit_head = _impl.admit_head
    check_request_line = _impl.check_request_line
    # 5. token decoding
    Compact = _impl.Compact
    b64url_decode = _impl.b64url_decode
    parse_compact = _impl.parse_compact
    # 6. whole heads
    whole_answer = _impl.whole_answer
    whole_request = _impl.whole_request
    # 7. a new identity
    ClaimPath = _impl.ClaimPath
    ClaimRules = _impl.ClaimRules
    identity_block = _impl.identity_block
