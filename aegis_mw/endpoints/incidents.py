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
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..history.ranges import QueryError
from ..incidents.model import ACTIVE, SEVERITIES, STATUSES, IncidentError, changes, opening
from ..incidents.store import Conflict
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


def _missing() -> Response:
    return Response.error(404, "not_found", "no incident has this id")


def incident_write(
    incidents: Incidents | None, method: str, incident_id: str | None, data: dict[str, Any],
    actor: str, ready: Callable[[], None] = lambda: None,
) -> Response:  # fmt: skip
    """The answer to ``POST incidents`` (``incident_id`` None) or ``PATCH
    incidents?id=``; ``ready`` is called once the fields are checked, before
    the store is written."""
    if incidents is None:
        return Response.error(
            409, "incidents_unavailable",
            "incidents need a sink that keeps history: memory://, sqlite:///... or postgresql://...",
        )  # fmt: skip
    try:
        # The fields checked first: a bad one is a 400 whatever the store's state.
        if method == "POST":
            opening(data)
        else:
            changes(data)
        ready()
        if method == "POST":
            incident, created = incidents.open(data, actor)
            body = {"data": {"incident": incident.to_json(), "created": created}}
            return Response.json(201 if created else 200, body)
        changed = incidents.change(incident_id or "", data, actor)
    except IncidentError as error:
        return Response.json(
            400,
            {"error": {"code": "invalid_field", "message": error.message, "field": error.field}},
        )
    except Conflict as error:
        return Response.error(409, "incident_conflict", str(error))
    if changed is None:
        return _missing()
    return Response.json(200, {"data": {"incident": changed.to_json()}})
