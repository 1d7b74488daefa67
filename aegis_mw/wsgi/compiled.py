"""The compiled request path of the WSGI middleware, when it was built.

The C type ``WsgiPath`` (``aegis_mw/_hotpath_c/wsgi_path.c``) does exactly
what ``AegisWSGIMiddleware.call_python`` does, several times cheaper; that
Python path stays the reference and the fallback (see ``speedups.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import speedups
from ..core.record import UNMATCHED_ROUTE
from .responses import counting_input
from .routing import ObjectRouteReader

if TYPE_CHECKING:
    from .middleware import AegisWSGIMiddleware


def build(middleware: AegisWSGIMiddleware) -> Any | None:
    """The compiled path for ``middleware``, or None to use the Python one."""
    module = speedups.load()
    if module is None:
        return None
    from .middleware import start_arguments, status_code, write_arguments

    clock = middleware.aegis.clock.monotonic
    reader = middleware.route_reader
    # An ObjectRouteReader's lookup is done in C, which asks the reader only
    # for a route object it has not named yet.
    by_object = reader if isinstance(reader, ObjectRouteReader) else None
    path = module.WsgiPath(
        owner=middleware,
        app=middleware.app,
        bypass=middleware.serve_excluded,
        fallback=middleware.call_python,
        clock=clock,
        native_clock=speedups.native_clock(module, clock),
        exclusions=middleware._excluded.current,
        recorder=middleware.aegis.recorder,
        read_route=reader,
        route_key=by_object.environ_key if by_object is not None else None,
        templates=by_object.templates if by_object is not None else None,
        status_code=status_code,
        counting_input=counting_input,
        start_arguments=start_arguments,
        write_arguments=write_arguments,
        unmatched=UNMATCHED_ROUTE,
        check_forwarded=middleware.aegis.client_addresses.enabled,
    )
    middleware.aegis.aggregates.add_in_flight_source(path)
    return path
