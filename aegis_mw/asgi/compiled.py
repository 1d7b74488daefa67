"""The compiled HTTP request path (``_hotpath_c/``), when it was built.

The C module does exactly what the pure-Python path in ``middleware.py`` does,
several times cheaper; that Python path stays the reference and the fallback.
It is used when the extension was built (CPython, with a C compiler at install
time) and the ``speedups`` option is on (the default). It is not used on a
free-threaded build, where loading it would turn the GIL back on.
"""

from __future__ import annotations

import sysconfig
import time
from types import ModuleType
from typing import TYPE_CHECKING

from .observers import observe_receive, observe_send

if TYPE_CHECKING:
    from ._hotpath import HttpPath
    from .middleware import AegisMiddleware


def load() -> ModuleType | None:
    """The compiled module, or None where it was not built or must not be used."""
    if sysconfig.get_config_var("Py_GIL_DISABLED"):
        return None
    try:
        from . import _hotpath
    except ImportError:
        return None
    return _hotpath


def build(middleware: AegisMiddleware) -> HttpPath | None:
    """The compiled path for ``middleware``, or None to use the Python one."""
    module = load()
    if module is None:
        return None
    clock = middleware.aegis.clock.monotonic
    # time.perf_counter and time.monotonic read CLOCK_MONOTONIC on Linux, as the
    # C code does without a Python call; any other clock (a test's fake) is called.
    native = module.NATIVE_MONOTONIC and clock in (time.perf_counter, time.monotonic)
    path: HttpPath = module.HttpPath(
        owner=middleware,
        app=middleware.app,
        bypass=middleware.pass_through,
        clock=clock,
        native_clock=native,
        templates=middleware._templates,
        read_route=middleware._read_route,
        exclusions=middleware._excluded.current,
        recorder=middleware.aegis.recorder,
        observe_send=observe_send,
        observe_receive=observe_receive,
        check_forwarded=middleware._check_forwarded,
    )
    middleware.aegis.aggregates.add_in_flight_source(path)
    return path
