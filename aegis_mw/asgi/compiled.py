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
    if not hasattr(module, "call_directly"):
        # An older build left in place: its path reads every scope as HTTP's
        # and takes other arguments. The Python path serves.
        speedups.warn_older_build()
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
        other=middleware.serve_other,
        check_forwarded=middleware._check_forwarded,
    )
    middleware.aegis.aggregates.add_in_flight_source(path)
    return path


def call_directly(cls: type[AegisMiddleware]) -> None:
    """Instances of ``cls`` (whose ``__call__`` is AegisMiddleware's own) are
    called through their compiled path itself: no coroutine of the
    middleware's is created, stepped and finished around each request (about
    2,000 instructions a request on CPython 3.11; see ``direct_call`` in
    ``_hotpath_c/asgi_path.c``). ``__call__`` stays the ``async def``, so
    servers and ``inspect`` see what they always saw, and a call by keyword,
    or of an instance on the Python path, runs it."""
    module = speedups.load()
    assert module is not None  # the instance has a compiled path
    module.call_directly(cls)


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
