"""The two implementations of relay's fast path, for tests that run on both.

The compiled module is missing only when it was not built; the tests then run on the
twin alone and say so loudly (``NOT_BUILT``), never silently.
"""

from __future__ import annotations

from types import ModuleType

from relay import _fastpath_py


def _compiled() -> ModuleType | None:
    try:
        from relay import _fastpath
    except ImportError:
        return None
    return _fastpath


COMPILED = _compiled()
NOT_BUILT = "COMPILED FAST PATH NOT BUILT (python setup.py build_ext --inplace): only the twin ran"
#: every implementation present: the twin, and the compiled module when built
IMPLS: list[ModuleType] = [_fastpath_py] if COMPILED is None else [_fastpath_py, COMPILED]
TWIN = _fastpath_py
