"""Flask: ``Aegis(app)``, or ``aegis.init_app(app)`` in the usual extension style.

It wraps ``app.wsgi_app`` in :class:`~aegis_mw.wsgi.AegisWSGIMiddleware` and
names each request's route from the URL rule Flask matched (blueprint
prefixes included), in the ``{name}`` style the ASGI side uses:
``/items/<int:item_id>`` is recorded as ``/items/{item_id}``. Options come
from ``app.config`` keys with an ``AEGIS_`` prefix (``AEGIS_SINK``,
``AEGIS_SAMPLE_RATE``...), then from keyword arguments. Error handlers,
teardown functions and streamed responses are untouched: the middleware sits
outside Flask. An unhandled exception, which Flask answers itself outside
debug mode (so it never reaches the middleware), is recorded as the request's
``error`` all the same, from Flask's ``got_request_exception`` signal. The
matched rule reaches the middleware through the environ, left there by a
subclass of ``app.request_class`` when Flask closes the request (the
end of its request context, when the rule is known); set a request class of
your own before ``init_app``, not after (else routes are recorded as
``<unmatched>``).

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
from ..core.labels import describe_error
from ..core.settings import AegisSettings
from ..endpoints.app_routes import flask_routes
from ..wsgi.middleware import ERROR_KEY, AegisWSGIMiddleware
from ..wsgi.routing import ObjectRouteReader

try:
    import flask
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("the Flask integration needs Flask: pip install 'aegis_mw[flask]'") from exc

CONFIG_PREFIX = "AEGIS_"
#: Where the request class of ``init_app`` leaves the rule Flask matched.
RULE_KEY = "aegis.flask_rule"
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
        # Errors name the config key the user wrote, not "keyword argument".
        configured = {
            key[len(CONFIG_PREFIX) :].lower(): (value, f'app.config["{key}"]')
            for key, value in app.config.items()
            if key.startswith(CONFIG_PREFIX) and key != "AEGIS_CONFIG"
        }
        options = dict(self.options)
        clock = options.pop("clock", None)
        settings = AegisSettings.load(options.pop("environ", None), sourced=configured, **options)
        pipeline = Pipeline(settings, clock=clock)
        app.wsgi_app = AegisWSGIMiddleware(  # type: ignore[method-assign]
            app.wsgi_app, aegis=pipeline, route_reader=rule_reader(), has_route=flask_routes(app)
        )
        app.request_class = _noting_rules(app.request_class)
        # Sent for an exception no error handler took, before Flask answers it
        # (500, or re-raised in debug mode). A module function, connected per
        # app: blinker holds receivers weakly, and connecting it again is a no-op.
        flask.got_request_exception.connect(_note_error, app)
        app.extensions["aegis_mw"] = pipeline
        self.pipeline = pipeline
        return pipeline


def _note_error(sender: flask.Flask, exception: BaseException, **extra: Any) -> None:
    """Leave the text of the app's unhandled exception in the environ (as
    ``"Type: message"``, the form the ASGI side records) for the middleware."""
    try:
        pipeline = sender.extensions.get("aegis_mw")
        if pipeline is not None:
            limit = pipeline.settings.max_error_length
            flask.request.environ[ERROR_KEY] = describe_error(exception, limit)
    except Exception:  # telemetry never changes how the app answers its error
        pass


def rule_reader() -> ObjectRouteReader:
    """Names a request by the rule Flask matched, which the request class of
    ``init_app`` leaves at ``environ[RULE_KEY]``. No rule (a 404, or an error
    before matching): ``<unmatched>``."""
    return ObjectRouteReader(RULE_KEY, _rule_template)


def _rule_template(rule: Any) -> str:
    return route_template(str(rule.rule))


def _noting_rules(base: type[flask.Request]) -> type[flask.Request]:
    """``base`` whose ``close()``, which Flask calls once as its request context
    ends, first leaves the matched rule in the environ. Reads of ``url_rule``
    stay plain attribute reads; a request hook would cost several times more
    (Flask's hook machinery runs for every request)."""

    if getattr(base, "_aegis_notes_rules", False):  # init_app called again
        return base
    close = base.close

    class AegisRequest(base):  # type: ignore[valid-type,misc]
        _aegis_notes_rules = True

        def close(self) -> None:
            # The rule only (no cycle: the request holds the environ).
            self.environ[RULE_KEY] = self.url_rule
            close(self)

    AegisRequest.__name__ = AegisRequest.__qualname__ = base.__name__
    return AegisRequest
