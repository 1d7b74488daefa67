"""``{api_path}/incidents``, ``/incident`` and ``/incident-timeline``.

Reads (the ``api`` group): ``GET incidents`` lists them newest first
(``status``: a comma-separated list of statuses, or ``active`` for every one
but resolved; ``severity`` likewise; ``limit``, ``offset``); ``GET
incident?id=`` one, with its updates (its audit: who changed what, when) and
its summary; ``GET incident-timeline?id=`` what happened around it, oldest
first (``limit``, ``offset``; ``latest=true`` for the last ``limit`` items,
in one read where a client would otherwise read the total first).

Writes (the editor role): ``POST incidents`` opens one (201), or attaches to
the active incident of its ``correlation_key`` (200, ``created`` false);
``PATCH incidents?id=`` changes its fields and adds a ``note``; a bad field
is a 400 naming it, an unknown id a 404, reopening an incident whose key has
another active one a 409.

``POST incidents`` with an ``Idempotency-Key`` header opens once per key (and
credential) in a day: the same key again, a retry after a lost answer or
the same request sent twice at once, answers as the first did (its status,
the incident as it is now) with ``Idempotent-Replayed: true``; the same key
with other fields is a 422.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..history.ranges import QueryError
from ..incidents.model import ACTIVE, SEVERITIES, STATUSES, IncidentError, changes, opening
from ..incidents.store import Conflict, KeyReused
from .events import comma_choices
from .response import Response

if TYPE_CHECKING:
    from ..incidents.service import Incidents

#: The query parameters of the incidents' read endpoints.
INCIDENT_PARAMETERS: Mapping[str, tuple[str, ...]] = {
    "incidents": ("status", "severity", "limit", "offset"),
    "incident": ("id",),
    "incident-timeline": ("id", "limit", "offset", "latest"),
}
MAX_INCIDENT_OFFSET = 100_000
#: Updates ``GET incident`` shows at most, the latest.
MAX_UPDATES_SHOWN = 1000
#: An Idempotency-Key: visible ASCII and spaces, as long as Stripe's at most
#: (a UUID is 36).
IDEMPOTENCY_KEY = re.compile(r"[\x20-\x7e]{1,255}")

Integer = Callable[[Mapping[str, str], str, int, int, int], int]


def _found(incidents: Incidents, params: Mapping[str, str], ready: Callable[[], None]) -> Any:
    incident_id = params.get("id")
    if not incident_id:
        raise QueryError("id", "id is required")
    ready()
    return incidents.get(incident_id)


def incidents_answer(
    incidents: Incidents,
    endpoint: str,
    params: Mapping[str, str],
    integer: Integer,
    ready: Callable[[], None] = lambda: None,
) -> Response:
    """A read's answer (parameters checked as text by the caller); ``ready``
    is called once the parameters are checked, before the store is read
    (``store_down.refuse_while_down``)."""
    if endpoint == "incidents":
        limit = integer(params, "limit", 100, 1, 1000)
        offset = integer(params, "offset", 0, 0, MAX_INCIDENT_OFFSET)
        statuses = comma_choices(params, "status", STATUSES, {"active": ACTIVE})
        severities = comma_choices(params, "severity", SEVERITIES)
        ready()
        found = incidents.find(statuses, severities, limit, offset)
        data = {"limit": limit, "offset": offset, "incidents": [i.to_json() for i in found]}
        return Response.json(200, {"data": data})
    if endpoint == "incident-timeline":
        limit = integer(params, "limit", 100, 1, 1000)
        offset = integer(params, "offset", 0, 0, MAX_INCIDENT_OFFSET)
        latest = params.get("latest", "false")
        if latest not in ("true", "false"):
            raise QueryError("latest", "latest must be true or false")
        if latest == "true" and "offset" in params:
            raise QueryError("offset", "give offset or latest=true, not both")
        incident = _found(incidents, params, ready)
        if incident is None:
            return _missing()
        page = incidents.timeline(incident, limit, None if latest == "true" else offset)
        return Response.json(200, {"data": page})
    incident = _found(incidents, params, ready)
    if incident is None:
        return _missing()
    updates = incidents.updates(incident.incident_id)
    data = {
        "incident": incident.to_json(),
        # The latest: a rule that flaps attaches a row per firing (the
        # timeline pages through them all).
        "updates": [update.to_json() for update in updates[-MAX_UPDATES_SHOWN:]],
        "updates_total": len(updates),
        "summary": incidents.summary(incident),
    }
    return Response.json(200, {"data": data})


def _opened(
    incidents: Incidents, data: dict[str, Any], actor: str, idempotency: tuple[str, str] | None
) -> Response:
    """A POST's answer: 201 for an incident opened, 200 for one attached to,
    as the first opening of its Idempotency-Key answered."""
    replayed = False
    if idempotency is None:
        incident, created = incidents.open(data, actor)
    else:
        incident, created, replayed = incidents.open_once(data, actor, *idempotency)
    body = {"data": {"incident": incident.to_json(), "created": created}}
    headers = [("Idempotent-Replayed", "true")] if replayed else []
    return Response.json(201 if created else 200, body, headers=headers)


def _missing() -> Response:
    return Response.error(404, "not_found", "no incident has this id")


def incident_write(
    incidents: Incidents | None, method: str, incident_id: str | None, data: dict[str, Any],
    actor: str, ready: Callable[[], None] = lambda: None,
    idempotency: tuple[str, str] | None = None,
) -> Response:  # fmt: skip
    """The answer to ``POST incidents`` (``incident_id`` None) or ``PATCH
    incidents?id=``; ``ready`` is called once the fields are checked, before
    the store is written. ``idempotency``: a POST's ``Idempotency-Key``
    header and whose credential sent it (None without the header)."""
    if incidents is None:
        return Response.error(
            409, "incidents_unavailable",
            "incidents need a sink that keeps history: memory://, sqlite:///... or postgresql://...",
        )  # fmt: skip
    if (
        method == "POST"
        and idempotency is not None
        and not IDEMPOTENCY_KEY.fullmatch(idempotency[0])
    ):
        return Response.json(400, {"error": {
            "code": "invalid_header", "header": "Idempotency-Key",
            "message": "Idempotency-Key must be 1 to 255 ASCII letters, digits, "
            "punctuation or spaces (a UUID, say)",
        }})  # fmt: skip
    try:
        # The fields checked first: a bad one is a 400 whatever the store's state.
        if method == "POST":
            opening(data)
        else:
            changes(data)
        ready()
        if method == "POST":
            return _opened(incidents, data, actor, idempotency)
        changed = incidents.change(incident_id or "", data, actor)
    except IncidentError as error:
        return Response.json(
            400,
            {"error": {"code": "invalid_field", "message": error.message, "field": error.field}},
        )
    except Conflict as error:
        return Response.error(409, "incident_conflict", str(error))
    except KeyReused:
        return Response.error(
            422, "idempotency_key_reused",
            "this Idempotency-Key opened an incident with other fields in the last 24 hours; "
            "send a new key for a new incident",
        )  # fmt: skip
    if changed is None:
        return _missing()
    return Response.json(200, {"data": {"incident": changed.to_json()}})
