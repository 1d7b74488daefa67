"""Where incidents live: the app's SQLite file or PostgreSQL database, or memory.

At most one incident per correlation key is active (not resolved) at a time,
across every worker and host of the app: the store enforces it, by a unique
``active_key`` column that holds the key until the incident is resolved. An
opening under a key that has an active incident attaches to it instead (an
``attached`` update records what it asked for), so two workers opening the
same key at once make one incident. Every change is an update row (who,
when, what), in the same transaction as the change: the incident's audit
and the start of its timeline. Only parameterised SQL.

An opening may carry a request key (an ``Idempotency-Key`` and who sent it,
hashed) and a fingerprint of its fields (:meth:`open_once`): the key is
claimed in the opening's own transaction, so a retry, or the same request
sent twice at once, answers what the first opening did instead of opening a
second incident; the same key with other fields is refused. Keys are kept
:data:`KEY_KEEP_SECONDS`: an expired key is taken over by its next opening,
and the sinks' pruning deletes the others.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import Any, Protocol

from ..core.transactions import write_transaction
from .model import ACTIVE, RESOLVED, Incident, IncidentUpdate

COLUMNS = (
    "incident_id", "title", "description", "severity", "status", "assignee", "root_cause",
    "correlation_key", "created_at", "updated_at", "resolved_at", "created_by",
)  # fmt: skip
#: Rounds of "attach, else insert" an opening tries in its transaction.
OPEN_TRIES = 5
#: Seconds an opening's request key is kept: a retry within a day answers
#: what the first opening did; later, the key opens anew.
KEY_KEEP_SECONDS = 86_400.0
_DUMP = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class Conflict(Exception):
    """A change the store refuses: reopening an incident whose correlation key
    has another active incident."""


class KeyReused(Exception):
    """A request key seen before with other fields (another request)."""


class IncidentStore(Protocol):
    def open(self, incident: Incident) -> tuple[Incident, bool]:
        """Store ``incident``, or attach to the active one of its correlation
        key: that one and False."""

    def open_once(
        self, incident: Incident, key: str, fingerprint: str
    ) -> tuple[Incident, bool, bool]:
        """``open``, once per ``key`` within KEY_KEEP_SECONDS before
        ``incident.created_at``: the incident, whether it is new, and False;
        the key seen already with ``fingerprint``, the incident its first
        opening answered (as it is now), whether that one created it, and
        True; seen with another fingerprint, :class:`KeyReused`."""

    def change(
        self, incident_id: str, changes: Mapping[str, Any], note: str, actor: str, now: float
    ) -> Incident | None:
        """Apply ``changes`` (and add ``note``): the incident after, None when
        there is none of the id; :class:`Conflict` when reopening collides."""

    def get(self, incident_id: str) -> Incident | None: ...

    def updates(self, incident_id: str) -> list[IncidentUpdate]:
        """Every update of the incident, oldest first."""

    def find(
        self, statuses: tuple[str, ...], severities: tuple[str, ...], limit: int, offset: int
    ) -> list[Incident]:
        """Incidents of any of ``statuses`` and ``severities`` (empty: any),
        newest first."""

    def counts(self, since: float) -> tuple[int, int, int]:
        """How many incidents there are, how many are active, and how many
        were opened at or after ``since``."""

    def recent_updates(self, limit: int) -> list[IncidentUpdate]:
        """The latest updates of every incident, newest first (the audit)."""


def _changed(
    incident: Incident, changes: Mapping[str, Any], now: float
) -> tuple[Incident, dict[str, Any]]:
    """The incident after ``changes``, and each field's [old, new] that differs."""
    diffs = {
        name: [getattr(incident, name), value]
        for name, value in changes.items()
        if getattr(incident, name) != value
    }
    after = replace(incident, **{name: new for name, (_, new) in diffs.items()}, updated_at=now)
    if "status" in diffs:
        after = replace(after, resolved_at=now if after.status == RESOLVED else None)
    return after, diffs


def active_key(incident: Incident) -> str | None:
    return None if incident.status == RESOLVED else incident.correlation_key


def _attached(incident: Incident) -> dict[str, Any]:
    """What a second opening asked for, recorded on the active incident."""
    return {"title": incident.title, "severity": incident.severity, "actor": incident.created_by}


class MemoryIncidentStore:
    """Incidents of one process (the memory sink)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._incidents: dict[str, Incident] = {}
        self._updates: dict[str, list[IncidentUpdate]] = {}
        #: request key -> its fingerprint, incident id, whether it created
        #: it, and when (see open_once).
        self._requests: dict[str, tuple[str, str, bool, float]] = {}

    def _add(self, incident_id: str, at: float, actor: str, kind: str, **detail: Any) -> None:
        updates = self._updates.setdefault(incident_id, [])
        updates.append(IncidentUpdate(incident_id, len(updates) + 1, at, actor, kind, **detail))

    def _active(self, key: str | None) -> Incident | None:
        if key is None:
            return None
        return next((i for i in self._incidents.values() if active_key(i) == key), None)

    def open(self, incident: Incident) -> tuple[Incident, bool]:
        with self._lock:
            return self._open(incident)

    def open_once(
        self, incident: Incident, key: str, fingerprint: str
    ) -> tuple[Incident, bool, bool]:
        with self._lock:
            expired = incident.created_at - KEY_KEEP_SECONDS
            for old in [old for old, seen in self._requests.items() if seen[3] < expired]:
                del self._requests[old]
            seen = self._requests.get(key)
            if seen is not None:
                if seen[0] != fingerprint:
                    raise KeyReused(key)
                return self._incidents[seen[1]], seen[2], True
            opened, created = self._open(incident)
            self._requests[key] = (fingerprint, opened.incident_id, created, incident.created_at)
            return opened, created, False

    def _open(self, incident: Incident) -> tuple[Incident, bool]:
        found = self._active(incident.correlation_key)
        if found is not None:
            found = replace(found, updated_at=incident.created_at)
            self._incidents[found.incident_id] = found
            self._add(found.incident_id, incident.created_at, incident.created_by, "attached",
                      changes=_attached(incident))  # fmt: skip
            return found, False
        if incident.incident_id in self._incidents:
            raise Conflict(f"incident id {incident.incident_id} is taken")
        self._incidents[incident.incident_id] = incident
        self._add(incident.incident_id, incident.created_at, incident.created_by, "created")
        return incident, True

    def change(
        self, incident_id: str, changes: Mapping[str, Any], note: str, actor: str, now: float
    ) -> Incident | None:
        with self._lock:
            incident = self._incidents.get(incident_id)
            if incident is None:
                return None
            after, diffs = _changed(incident, changes, now)
            if not diffs and not note.strip():
                return incident  # nothing changes: nothing recorded
            key = active_key(after)
            if key is not None and active_key(incident) is None:
                other = self._active(key)
                if other is not None:
                    raise Conflict(f"incident {other.incident_id} is active under its key")
            self._incidents[incident_id] = after
            self._add(incident_id, now, actor, "changed" if diffs else "note",
                      changes=diffs, note=note)  # fmt: skip
            return after

    def get(self, incident_id: str) -> Incident | None:
        with self._lock:
            return self._incidents.get(incident_id)

    def updates(self, incident_id: str) -> list[IncidentUpdate]:
        with self._lock:
            return list(self._updates.get(incident_id, ()))

    def find(
        self, statuses: tuple[str, ...], severities: tuple[str, ...], limit: int, offset: int
    ) -> list[Incident]:
        with self._lock:
            found = [
                i for i in self._incidents.values()
                if (not statuses or i.status in statuses)
                and (not severities or i.severity in severities)
            ]  # fmt: skip
        found.sort(key=lambda i: (i.created_at, i.incident_id), reverse=True)
        return found[offset : offset + limit]

    def counts(self, since: float) -> tuple[int, int, int]:
        with self._lock:
            return _counts(list(self._incidents.values()), since)

    def recent_updates(self, limit: int) -> list[IncidentUpdate]:
        with self._lock:
            every = [update for updates in self._updates.values() for update in updates]
        every.sort(key=lambda u: (u.at, u.incident_id, u.seq), reverse=True)
        return every[:limit]

    def reset_after_fork(self) -> None:
        """In a forked child: a lock of its own (the parent's may be held)."""
        self._lock = threading.Lock()


def _counts(incidents: list[Incident], since: float) -> tuple[int, int, int]:
    active = sum(1 for i in incidents if i.status != RESOLVED)
    return len(incidents), active, sum(1 for i in incidents if i.created_at >= since)


class SQLIncidentStore:
    """Incidents in the app's SQLite file or PostgreSQL database.

    ``borrow`` gives a context manager holding a connection whose schema is
    migrated (the sinks' own, as for the alert store); ``dialect`` is
    ``"sqlite"`` or ``"postgresql"``; ``refused`` tells a unique-key
    violation (the driver's own error) from other failures.
    """

    def __init__(
        self,
        borrow: Callable[[], AbstractContextManager[Any]],
        dialect: str,
        refused: tuple[type[BaseException], ...],
    ) -> None:
        self._borrow = borrow
        self.dialect = dialect
        self._refused = refused
        mark = "?" if dialect == "sqlite" else "%s"
        self._mark = mark
        self._lock = "" if dialect == "sqlite" else " FOR UPDATE"
        self._select = f"SELECT {', '.join(COLUMNS)} FROM aegis_incidents"
        self._insert = (
            f"INSERT INTO aegis_incidents ({', '.join(COLUMNS)}, active_key) "
            f"VALUES ({', '.join([mark] * (len(COLUMNS) + 1))}) "
            "ON CONFLICT (active_key) DO NOTHING"
        )

    def _transaction(self) -> AbstractContextManager[Any]:
        return write_transaction(self._borrow, self.dialect)

    def _sql(self, text: str) -> str:
        return text.replace("?", self._mark)

    def _add(
        self, connection: Any, incident_id: str, at: float, actor: str, kind: str,
        changes: Mapping[str, Any] | None = None, note: str = "",
    ) -> None:  # fmt: skip
        connection.execute(
            self._sql(
                "INSERT INTO aegis_incident_updates "
                "(incident_id, seq, at, actor, kind, changes, note) "
                "SELECT ?, coalesce(max(seq), 0) + 1, ?, ?, ?, ?, ? "
                "FROM aegis_incident_updates WHERE incident_id = ?"
            ),
            (incident_id, at, actor, kind, _DUMP(dict(changes or {})), note, incident_id),
        )

    def _active(self, connection: Any, key: str) -> Incident | None:
        row = connection.execute(
            self._sql(f"{self._select} WHERE active_key = ?{self._lock}"), (key,)
        ).fetchone()
        return None if row is None else Incident(*row)

    def open(self, incident: Incident) -> tuple[Incident, bool]:
        try:
            with self._transaction() as connection:
                return self._open(connection, incident)
        except self._refused as exc:  # its primary key: an id taken (48 random bits)
            raise Conflict(f"incident id {incident.incident_id} is taken") from exc

    def open_once(
        self, incident: Incident, key: str, fingerprint: str
    ) -> tuple[Incident, bool, bool]:
        at = incident.created_at
        try:
            with self._transaction() as connection:
                # This key only, if it expired (the others: the sinks' pruning,
                # so that openings at once do not lock the same rows).
                connection.execute(
                    self._sql(
                        "DELETE FROM aegis_incident_requests WHERE request_key = ? AND at < ?"
                    ),
                    (key, at - KEY_KEEP_SECONDS),
                )
                # Claimed first: the same key sent at once waits here for
                # this transaction (PostgreSQL: the row's lock; SQLite: the
                # file's), then finds it and answers as it did.
                claimed = connection.execute(
                    self._sql(
                        "INSERT INTO aegis_incident_requests "
                        "(request_key, fingerprint, incident_id, created, at) "
                        "VALUES (?, ?, '', ?, ?) ON CONFLICT (request_key) DO NOTHING"
                    ),
                    (key, fingerprint, False, at),
                ).rowcount
                if not claimed:
                    return self._replay(connection, key, fingerprint)
                opened, created = self._open(connection, incident)
                connection.execute(
                    self._sql(
                        "UPDATE aegis_incident_requests SET incident_id = ?, created = ? "
                        "WHERE request_key = ?"
                    ),
                    (opened.incident_id, created, key),
                )
                return opened, created, False
        except self._refused as exc:
            raise Conflict(f"incident id {incident.incident_id} is taken") from exc

    def _replay(self, connection: Any, key: str, fingerprint: str) -> tuple[Incident, bool, bool]:
        row = connection.execute(
            self._sql(
                "SELECT fingerprint, incident_id, created FROM aegis_incident_requests "
                "WHERE request_key = ?"
            ),
            (key,),
        ).fetchone()
        if row is None:  # PostgreSQL: its claim expired and was deleted meanwhile
            raise Conflict("the Idempotency-Key changed hands; try again")
        if row[0] != fingerprint:
            raise KeyReused(key)
        found = self._by_id(connection, row[1])
        if found is None:  # deleted by hand since
            raise Conflict("the incident this Idempotency-Key opened is gone")
        return found, bool(row[2]), True

    def _by_id(self, connection: Any, incident_id: str, lock: str = "") -> Incident | None:
        """The incident of ``incident_id`` (``lock``: the row locked for the
        transaction, PostgreSQL's ``FOR UPDATE``)."""
        row = connection.execute(
            self._sql(f"{self._select} WHERE incident_id = ?{lock}"), (incident_id,)
        ).fetchone()
        return None if row is None else Incident(*row)

    def _open(self, connection: Any, incident: Incident) -> tuple[Incident, bool]:
        key = incident.correlation_key
        values = (*(getattr(incident, name) for name in COLUMNS), active_key(incident))
        for _ in range(OPEN_TRIES):
            if key is not None:
                found = self._active(connection, key)
                if found is not None:
                    return self._attach(connection, found, incident), False
            if connection.execute(self._insert, values).rowcount == 1:
                self._add(connection, incident.incident_id, incident.created_at,
                          incident.created_by, "created")  # fmt: skip
                return incident, True
            # PostgreSQL: another process held the key (its insert committed
            # while ours waited, or it was being resolved and its row no
            # longer matched): each statement sees anew.
        raise Conflict(f"the key {key!r} kept changing hands; try again")

    def _attach(self, connection: Any, found: Incident, incident: Incident) -> Incident:
        connection.execute(
            self._sql("UPDATE aegis_incidents SET updated_at = ? WHERE incident_id = ?"),
            (incident.created_at, found.incident_id),
        )
        self._add(connection, found.incident_id, incident.created_at, incident.created_by,
                  "attached", _attached(incident))  # fmt: skip
        return replace(found, updated_at=incident.created_at)

    def change(
        self, incident_id: str, changes: Mapping[str, Any], note: str, actor: str, now: float
    ) -> Incident | None:
        try:
            with self._transaction() as connection:
                before = self._by_id(connection, incident_id, self._lock)
                if before is None:
                    return None
                after, diffs = _changed(before, changes, now)
                if not diffs and not note.strip():
                    return before  # nothing changes: nothing recorded
                connection.execute(
                    self._sql(
                        "UPDATE aegis_incidents SET title = ?, description = ?, severity = ?, "
                        "status = ?, assignee = ?, root_cause = ?, updated_at = ?, "
                        "resolved_at = ?, active_key = ? WHERE incident_id = ?"
                    ),
                    (after.title, after.description, after.severity, after.status, after.assignee,
                     after.root_cause, now, after.resolved_at, active_key(after), incident_id),
                )  # fmt: skip
                self._add(connection, incident_id, now, actor, "changed" if diffs else "note",
                          diffs, note)  # fmt: skip
                return after
        except self._refused as exc:
            raise Conflict(
                "another incident of its correlation key is active: resolve it first"
            ) from exc

    def get(self, incident_id: str) -> Incident | None:
        with self._borrow() as connection:
            return self._by_id(connection, incident_id)

    def updates(self, incident_id: str) -> list[IncidentUpdate]:
        return self._updates_where("WHERE incident_id = ? ORDER BY seq", (incident_id,))

    def recent_updates(self, limit: int) -> list[IncidentUpdate]:
        return self._updates_where("ORDER BY at DESC, incident_id DESC, seq DESC LIMIT ?", (limit,))

    def _updates_where(self, tail: str, params: tuple[object, ...]) -> list[IncidentUpdate]:
        with self._borrow() as connection:
            rows = connection.execute(
                self._sql(
                    "SELECT incident_id, seq, at, actor, kind, changes, note "
                    f"FROM aegis_incident_updates {tail}"
                ),
                params,
            ).fetchall()
        return [
            IncidentUpdate(row[0], row[1], row[2], row[3], row[4], json.loads(row[5]), row[6])
            for row in rows
        ]

    def find(
        self, statuses: tuple[str, ...], severities: tuple[str, ...], limit: int, offset: int
    ) -> list[Incident]:
        clauses: list[str] = []
        params: list[object] = []
        for column, values in (("status", statuses), ("severity", severities)):
            if values:
                clauses.append(f"{column} IN ({', '.join(['?'] * len(values))})")
                params.extend(values)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._borrow() as connection:
            rows = connection.execute(
                self._sql(
                    f"{self._select}{where} ORDER BY created_at DESC, incident_id DESC "
                    "LIMIT ? OFFSET ?"
                ),
                (*params, limit, offset),
            ).fetchall()
        return [Incident(*row) for row in rows]

    def counts(self, since: float) -> tuple[int, int, int]:
        with self._borrow() as connection:
            row = connection.execute(
                self._sql(
                    "SELECT count(*), "
                    "coalesce(sum(CASE WHEN status <> 'resolved' THEN 1 ELSE 0 END), 0), "
                    "coalesce(sum(CASE WHEN created_at >= ? THEN 1 ELSE 0 END), 0) "
                    "FROM aegis_incidents"
                ),
                (since,),
            ).fetchone()
        return int(row[0]), int(row[1]), int(row[2])


__all__ = [
    "ACTIVE", "KEY_KEEP_SECONDS", "Conflict", "IncidentStore", "KeyReused", "MemoryIncidentStore",
    "SQLIncidentStore",
]  # fmt: skip
