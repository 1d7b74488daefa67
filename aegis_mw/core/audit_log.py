"""The audit of the API's writes that keep no audit of their own: who posted
which events, when, and from which address.

Incidents keep their audit as their updates, and alerting its own (rules,
channels, silences, test notices), each in the transaction of the change.
An events POST changes nothing it could keep an audit row beside: its events
go through the batched pipeline and reach the store later. So the post is
audited here first, in the history store's ``aegis_audit`` table (or the
memory sink's list), and only an audited post is queued: a post that cannot
be audited is refused, and the client sends it again (see
``endpoints/events.py``). Entries expire with the events they name.

Only parameterised SQL.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any, Protocol

from .transactions import write_transaction

_DUMP = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def audit_entry(
    at: float, actor: str, action: str, what: str, detail: Mapping[str, Any]
) -> dict[str, Any]:
    """One entry as the audit log answers it (the alert store's shape)."""
    return {"at": at, "actor": actor, "action": action, "object": what, "detail": dict(detail)}


class AuditLog(Protocol):
    def add(self, at: float, actor: str, action: str, what: str, detail: Mapping[str, Any]) -> None:
        """Keep one entry (raises when the store cannot: nothing was kept)."""

    def latest(self, limit: int) -> list[dict[str, Any]]:
        """The latest ``limit`` entries, newest first."""


class MemoryAuditLog:
    """The audit of one process (the memory sink); pruned with its events."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[dict[str, Any]] = []

    def add(self, at: float, actor: str, action: str, what: str, detail: Mapping[str, Any]) -> None:
        with self._lock:
            self._entries.append(audit_entry(at, actor, action, what, detail))

    def latest(self, limit: int) -> list[dict[str, Any]]:
        with self._lock:
            newest = sorted(self._entries, key=lambda entry: entry["at"], reverse=True)
        return newest[:limit]

    def prune(self, before: float, limit: int) -> int:
        """Delete at most ``limit`` entries older than ``before``; how many."""
        with self._lock:
            old = [index for index, entry in enumerate(self._entries) if entry["at"] < before]
            gone = set(old[:limit])
            self._entries = [e for index, e in enumerate(self._entries) if index not in gone]
        return len(gone)

    def reset_after_fork(self) -> None:
        self._lock = threading.Lock()


class SQLAuditLog:
    """The audit in the app's SQLite file or PostgreSQL database.

    ``borrow`` gives a context manager holding a connection whose schema is
    migrated (the incident store's); ``dialect`` is ``"sqlite"`` or
    ``"postgresql"``.
    """

    def __init__(self, borrow: Callable[[], AbstractContextManager[Any]], dialect: str) -> None:
        self._borrow = borrow
        self._dialect = dialect
        self._mark = "?" if dialect == "sqlite" else "%s"

    def add(self, at: float, actor: str, action: str, what: str, detail: Mapping[str, Any]) -> None:
        with write_transaction(self._borrow, self._dialect) as connection:
            connection.execute(
                "INSERT INTO aegis_audit (at, actor, action, object, detail) "
                f"VALUES ({', '.join([self._mark] * 5)})",
                (at, actor, action, what, _DUMP(dict(detail))),
            )

    def latest(self, limit: int) -> list[dict[str, Any]]:
        with self._borrow() as connection:
            rows = connection.execute(
                "SELECT at, actor, action, object, detail FROM aegis_audit "
                f"ORDER BY at DESC, id DESC LIMIT {self._mark}",
                (limit,),
            ).fetchall()
        return [audit_entry(row[0], row[1], row[2], row[3], json.loads(row[4])) for row in rows]
