"""The compiled request path of the Django middleware (sync handlers), when built.

The C type ``DjangoPath`` (``aegis_mw/_hotpath_c/django_path.c``) does exactly
what ``AegisMiddleware``'s Python code does for a sync handler, several
times cheaper; that Python code stays the reference and the fallback (see
``aegis_mw/speedups.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ... import speedups
from ...core.record import UNMATCHED_ROUTE

if TYPE_CHECKING:
    from .middleware import AegisMiddleware


def build(middleware: AegisMiddleware) -> Any | None:
    """The compiled path for ``middleware``, or None to use the Python one."""
    module = speedups.load()
    if module is None:
        return None
    aegis = middleware.aegis
    clock = aegis.clock.monotonic
    path = module.DjangoPath(
        owner=middleware,
        get_response=middleware.get_response,
        clock=clock,
        native_clock=speedups.native_clock(module, clock),
        recorder=aegis.recorder,
        mounted=middleware.routes.handlers,
        exclusions=middleware._excluded.current,
        templates=middleware.templates,
        unmatched=UNMATCHED_ROUTE,
        check_forwarded=aegis.client_addresses.enabled,
    )
    aegis.aggregates.add_in_flight_source(path)
    return path
