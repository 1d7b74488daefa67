"""Starlette and FastAPI: one call.

``install(app, **options)`` adds :class:`~aegis_mw.AegisMiddleware` as the
outermost of the app's own middleware (Starlette puts the last added
outermost), so an error raised by any other middleware is still seen and
recorded, and returns the pipeline. Call it after adding your other
middleware; calling it twice is refused rather than recording twice.

Example::

    app = FastAPI()
    app.add_middleware(GZipMiddleware)
    aegis = install(app, sink="sqlite:///aegis.db")
"""

from __future__ import annotations

from typing import Any

from ..aegis import Aegis
from ..asgi.middleware import AegisMiddleware


def install(app: Any, *, aegis: Aegis | None = None, **options: Any) -> Aegis:
    """Add the middleware outermost; returns the pipeline (``aegis`` or one built
    from ``options``)."""
    for middleware in getattr(app, "user_middleware", ()):
        if middleware.cls is AegisMiddleware:
            raise RuntimeError("aegis_mw is installed on this app already")
    pipeline = aegis if aegis is not None else Aegis(**options)
    app.add_middleware(AegisMiddleware, aegis=pipeline)
    return pipeline
