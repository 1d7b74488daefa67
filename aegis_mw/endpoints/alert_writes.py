"""The API's writes: alert rules, silences, a test notice, a dry run.

Routes (under ``api_path``), each for the editor role or above (channels:
the admin role)::

    PUT    /alert-rules              a rule (its fields as JSON): created or replaced
    DELETE /alert-rules?name=NAME    removed (its firing alerts are resolved)
    PUT    /alert-channels           a channel ({"name": ..., its settings}): created or replaced
    DELETE /alert-channels?name=NAME removed (its pending notices are skipped)
    POST   /alert-rules/dry-run      {"rule": {...}} or {"name": ...}; "hours", "step"
    POST   /silences                 a silence: created, or updated when its id exists
    DELETE /silences?id=ID           expired now
    POST   /channel-test             {"channel": NAME}: one test notice, delivered or not

The access check, the method and the cross-site checks are the mounted
routes' (``asgi/mounted.py``); this module takes the body they read and
answers, blocking (the store, a channel), so it runs in a thread of the
``store`` lane. Every change is audited in the store with who made it
(``actor``). A bad body is a 400 naming the field; a rule the settings own,
a name taken or too many rules a 409; never a 500.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..access.check import ADMIN, EDITOR
from ..alerts.api_channels import check_name, public_settings, refusal, unreachable
from ..alerts.dry_run import MAX_SPAN, replay
from ..alerts.matchers import PolicyError
from ..alerts.outbox import send_test
from ..alerts.rules import RuleError, parse_duration, rule_from_mapping
from ..alerts.service import API_RULE_LIMIT, BUILTIN_RULES
from ..alerts.silences import parse_time, silence_from_mapping
from ..alerts.store import CHANNEL, RULE, TooMany
from ..core.errors import ConfigError
from ..history.ranges import QueryError
from .api import check_text, query_parameters
from .response import Response
from .store_down import StoreUnavailable, known_down

if TYPE_CHECKING:
    from ..alerts.service import AlertService

logger = logging.getLogger("aegis_mw.api")

#: endpoint -> the methods that write there
WRITES: Mapping[str, tuple[str, ...]] = {
    "alert-rules": ("PUT", "DELETE"),
    "alert-channels": ("PUT", "DELETE"),
    "alert-rules/dry-run": ("POST",),
    "silences": ("POST", "DELETE"),
    "channel-test": ("POST",),
}
#: endpoint -> the role its writes need (EDITOR when not named): a channel
#: decides where the app's alerts go and holds secrets.
WRITE_ROLES: Mapping[str, str] = {"alert-channels": ADMIN}


def write_role(endpoint: str) -> str:
    """The role the writes of ``endpoint`` need."""
    return WRITE_ROLES.get(endpoint, EDITOR)


#: The most channels the API may keep in the store (besides the settings' own).
API_CHANNEL_LIMIT = 100
#: The largest body taken (a rule, a silence): a larger one answers 413.
MAX_BODY = 64 * 1024
#: A dry run over the API covers at most this many evaluations (the CLI more).
DRY_RUN_STEPS = 2880
#: The most silences not yet ended the API keeps (every tick reads them all).
SILENCE_LIMIT = 1000
#: Seconds between two test notices to one channel, per process.
TEST_COOLDOWN = 10.0
_SILENCE_FIELDS = ("id", "matchers", "starts_at", "ends_at", "duration", "comment", "created_by")


def too_large() -> Response:
    """The answer to a body over MAX_BODY (ASGI, WSGI and Django alike)."""
    return Response.error(413, "body_too_large", f"the body may be at most {MAX_BODY} bytes")


class BadInput(Exception):
    """A body field (or, with ``in_query``, a query parameter) that cannot be
    taken: 400 naming it, or the status given."""

    def __init__(
        self, field: str, message: str, status: int = 400, code: str = "", *,
        in_query: bool = False,
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.field, self.message, self.status = field, message, status
        self.in_query = in_query
        self.code = code or ("invalid_parameter" if in_query else "invalid_field")


def problem(error: BadInput) -> Response:
    # "parameter" for the query, as the read API names it; "field" for the body.
    where = "parameter" if error.in_query else "field"
    return Response.json(
        error.status,
        {"error": {"code": error.code, "message": error.message, where: error.field}},
    )


#: C0 and C1 controls and DEL, but tab and newline (a description may have
#: lines): stored text is printed by the CLI and shown on the dashboard.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object; :class:`BadInput` naming the problem."""
    try:
        data = json.loads(body.decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise BadInput("body", f"the body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadInput("body", "the body must be a JSON object")
    _check_text(data, "")
    return data


def _check_text(value: Any, where: str) -> None:
    """No control characters in any text of the body, keys included."""
    items: Any = ()
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = ((f"[{n}]", v) for n, v in enumerate(value))
    elif isinstance(value, str) and _CONTROL.search(value):
        raise BadInput(where or "body", f"{where or 'the body'} may not hold control characters")
    for key, item in items:
        name = key if key.startswith("[") else f".{key}"
        path = f"{where}{name}" if where else name.lstrip(".")
        if _CONTROL.search(key):
            raise BadInput(where or "body", "a key may not hold control characters")
        _check_text(item, path)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def query_parameter(query_string: bytes, name: str) -> str:
    """The one parameter a DELETE takes, checked as the read endpoints check
    theirs."""
    try:
        params = query_parameters(query_string, (name,))
        for key, value in params.items():
            check_text(key, value)
    except QueryError as error:
        raise BadInput(error.parameter, error.message, code=error.code, in_query=True) from None
    value = params.get(name, "")
    if not value:
        raise BadInput(name, f"{name} is required as a query parameter", in_query=True)
    return value


def _after_fork(ref: weakref.ReferenceType[AlertWrites]) -> None:
    writes = ref()
    if writes is not None:
        writes._reset()


class AlertWrites:
    """Answers the API's writes for one alert service (None: alerts are off)."""

    def __init__(
        self, alerts: AlertService | None, ready: Callable[[], None] = lambda: None
    ) -> None:
        self.alerts = alerts
        #: Called once a write's input is checked, before the store is
        #: written (``store_down.refuse_while_down``).
        self._ready = ready
        # One dry run at a time per process: it can read a day of rollups.
        self._replaying = threading.Lock()
        #: Channel -> when its last test notice was sent (monotonic seconds).
        self._tested: dict[str, float] = {}
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _after_fork(ref))

    def _reset(self) -> None:
        self._replaying = threading.Lock()  # a parent's dry run may have held it
        self._tested = {}

    def respond(
        self, method: str, endpoint: str, query_string: bytes, body: bytes, actor: str
    ) -> Response:
        """The answer to ``method {api_path}/{endpoint}``; ``actor`` is who
        asks, for the audit."""
        alerts = self.alerts
        if alerts is None:
            return Response.error(
                409, "alerts_off",
                "alerts are off: set alerts_enabled (or give alert_rules or alert_channels), "
                "with a sink that keeps history, to write rules and silences",
            )  # fmt: skip
        try:
            if endpoint == "alert-rules":
                if method == "PUT":
                    return self._put_rule(alerts, json_object(body), actor)
                return self._delete(alerts, RULE, query_parameter(query_string, "name"), actor)
            if endpoint == "alert-channels":
                if method == "PUT":
                    return self._put_channel(alerts, json_object(body), actor)
                return self._delete(alerts, CHANNEL, query_parameter(query_string, "name"), actor)
            if endpoint == "silences":
                if method == "POST":
                    return self._put_silence(alerts, json_object(body), actor)
                return self._expire_silence(alerts, query_parameter(query_string, "id"), actor)
            if endpoint == "channel-test":
                return self._test(alerts, json_object(body), actor)
            return self._dry_run(alerts, json_object(body))
        except BadInput as error:
            return problem(error)
        except StoreUnavailable as error:
            return known_down("the alert store", error)
        except Exception:
            # The store's fault (down, locked past its timeout): nothing was
            # written, so the caller may retry; never a 500.
            logger.warning(
                "aegis_mw: the alert API's %s %s failed", method, endpoint, exc_info=True
            )
            return Response.error(
                503, "storage_unavailable",
                "the alert store could not be read or written now; retry",
                retry_after="5",
            )  # fmt: skip

    # -- rules --------------------------------------------------------------------
    def _put_rule(self, alerts: AlertService, data: dict[str, Any], actor: str) -> Response:
        try:
            rule = rule_from_mapping(data, "body")
            alerts.check_rule(rule)
        except RuleError as error:
            raise BadInput(error.field, str(error)) from None
        except TypeError as exc:  # a field of the wrong kind the checks did not name
            raise BadInput("body", f"the rule is invalid: {exc}") from None
        source = alerts.rule_source(rule.name)
        if source == "settings" or rule.name in BUILTIN_RULES:
            raise BadInput(
                "name", f"the rule {rule.name!r} is the app's own; change it in its settings",
                409, "conflict",
            )  # fmt: skip
        self._ready()
        try:
            action = alerts.store.put_item(
                RULE, rule.name, rule.to_mapping(), actor, alerts.wall(), API_RULE_LIMIT
            )
        except TooMany:
            raise BadInput(
                "name", f"at most {API_RULE_LIMIT} rules are kept through the API; delete one",
                409, "too_many_rules",
            ) from None  # fmt: skip
        alerts.reload()
        status = 201 if action == "create" else 200
        return Response.json(status, {"data": {"rule": rule.to_mapping(), "action": action}})

    def _delete(self, alerts: AlertService, kind: str, name: str, actor: str) -> Response:
        """Remove a rule or a channel of the API. A stored one goes whatever
        shadows it (a settings rule of the same name leaves it out of the
        evaluation): it still counts to the limit. A channel's pending
        notices go with it, unless the settings have a channel of its name."""
        source = alerts.rule_source(name) if kind == RULE else alerts.channel_source(name)
        own = source in ("settings", "builtin")
        self._ready()
        if alerts.store.delete_item(kind, name, actor, alerts.wall(), notices=not own):
            alerts.reload()
            return Response.json(200, {"data": {"name": name, "action": "delete"}})
        if own:
            raise BadInput(
                "name", f"the {kind} {name!r} is the app's own ({source}); remove it there",
                409, "conflict", in_query=True,
            )  # fmt: skip
        raise BadInput(
            "name", f"no {kind} {name!r} was written through the API", 404, "not_found",
            in_query=True,
        )  # fmt: skip

    # -- channels -----------------------------------------------------------------
    def _put_channel(self, alerts: AlertService, data: dict[str, Any], actor: str) -> Response:
        try:
            name = check_name(data.get("name"))
        except ValueError as exc:
            raise BadInput("name", str(exc)) from None
        if alerts.channel_source(name) == "settings":
            raise BadInput(
                "name", f"the channel {name!r} is the app's own; change it in its settings",
                409, "conflict",
            )  # fmt: skip
        settings = {key: value for key, value in data.items() if key != "name"}
        try:
            # Checked as every process will check it: its references must
            # be set here too, its address public or in alert_api_networks.
            channel = alerts.build_api_channel(name, settings)
        except ConfigError as error:
            raise BadInput(*refusal(error)) from None
        except TypeError as exc:  # a field of the wrong kind the checks did not name
            raise BadInput("body", f"the channel is invalid: {exc}") from None
        # A host name is resolved now too (every send checks it again).
        refused = unreachable(channel, alerts.api_networks)
        if refused is not None:
            raise BadInput(refused[0], f"{refused[0]}: {refused[1]}")
        self._ready()
        try:
            action = alerts.store.put_item(
                CHANNEL, name, settings, actor, alerts.wall(), API_CHANNEL_LIMIT
            )
        except TooMany:
            raise BadInput(
                "name", f"at most {API_CHANNEL_LIMIT} channels are kept through the API; "
                "delete one", 409, "too_many_channels",
            ) from None  # fmt: skip
        alerts.reload()
        status = 201 if action == "create" else 200
        shown = {"name": name, **public_settings(settings)}
        return Response.json(status, {"data": {"channel": shown, "action": action}})

    # -- silences -----------------------------------------------------------------
    def _put_silence(self, alerts: AlertService, data: dict[str, Any], actor: str) -> Response:
        unknown = sorted(str(key) for key in data if key not in _SILENCE_FIELDS)
        if unknown:
            raise BadInput(
                unknown[0], f"unknown field {unknown[0]!r}; known: {', '.join(_SILENCE_FIELDS)}"
            )
        now = alerts.wall()
        fields = dict(data)
        given_id = fields.get("id")
        if given_id is not None and not isinstance(given_id, str):
            raise BadInput("id", "id must be the text id of a silence")
        fields.setdefault("id", uuid.uuid4().hex)
        fields.setdefault("created_by", actor)
        try:
            starts = parse_time(fields.get("starts_at", now))
        except ValueError as exc:
            raise BadInput("starts_at", f"starts_at: {exc}") from None
        fields["starts_at"] = starts
        duration = fields.pop("duration", None)
        if duration is not None:
            if "ends_at" in fields:
                raise BadInput("duration", "give ends_at or duration, not both")
            try:
                fields["ends_at"] = starts + parse_duration(duration)
            except ValueError as exc:
                raise BadInput("duration", f"duration: {exc}") from None
        try:
            silence = silence_from_mapping(fields)
        except PolicyError as error:
            raise BadInput(error.field, str(error)) from None
        if silence.ends_at <= now:
            raise BadInput("ends_at", "the silence would have ended already")
        self._ready()
        try:
            # An update only over a silence not ended (checked as it is
            # written: one expired meanwhile is not brought back).
            written = alerts.store.put_silence(
                silence, actor, now, update=given_id is not None, limit=SILENCE_LIMIT
            )
        except TooMany:
            raise BadInput(
                "matchers", f"at most {SILENCE_LIMIT} silences not yet ended are kept; "
                "expire one", 409, "too_many_silences",
            ) from None  # fmt: skip
        if not written:
            raise BadInput("id", f"no silence {given_id!r} that has not ended", 404, "not_found")
        status = 200 if given_id is not None else 201
        return Response.json(
            status, {"data": {**silence.to_mapping(), "state": silence.state(now)}}
        )

    def _expire_silence(self, alerts: AlertService, silence_id: str, actor: str) -> Response:
        self._ready()
        if not alerts.store.expire_silence(silence_id, actor, alerts.wall()):
            raise BadInput(
                "id", f"no silence {silence_id!r} that has not ended", 404, "not_found",
                in_query=True,
            )  # fmt: skip
        return Response.json(200, {"data": {"id": silence_id, "action": "expire"}})

    # -- a test notice ------------------------------------------------------------
    def _test(self, alerts: AlertService, data: dict[str, Any], actor: str) -> Response:
        if set(data) != {"channel"} or not isinstance(data["channel"], str):
            raise BadInput("channel", 'the body is {"channel": NAME}')
        name = data["channel"]
        channel = alerts.channels.get(name)
        if channel is None:
            known = ", ".join(sorted(alerts.channels)) or "none"
            raise BadInput("channel", f"no channel {name!r}; configured: {known}", 404, "not_found")
        # One test a channel per TEST_COOLDOWN seconds: each holds a thread
        # of the store lane for up to the channel's timeout.
        moment = time.monotonic()
        last = self._tested.get(name)
        if last is not None and moment - last < TEST_COOLDOWN:
            wait = max(1, math.ceil(TEST_COOLDOWN - (moment - last)))
            return Response.error(
                429, "busy", f"channel {name!r} was tested less than {TEST_COOLDOWN:g} s ago",
                retry_after=str(wait),
            )  # fmt: skip
        # Its audit entry goes to the store: not sent while the store is known
        # down (a notice delivered and then answered 503 would be sent twice).
        self._ready()
        self._tested[name] = moment
        now = alerts.wall()
        result = send_test(channel, now, "the alert API")
        # Delivered or why not: a status or a fault, never the receiver's
        # answer (it could hold what the target is made to say).
        outcome = {"channel": name, "delivered": result.delivered, "error": result.error or None}
        alerts.store.add_audit(actor, "test", f"channel {name}", outcome, now)
        return Response.json(200, {"data": outcome})

    # -- a dry run ----------------------------------------------------------------
    def _dry_run(self, alerts: AlertService, data: dict[str, Any]) -> Response:
        allowed = ("rule", "name", "hours", "step")
        unknown = sorted(str(key) for key in data if key not in allowed)
        if unknown:
            raise BadInput(unknown[0], f"unknown field {unknown[0]!r}; known: {', '.join(allowed)}")
        if ("rule" in data) == ("name" in data):
            raise BadInput("rule", "give a rule (its fields) or the name of one, not both")
        if "rule" in data:
            try:
                rule = rule_from_mapping(data["rule"], "rule")
                alerts.check_rule(rule)
            except RuleError as error:
                raise BadInput(f"rule.{error.field}", str(error)) from None
            except TypeError as exc:
                raise BadInput("rule", f"the rule is invalid: {exc}") from None
        else:
            if not isinstance(data["name"], str):
                raise BadInput("name", "name must be the text name of a rule")
            found = [r for r in alerts.rules if r.name == data["name"]]
            if not found:
                raise BadInput("name", f"no rule {data['name']!r}", 404, "not_found")
            rule = found[0]
        hours = data.get("hours", 24)
        if (
            isinstance(hours, bool)
            or not isinstance(hours, (int, float))
            or not (0 < hours <= MAX_SPAN / 3600)
        ):
            raise BadInput("hours", f"hours must be a number above 0, at most {MAX_SPAN / 3600:g}")
        try:
            step = parse_duration(data.get("step", "60s"))
        except ValueError as exc:
            raise BadInput("step", f"step: {exc}") from None
        span = hours * 3600.0
        if step <= 0 or not math.isfinite(step) or span / step > DRY_RUN_STEPS:
            raise BadInput(
                "step", f"step must be above 0 and give at most {DRY_RUN_STEPS} evaluations "
                f"over {hours:g} h (at least {span / DRY_RUN_STEPS:g} s)",
            )  # fmt: skip
        if not self._replaying.acquire(blocking=False):
            return Response.error(
                429, "busy", "a dry run is running in this process; retry shortly", retry_after="5"
            )
        try:
            # It reads the stored history; a second dry run answers 429
            # first, without waiting for a probe of the store.
            self._ready()
            end = alerts.wall()
            [result] = replay(
                alerts.reader, [rule], start=end - span, end=end, step=step, settle=alerts.settle
            )
        finally:
            self._replaying.release()
        return Response.json(200, {"data": result.to_mapping()})
