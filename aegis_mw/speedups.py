"""The compiled request paths (``aegis_mw/_hotpath_c/``), when they were built.

One C module serves the ASGI middleware (``asgi/compiled.py``), the WSGI one
(``wsgi/compiled.py``) and Django's (``contrib/django/compiled.py``). It does
exactly what their pure-Python paths do, several times cheaper; those Python
paths stay the reference and the fallback. It is used when the extension was
built (CPython, with a C compiler at install time), the ``speedups`` option is
on (the default), and the interpreter is a CPython version its tests run on
(``COMPILED_VERSIONS``): C code that reaches into the interpreter is trusted
only where it was tested. It is not used on a free-threaded build, where
loading it would turn the GIL back on.
"""

from __future__ import annotations

import logging
import platform
import sys
import sysconfig
import time
from collections.abc import Callable
from types import ModuleType

from .core.items import HTTP_FIELDS

#: The CPython versions (major, minor) whose interpreter the compiled module is
#: tested on in CI; on any other the pure-Python paths serve every request.
COMPILED_VERSIONS = frozenset({(3, 10), (3, 11), (3, 12), (3, 13)})

logger = logging.getLogger("aegis_mw")


def load() -> ModuleType | None:
    """The compiled module, or None where it was not built or must not be used."""
    if sysconfig.get_config_var("Py_GIL_DISABLED"):
        return None
    implementation, version = platform.python_implementation(), sys.version_info[:2]
    if implementation != "CPython" or version not in COMPILED_VERSIONS:
        logger.info(
            "aegis_mw: the compiled request path is not used on %s %d.%d (it is tested on "
            "CPython %s); requests take the pure-Python path, which records the same",
            implementation, *version, _versions(COMPILED_VERSIONS),
        )  # fmt: skip
        return None
    try:
        from . import _hotpath
    except ImportError:
        return None
    if getattr(_hotpath, "ITEM_FIELDS", None) != HTTP_FIELDS:
        # A module built for another inbox layout (an older build left in
        # place): its items would not be read as the flusher reads them.
        warn_older_build()
        return None
    return _hotpath


def warn_older_build() -> None:
    """The log line for a compiled module left in place by an older install."""
    logger.warning(
        "aegis_mw: the compiled request path was built for another version of "
        "aegis_mw (reinstall aegis_mw to rebuild it); "
        "requests take the pure-Python path"
    )


def native_clock(module: ModuleType, clock: Callable[[], float]) -> bool:
    """Whether the C code may read ``clock`` itself: time.perf_counter and
    time.monotonic read CLOCK_MONOTONIC on Linux, as the C code does without a
    Python call; any other clock (a test's fake) is called."""
    return bool(module.NATIVE_MONOTONIC) and clock in (time.perf_counter, time.monotonic)


def _versions(versions: frozenset[tuple[int, int]]) -> str:
    return ", ".join(f"{major}.{minor}" for major, minor in sorted(versions))
