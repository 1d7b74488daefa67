"""Flask: ``Aegis(app)``, or ``aegis.init_app(app)`` in the usual extension style.

It wraps ``app.wsgi_app`` in :class:`~aegis_mw.wsgi.AegisWSGIMiddleware` and
names each request's route from the URL rule Flask matched (blueprint
prefixes included), in the ``{name}`` style the ASGI side uses:
``/items/<int:item_id>`` is recorded as ``/items/{item_id}``. Options come
from ``app.config`` keys with an ``AEGIS_`` prefix (``AEGIS_SINK``,
``AEGIS_SAMPLE_RATE``...), then from keyword arguments. Error handlers,
teardown functions and streamed responses are untouched: the middleware sits
outside Flask. The matched rule is noted by a subclass of ``app.request_class``
set by ``init_app``: set a request class of your own before calling it, not
after (else routes are recorded as ``<unmatched>``).

Example::

    from flask import Flask
    from aegis_mw.contrib.flask import Aegis

    app = Flask(__name__)
    app.config["AEGIS_SINK"] = "sqlite:///aegis.db"
    aegis = Aegis(app)
"""

from __future__ import annotations

import functools
import re
from typing import Any

from ..aegis import Aegis as Pipeline
from ..wsgi.middleware import ROUTE_KEY, AegisWSGIMiddleware

try:
    import flask
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("the Flask integration needs Flask: pip install 'aegis_mw[flask]'") from exc

CONFIG_PREFIX = "AEGIS_"
_PLACEHOLDER = re.compile(r"<(?:[^<>]*:)?([A-Za-z_][A-Za-z0-9_]*)>")


@functools.lru_cache(maxsize=4096)  # an app has a bounded set of rules
def route_template(rule: str) -> str:
    """``/items/<int:item_id>`` -> ``/items/{item_id}``."""
    return _PLACEHOLDER.sub(r"{\1}", rule)


class Aegis:
    """The aegis_mw extension for one or more Flask apps."""

    def __init__(self, app: flask.Flask | None = None, **options: Any) -> None:
        self.options = options
        #: The pipeline of the app last initialised (``app.extensions["aegis_mw"]`` per app).
        self.pipeline: Pipeline | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: flask.Flask) -> Pipeline:
        options = {
            key[len(CONFIG_PREFIX) :].lower(): value
            for key, value in app.config.items()
            if key.startswith(CONFIG_PREFIX) and key != "AEGIS_CONFIG"
        }
        options.update(self.options)
        pipeline = Pipeline(**options)
        app.wsgi_app = AegisWSGIMiddleware(app.wsgi_app, aegis=pipeline)  # type: ignore[method-assign]
        app.request_class = _noting_routes(app.request_class)
        app.extensions["aegis_mw"] = pipeline
        self.pipeline = pipeline
        return pipeline


def _noting_routes(base: type[flask.Request]) -> type[flask.Request]:
    """``base`` whose ``url_rule``, set once Flask has matched the URL, also
    leaves the route template in the environ for the middleware. A request
    hook would do the same at several times the cost (Flask's preprocessor
    machinery runs for every request)."""

    if getattr(base, "_aegis_notes_routes", False):  # init_app called again
        return base

    class AegisRequest(base):  # type: ignore[valid-type,misc]
        _aegis_notes_routes = True

        @property
        def url_rule(self) -> Any:
            return self.__dict__.get("_aegis_url_rule")

        @url_rule.setter
        def url_rule(self, rule: Any) -> None:
            self.__dict__["_aegis_url_rule"] = rule
            if rule is not None:
                self.environ[ROUTE_KEY] = route_template(rule.rule)

    AegisRequest.__name__ = AegisRequest.__qualname__ = base.__name__
    return AegisRequest
