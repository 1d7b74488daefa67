"""The compiled HTTP request path of the ASGI middleware, when it was built.

The C type ``HttpPath`` (``aegis_mw/_hotpath_c/asgi_path.c``) does exactly
what the pure-Python path in ``middleware.py`` does, several times cheaper;
that Python path stays the reference and the fallback (see ``speedups.py``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import speedups
from .observers import observe_receive, observe_send

if TYPE_CHECKING:
    from .._hotpath import HttpPath
    from .middleware import AegisMiddleware


def build(middleware: AegisMiddleware) -> HttpPath | None:
    """The compiled path for ``middleware``, or None to use the Python one."""
    module = speedups.load()
    if module is None:
        return None
    clock = middleware.aegis.clock.monotonic
    path: HttpPath = module.HttpPath(
        owner=middleware,
        app=middleware.app,
        bypass=middleware.pass_through,
        clock=clock,
        native_clock=speedups.native_clock(module, clock),
        templates=middleware._templates,
        read_route=middleware._read_route,
        exclusions=middleware._excluded.current,
        recorder=middleware.aegis.recorder,
        observe_send=observe_send,
        observe_receive=observe_receive,
        throw_quietly=throw_quietly,
        check_forwarded=middleware._check_forwarded,
    )
    middleware.aegis.aggregates.add_in_flight_source(path)
    return path


def throw_quietly(throw: Callable[..., Any], *args: Any) -> Any:
    """``throw(*args)``, a generator's or coroutine's, with the DeprecationWarning
    for the (type, value, traceback) form ignored (Python 3.12 and later).

    The compiled path forwards the arguments of a throw() into the request to the
    app's coroutine as they were given, as CPython's own await does; CPython does
    that without a warning (the caller's throw() warned already), a throw() call
    from outside cannot. Swapping the warning filters is process-wide for the
    length of the call, so only that deprecated form comes here.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return throw(*args)
