"""The API's writes, by endpoint: the app's events, and the alerts' (see
:mod:`.alert_writes`). One object answers them all for the mounted routes."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..access.check import ADMIN, EDITOR
from . import alert_writes
from .alert_writes import AlertWrites
from .events import post_events
from .incidents import incident_write
from .response import Response
from .store_down import StoreUnavailable, known_down, refuse_while_down

if TYPE_CHECKING:
    from ..aegis import Aegis

logger = logging.getLogger("aegis_mw.api")

#: endpoint -> the methods that write there
WRITES: Mapping[str, tuple[str, ...]] = {
    **alert_writes.WRITES, "events": ("POST",), "incidents": ("POST", "PATCH"),
}  # fmt: skip


#: endpoint -> the role its reads need, where more than the group's rule
#: (any role): the audit log names who holds which credential.
READ_ROLES: Mapping[str, str] = {"audit": ADMIN}


def write_role(endpoint: str) -> str:
    """The role the writes of ``endpoint`` need: events and incidents, the editor's."""
    return EDITOR if endpoint in ("events", "incidents") else alert_writes.write_role(endpoint)


class ApiWrites:
    """Answers every write of the API for one pipeline."""

    def __init__(self, aegis: Aegis) -> None:
        self.aegis = aegis
        self.alerts = AlertWrites(aegis.alerts, lambda: refuse_while_down(aegis))

    def respond(
        self, method: str, endpoint: str, query_string: bytes, body: bytes, actor: str,
        idempotency: tuple[str, str] | None = None,
    ) -> Response:  # fmt: skip
        """The answer to ``method {api_path}/{endpoint}``; ``actor`` is who
        asks; ``idempotency`` the request's ``Idempotency-Key`` header and
        whose credential sent it (None without one: see endpoints.incidents)."""
        if endpoint == "events":
            return post_events(self.aegis, body, actor)
        if endpoint == "incidents":
            return self._incidents(method, query_string, body, actor, idempotency)
        return self.alerts.respond(method, endpoint, query_string, body, actor)

    def _incidents(
        self, method: str, query_string: bytes, body: bytes, actor: str,
        idempotency: tuple[str, str] | None,
    ) -> Response:  # fmt: skip
        try:
            incident_id = (
                None if method == "POST" else alert_writes.query_parameter(query_string, "id")
            )
            data = alert_writes.json_object(body)
        except alert_writes.BadInput as error:
            return alert_writes.problem(error)
        try:
            return incident_write(
                self.aegis.incidents, method, incident_id, data, actor,
                lambda: refuse_while_down(self.aegis), idempotency,
            )  # fmt: skip
        except StoreUnavailable as error:
            return known_down("the incident store", error)
        except Exception:
            # The store's fault (down, locked past its timeout): nothing was
            # written, so the caller may retry; never a 500.
            logger.warning("aegis_mw: the API's %s incidents failed", method, exc_info=True)
            return Response.error(
                503, "storage_unavailable",
                "the incident store could not be read or written now; retry", retry_after="5",
            )  # fmt: skip
