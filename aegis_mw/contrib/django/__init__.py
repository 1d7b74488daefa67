"""Django: an installable app with a middleware for ``MIDDLEWARE``.

    INSTALLED_APPS = [..., "aegis_mw.contrib.django"]
    MIDDLEWARE = ["aegis_mw.contrib.django.AegisMiddleware", ...]   # first: outermost
    AEGIS = {"sink": "sqlite:///aegis.db"}

The middleware is sync and async capable (WSGI under gunicorn, ASGI under
uvicorn), names routes from the resolver match, and serves ``/metrics``, the
health routes, the JSON API and ``/dashboard`` itself. A bad ``AEGIS`` option
is a system-check error (``aegis_mw.E001``) naming it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["AegisMiddleware"]


def __getattr__(name: str) -> Any:
    # Lazy: Django imports the app package before its settings are ready.
    if name == "AegisMiddleware":
        from .middleware import AegisMiddleware

        return AegisMiddleware
    raise AttributeError(name)
