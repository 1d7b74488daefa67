"""The compiled request paths (``aegis_mw/_hotpath_c/``), when they were built.

One C module serves the ASGI middleware (``asgi/compiled.py``) and the WSGI
one (``wsgi/compiled.py``). It does exactly what their pure-Python paths do,
several times cheaper; those Python paths stay the reference and the
fallback. It is used when the extension was built (CPython, with a C compiler
at install time) and the ``speedups`` option is on (the default). It is not
used on a free-threaded build, where loading it would turn the GIL back on.
"""

from __future__ import annotations

import sysconfig
import time
from collections.abc import Callable
from types import ModuleType


def load() -> ModuleType | None:
    """The compiled module, or None where it was not built or must not be used."""
    if sysconfig.get_config_var("Py_GIL_DISABLED"):
        return None
    try:
        from . import _hotpath
    except ImportError:
        return None
    return _hotpath


def native_clock(module: ModuleType, clock: Callable[[], float]) -> bool:
    """Whether the C code may read ``clock`` itself: time.perf_counter and
    time.monotonic read CLOCK_MONOTONIC on Linux, as the C code does without a
    Python call; any other clock (a test's fake) is called."""
    return bool(module.NATIVE_MONOTONIC) and clock in (time.perf_counter, time.monotonic)
