"""The API's writes, by endpoint: the app's events, and the alerts' (see
:mod:`.alert_writes`). One object answers them all for the mounted routes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..access.check import EDITOR
from . import alert_writes
from .alert_writes import AlertWrites
from .events import post_events
from .response import Response

if TYPE_CHECKING:
    from ..aegis import Aegis

#: endpoint -> the methods that write there
WRITES: Mapping[str, tuple[str, ...]] = {**alert_writes.WRITES, "events": ("POST",)}


def write_role(endpoint: str) -> str:
    """The role the writes of ``endpoint`` need: an event, the editor's."""
    return EDITOR if endpoint == "events" else alert_writes.write_role(endpoint)


class ApiWrites:
    """Answers every write of the API for one pipeline."""

    def __init__(self, aegis: Aegis) -> None:
        self.aegis = aegis
        self.alerts = AlertWrites(aegis.alerts)

    def respond(
        self, method: str, endpoint: str, query_string: bytes, body: bytes, actor: str
    ) -> Response:
        """The answer to ``method {api_path}/{endpoint}``; ``actor`` is who asks."""
        if endpoint == "events":
            return post_events(self.aegis, body)
        return self.alerts.respond(method, endpoint, query_string, body, actor)
