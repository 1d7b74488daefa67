"""``GET {api_path}/audit``: who changed what, when, and from where, for admins.

One log, newest first, of the API's and the app's writes that are kept: the
alert store's audit (rules, channels, silences, test notices; with alerts on),
the incidents' updates (opened, changed, notes, attached openings) and the
events posted (see :mod:`aegis_mw.core.audit_log`). Each
entry: ``at``, ``actor`` (the credential's name and the client's address
over HTTP), ``action``, ``object`` and ``detail``. Readable by the admin role
only: it names who holds which credential and from where they write.
"""

from __future__ import annotations

import heapq
import itertools
from typing import TYPE_CHECKING, Any

from ..core.record import isoformat

if TYPE_CHECKING:
    from ..aegis import Aegis

AUDIT_PARAMETERS = ("limit",)


def audit_answer(aegis: Aegis, limit: int) -> dict[str, Any]:
    """The latest ``limit`` entries (reads the stores: from a worker thread)."""
    sources: list[list[dict[str, Any]]] = []
    if aegis.alerts is not None:
        sources.append([{**row, "source": "alerts"} for row in aegis.alerts.store.audit(limit)])
    if aegis.incidents is not None:
        updates = aegis.incidents.store.recent_updates(limit)
        sources.append([{**update.audit_row(), "source": "incidents"} for update in updates])
    if aegis.audit_log is not None:
        sources.append([{**row, "source": "events"} for row in aegis.audit_log.latest(limit)])
    merged = heapq.merge(*sources, key=lambda row: row["at"], reverse=True)
    entries = [{**row, "at": isoformat(row["at"])} for row in itertools.islice(merged, limit)]
    return {"limit": limit, "entries": entries}
