"""Leases in the app's shared store: one process of the app at a time does a job.

Every worker and host of an app shares its SQLite file or PostgreSQL
database; a job that should run once for the whole app (alert evaluation,
retention pruning) runs in the process that holds the job's lease. A lease
is a row of ``aegis_alert_lease`` (the table the alert evaluator's lease
came with, now the app's leases, one row per job ``name``): its holder, a
fencing token raised each time it changes hands, and when it expires. A
holder renews it each time it does the job; a process that dies stops
renewing, and the next one to ask after the expiry takes it over.

The caller runs these inside a write transaction (SQLite's ``BEGIN
IMMEDIATE``; PostgreSQL's rows are locked here by ``FOR UPDATE``), and
passes its driver's placeholder. Only parameterised SQL.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any


def holder_id() -> str:
    """A name for this process as a lease holder: its host, its pid and a
    random part (a pid is reused; a forked child asks for a name of its own)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def lease_row(connection: Any, name: str, *, mark: str, lock: bool) -> tuple[str, int, float]:
    """The holder, token and expiry of lease ``name`` (a free row first if
    there is none yet); ``lock`` takes PostgreSQL's row lock."""
    for _ in range(2):  # a row deleted between the insert and the select: once more
        connection.execute(
            "INSERT INTO aegis_alert_lease (name, holder, token, expires_at) "
            f"VALUES ({mark}, '', 0, 0) ON CONFLICT DO NOTHING",
            (name,),
        )
        row = connection.execute(
            "SELECT holder, token, expires_at FROM aegis_alert_lease "
            f"WHERE name = {mark}{' FOR UPDATE' if lock else ''}",
            (name,),
        ).fetchone()
        if row is not None:
            return str(row[0]), int(row[1]), float(row[2])
    raise RuntimeError(f"the lease {name!r} could not be read")


def claim(
    connection: Any, name: str, holder: str, now: float, ttl: float, *, mark: str, lock: bool
) -> int | None:
    """Lease ``name`` for ``holder`` until ``now + ttl`` (kept, or taken
    because it expired): its fencing token, or None while another holds it."""
    current, token, expires = lease_row(connection, name, mark=mark, lock=lock)
    if current != holder:
        if expires >= now:
            return None
        token += 1
    connection.execute(
        f"UPDATE aegis_alert_lease SET holder = {mark}, token = {mark}, expires_at = {mark} "
        f"WHERE name = {mark}",
        (holder, token, now + ttl, name),
    )
    return token


def release(connection: Any, name: str, holder: str, *, mark: str) -> None:
    """Give lease ``name`` up at once, when it is ``holder``'s."""
    connection.execute(
        "UPDATE aegis_alert_lease SET holder = '', expires_at = 0 "
        f"WHERE name = {mark} AND holder = {mark}",
        (name, holder),
    )


#: Leases named ``host:<host name>``: each host that shares the store keeps
#: one (any of its processes), so that every process can tell how many hosts
#: write to it (see :func:`hosts_seen`).
HOST_PREFIX = "host:"


def host_of(holder: str) -> str:
    """The host part of a holder name (``host:pid:random``)."""
    return holder.rsplit(":", 2)[0]


def hosts_seen(
    connection: Any, holder: str, now: float, ttl: float, *, mark: str, lock: bool
) -> list[tuple[str, float]]:
    """Say that ``holder``'s host uses the store until ``now + ttl`` (one of
    its processes holds its host's lease), and name every host whose lease
    has not expired, with its expiry (which moves on while it is renewed)."""
    # Hosts gone for good (renamed pods, say) leave no rows behind; a row
    # expired a while ago only, so that a process re-claiming it is not raced.
    connection.execute(
        f"DELETE FROM aegis_alert_lease WHERE name LIKE {mark} AND expires_at < {mark}",
        (HOST_PREFIX + "%", now - ttl),
    )
    claim(connection, HOST_PREFIX + host_of(holder), holder, now, ttl, mark=mark, lock=lock)
    rows = connection.execute(
        "SELECT name, expires_at FROM aegis_alert_lease"
        f" WHERE name LIKE {mark} AND expires_at >= {mark}",
        (HOST_PREFIX + "%", now),
    ).fetchall()
    return sorted((str(row[0])[len(HOST_PREFIX) :], float(row[1])) for row in rows)
