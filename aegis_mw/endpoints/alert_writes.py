"""The API's writes: alert rules, silences, a test notice, a dry run.

Routes (under ``api_path``), each for the editor role or above::

    PUT    /alert-rules              a rule (its fields as JSON): created or replaced
    DELETE /alert-rules?name=NAME    removed (its firing alerts are resolved)
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
import threading
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from ..alerts.dry_run import MAX_SPAN, replay
from ..alerts.matchers import PolicyError
from ..alerts.outbox import send_test
from ..alerts.rules import RuleError, parse_duration, rule_from_mapping
from ..alerts.service import API_RULE_LIMIT
from ..alerts.silences import parse_time, silence_from_mapping
from ..alerts.store import TooManyRules
from ..core.errors import ConfigError
from .response import Response

if TYPE_CHECKING:
    from ..alerts.service import AlertService

logger = logging.getLogger("aegis_mw.api")

#: endpoint -> the methods that write there
WRITES: Mapping[str, tuple[str, ...]] = {
    "alert-rules": ("PUT", "DELETE"),
    "alert-rules/dry-run": ("POST",),
    "silences": ("POST", "DELETE"),
    "channel-test": ("POST",),
}
#: The largest body taken (a rule, a silence): a larger one answers 413.
MAX_BODY = 64 * 1024
#: A dry run over the API covers at most this many evaluations (the CLI more).
DRY_RUN_STEPS = 2880
_SILENCE_FIELDS = ("id", "matchers", "starts_at", "ends_at", "duration", "comment", "created_by")


class BadInput(Exception):
    """A body or parameter that cannot be taken: 400 naming ``field``."""

    def __init__(self, field: str, message: str, status: int = 400, code: str = "bad_request"):
        super().__init__(message)
        self.field, self.message, self.status, self.code = field, message, status, code


def _problem(error: BadInput) -> Response:
    return Response.json(
        error.status,
        {"error": {"code": error.code, "message": error.message, "field": error.field}},
    )


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body.decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise BadInput("body", f"the body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadInput("body", "the body must be a JSON object")
    return data


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _query(query_string: bytes, name: str) -> str:
    try:
        pairs = parse_qsl(query_string.decode("utf-8"), strict_parsing=False, max_num_fields=4)
    except (UnicodeDecodeError, ValueError):
        raise BadInput(name, "the query string is not valid") from None
    values = [value for key, value in pairs if key == name]
    others = sorted({key for key, _ in pairs} - {name})
    if others:
        raise BadInput(others[0], f"unknown parameter {others[0]!r}; known: {name}")
    if len(values) != 1 or not values[0] or len(values[0]) > 256:
        raise BadInput(name, f"{name} is required, once, as a query parameter")
    return values[0]


def _from_config_error(error: ConfigError) -> BadInput:
    field = getattr(error, "field", error.option)
    return BadInput(str(field), str(error))


class AlertWrites:
    """Answers the API's writes for one alert service (None: alerts are off)."""

    def __init__(self, alerts: AlertService | None) -> None:
        self.alerts = alerts
        # One dry run at a time per process: it can read a day of rollups.
        self._replaying = threading.Lock()

    def respond(
        self, method: str, endpoint: str, query_string: bytes, body: bytes, actor: str
    ) -> Response:
        """The answer to ``method {api_path}/{endpoint}``; ``actor`` is who
        asks, for the audit."""
        alerts = self.alerts
        if alerts is None:
            return Response.error(
                409, "alerts_off",
                "alerts are off: configure alert_rules or alert_channels (with a sink that "
                "keeps history) to write rules and silences",
            )  # fmt: skip
        try:
            if endpoint == "alert-rules":
                if method == "PUT":
                    return self._put_rule(alerts, _json_object(body), actor)
                return self._delete_rule(alerts, _query(query_string, "name"), actor)
            if endpoint == "silences":
                if method == "POST":
                    return self._put_silence(alerts, _json_object(body), actor)
                return self._expire_silence(alerts, _query(query_string, "id"), actor)
            if endpoint == "channel-test":
                return self._test(alerts, _json_object(body), actor)
            return self._dry_run(alerts, _json_object(body))
        except BadInput as error:
            return _problem(error)
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
        if source in ("settings", "builtin"):
            raise BadInput(
                "name", f"the rule {rule.name!r} is the app's own ({source}); change it there",
                409, "conflict",
            )  # fmt: skip
        try:
            action = alerts.store.put_rule(rule.to_mapping(), actor, alerts.wall(), API_RULE_LIMIT)
        except TooManyRules:
            raise BadInput(
                "name", f"at most {API_RULE_LIMIT} rules are kept through the API; delete one",
                409, "too_many_rules",
            ) from None  # fmt: skip
        status = 201 if action == "create" else 200
        return Response.json(status, {"data": {"rule": rule.to_mapping(), "action": action}})

    def _delete_rule(self, alerts: AlertService, name: str, actor: str) -> Response:
        source = alerts.rule_source(name)
        if source in ("settings", "builtin"):
            raise BadInput(
                "name", f"the rule {name!r} is the app's own ({source}); remove it there",
                409, "conflict",
            )  # fmt: skip
        if not alerts.store.delete_rule(name, actor, alerts.wall()):
            raise BadInput(
                "name", f"no rule {name!r} was written through the API", 404, "not_found"
            )
        return Response.json(200, {"data": {"name": name, "action": "delete"}})

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
        if given_id is not None:
            known = {s.id for s in alerts.store.silences(now) if s.ends_at > now}
            if given_id not in known:
                raise BadInput(
                    "id", f"no silence {given_id!r} that has not ended", 404, "not_found"
                )
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
        alerts.store.put_silence(silence, actor, now)
        status = 200 if given_id is not None else 201
        return Response.json(
            status, {"data": {**silence.to_mapping(), "state": silence.state(now)}}
        )

    def _expire_silence(self, alerts: AlertService, silence_id: str, actor: str) -> Response:
        if not alerts.store.expire_silence(silence_id, actor, alerts.wall()):
            raise BadInput("id", f"no silence {silence_id!r} that has not ended", 404, "not_found")
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
            end = alerts.wall()
            [result] = replay(
                alerts.reader, [rule], start=end - span, end=end, step=step, settle=alerts.settle
            )
        finally:
            self._replaying.release()
        return Response.json(200, {"data": result.to_mapping()})
