"""Where alert state lives: the evaluator's lease, instances, transitions.

Every worker and host of an app runs an alert service; exactly one of them
evaluates at a time, the holder of a lease in the shared store. The lease
carries a fencing token, raised each time it changes hands, and every write
of an evaluation checks it in the same transaction as the write: an
evaluator that stalled past its lease (a long pause, a partition) and comes
back finds the token moved on and writes nothing, so two evaluators never
both record a transition.

The instances the holder keeps are stored when they change (not when only
the time they were last seen did), so the next holder resumes pending
timers and firing episodes where they were. Transitions are appended, one
row each, as the history.

Stores: :class:`MemoryAlertStore` (one process: the memory sink), and
:class:`SQLAlertStore` over the SQLite file or the PostgreSQL database of
the app's sink (the tables are created by the sinks' schema migrations).
Only parameterised SQL.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import operator
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import fields
from typing import Any, NamedTuple, Protocol

from ..core import leases
from ..core.transactions import write_transaction
from .api_channels import public_settings
from .evaluator import FIRING, INACTIVE, PENDING, Instance, Key, Transition
from .grouping import ALONE, Grouping
from .outbox import ChannelState, Claimed, Notice
from .silences import Silence, silence_from_mapping

logger = logging.getLogger("aegis_mw.alerts")

LEASE = "evaluator"
#: Seconds a process's report is kept after its last one (see .reports).
REPORTS_KEPT = 3600.0
#: What the API writes besides silences: rules and channels, each kind in
#: a table of its own with a revision of its own.
RULE, CHANNEL = "rule", "channel"
_TABLES = {RULE: "aegis_alert_rules", CHANNEL: "aegis_alert_channel_configs"}
#: The revisions of the API's rules and channels: the newest of their rows
#: (tombstones too), in one query read every tick.
_REVISIONS = (
    "SELECT (SELECT coalesce(max(revision), 0) FROM aegis_alert_rules), "
    "(SELECT coalesce(max(revision), 0) FROM aegis_alert_channel_configs)"
)
#: Fields whose change alone does not make an instance worth writing (when
#: its group last had data matters only once it stops, and then it is left
#: as it was last written).
_VOLATILE = frozenset({"seen_at", "value", "data_at"})
_NAMES = tuple(f.name for f in fields(Instance))
_INSTANCE_FIELDS = frozenset(_NAMES)


class Revisions(NamedTuple):
    """Where the API's rules and channels are: a write moves its kind's."""

    rules: int
    channels: int


@dataclasses.dataclass(frozen=True)
class StoredItem:
    """A rule or channel written through the API, as it was written (checked
    when read)."""

    name: str
    #: A channel's may hold secrets given as they are.
    data: Mapping[str, Any] = dataclasses.field(repr=False)
    updated_at: float = 0.0
    updated_by: str = ""


class TooMany(Exception):
    """Creating one more rule, channel or silence would pass the limit kept in the store."""


class AlertStore(Protocol):
    """The store of one app's alert state, shared by its processes."""

    def claim(self, holder: str, now: float, ttl: float) -> int | None:
        """The fencing token when ``holder`` holds the lease (kept, or taken
        because it expired), else None."""

    def release(self, holder: str) -> None:
        """Give the lease up at once (a clean shutdown), when it is ``holder``'s."""

    def load(self) -> dict[Key, Instance]:
        """Every stored instance."""

    def commit(
        self,
        holder: str,
        token: int,
        changed: list[Instance],
        removed: list[Key],
        transitions: list[Transition],
        renew_until: float,
        notices: Sequence[Notice] = (),
        groupings: Mapping[str, Grouping] | None = None,
    ) -> bool:
        """Store an evaluation's changes and its notices' outbox rows in one
        transaction, if ``holder`` still holds the lease with ``token``, and
        renew the lease until ``renew_until``; False (nothing written) if not.
        Each row is due as its channel's grouping says (``groupings``, by
        channel; a channel not there sends each notice alone, at once)."""

    def claim_notices(
        self, claimer: str, now: float, hold: float, limit: int, channels: Sequence[str]
    ) -> list[Claimed]:
        """At most ``limit`` due rows of ``channels`` nobody holds, held by
        ``claimer`` for ``hold`` seconds: the oldest pending one of each
        channel's alert only."""

    def renew_claim(self, row: int, claim: str, until: float, now: float) -> bool:
        """Hold a claimed row until ``until``; False if the claim was lost
        (it ran out and another sender took the row)."""

    def finish_notice(
        self, row: int, claim: str, state: str, next_at: float, error: str, now: float,
        *, outcome: str = "", seconds: float = 0.0, send_id: str = "",
    ) -> None:  # fmt: skip
        """A claimed row's outcome, written by the token it was claimed with:
        ``delivered``, ``failed``, or ``pending`` again (tried at ``next_at``);
        and the attempt, with its ``outcome`` (the state, or ``retry`` for a
        pending row; ``disabled`` when it disabled the channel) and how many
        ``seconds`` it took, in the notification ``send_id``."""

    def notices(self, limit: int) -> list[dict[str, Any]]:
        """The latest outbox rows, newest first, without their payloads."""

    def episode_notices(self, episodes: Sequence[str]) -> list[tuple[str, str, float, int, int]]:
        """Per (channel, episode) of these: the last notice's time, how many
        are pending, how many were delivered; skipped rows left out (a
        firing held back when due is as if never written: it is written
        again once the policy lets it through)."""

    def attempts(self, notices: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
        """The delivery attempts of these outbox rows, oldest first."""

    def sends_since(self, channel: str, since: float) -> tuple[int, float | None]:
        """How many notifications were sent to ``channel`` after ``since``,
        and when the first of them was (None: none was)."""

    def notice_counts(self) -> dict[tuple[str, str], tuple[int, float | None]]:
        """Outbox rows by (channel, state): how many, and the oldest's time."""

    def channel_states(self) -> dict[str, ChannelState]:
        """The disabled channels, by name."""

    def disable_channel(self, state: ChannelState) -> None:
        """Mark a channel disabled (or move its next probe)."""

    def enable_channel(self, channel: str) -> bool:
        """Mark a channel working again; False if it was not disabled."""

    def silences(self, since: float) -> list[Silence]:
        """The silences that end at ``since`` or later."""

    def put_silence(
        self, silence: Silence, actor: str, now: float, *, update: bool = False,
        limit: int | None = None,
    ) -> bool:  # fmt: skip
        """Write a silence (created, or updated by its id). With ``update``,
        only over one of that id not yet ended at ``now`` (else False, nothing
        written); creating one past ``limit`` silences not yet ended raises
        :class:`TooMany`."""

    def expire_silence(self, silence_id: str, actor: str, now: float) -> bool:
        """End a silence now (one not started yet is dropped); audited.
        False when there is no such silence still to end."""

    def revisions(self) -> Revisions:
        """Numbers that change with every write to the rules, and to the
        channels, kept here (those written through the API): read every
        tick, cheaply."""

    def api_items(self, kind: str) -> tuple[int, list[StoredItem]]:
        """The revision of ``kind`` (RULE or CHANNEL) and its items kept
        here, by name."""

    def put_item(
        self, kind: str, name: str, data: Mapping[str, Any], actor: str, now: float, limit: int
    ) -> str:
        """Write a rule or a channel (its settings, by name): "create" or
        "update"; :class:`TooMany` when creating one would pass ``limit``.
        The audit keeps a channel's settings without their secrets. A new
        channel does not take the pending notices of an earlier one of its
        name (written by a process that had not yet read its deletion)."""

    def delete_item(
        self, kind: str, name: str, actor: str, now: float, *, notices: bool = True
    ) -> bool:
        """Remove a rule or a channel; False when there is none of that name.
        A channel's pending notices are skipped with it and its disabled
        state cleared, unless ``notices`` is False (a channel of the
        settings has its name: they are that one's)."""

    def add_audit(
        self, actor: str, action: str, what: str, detail: Mapping[str, Any], now: float
    ) -> None:
        """Record an action that changes no stored object (a test notice)."""

    def skip_channel(self, channel: str, before: float, now: float, reason: str) -> int:
        """Give up the pending notices of ``channel`` made before ``before``
        (state ``skipped``, with ``reason``); how many."""

    def put_report(
        self, process: str, now: float, report: Mapping[str, Any], keep: float = REPORTS_KEPT
    ) -> None:
        """This process's report of its health (see .reports), replacing its
        last; reports older than ``keep`` seconds (processes gone) are deleted."""

    def remove_report(self, process: str) -> None:
        """A stopping process's report, removed: it no longer counts."""

    def reports(self, since: float) -> list[tuple[str, Mapping[str, Any]]]:
        """The reports written at or after ``since``, by process."""

    def audit(self, limit: int, kind: str = "") -> list[dict[str, Any]]:
        """The latest changes to silences, rules and the like, newest first;
        with ``kind`` (``silence``, ``rule``, ``channel``), those of that kind
        of object only."""

    def instances(self) -> list[Instance]:
        """The stored instances that are not inactive."""

    def history(self, limit: int, before: int | None = None) -> list[dict[str, Any]]:
        """The latest transitions, newest first; ``before`` an ``id`` to page back."""

    def prune_history(self, before: float, limit: int) -> int:
        """Delete at most ``limit`` transitions older than ``before``, and as
        many finished outbox rows; how many rows in all."""


def changes_between(
    old: Mapping[Key, Instance], new: Mapping[Key, Instance]
) -> tuple[list[Instance], list[Key]]:
    """What an evaluation changed worth storing: instances new or changed in
    more than when they were seen (their value too while pending or firing,
    which a reader shows), and the keys of those gone."""
    changed = []
    for key, instance in new.items():
        before = old.get(key)
        if before is None or _worth_writing(before, instance):
            changed.append(instance)
    removed = [key for key in old if key not in new]
    return changed, removed


_KEPT = operator.attrgetter(*sorted(_INSTANCE_FIELDS - _VOLATILE))
_ALL = operator.attrgetter(*(f.name for f in fields(Instance)))


def _worth_writing(before: Instance, after: Instance) -> bool:
    if after.state in (PENDING, FIRING) and before.value != after.value:
        return True
    return bool(_KEPT(before) != _KEPT(after))


def group_key(group: tuple[tuple[str, str], ...]) -> str:
    return json.dumps([list(pair) for pair in group], separators=(",", ":"))


def instance_text(instance: Instance) -> str:
    data = dict(zip(_NAMES, _ALL(instance), strict=True))
    return json.dumps(data, separators=(",", ":"), allow_nan=False)


def instance_from_text(text: str) -> Instance:
    data = json.loads(text)
    data = {key: value for key, value in data.items() if key in _INSTANCE_FIELDS}
    data["group"] = tuple(tuple(pair) for pair in data.get("group", ()))
    data["changes"] = tuple(data.get("changes", ()))
    return Instance(**data)


def transition_row(transition: Transition) -> dict[str, Any]:
    """A transition as the API shows it (and as the stores keep it)."""
    return {
        "at": transition.at,
        "rule": transition.rule,
        "group": dict(transition.group),
        "kind": transition.kind,
        "from_state": transition.from_state,
        "to_state": transition.to_state,
        "value": transition.value,
        "severity": transition.severity,
        "episode": transition.episode,
        "notify": transition.notify,
        "labels": dict(transition.labels),
        "annotations": dict(transition.annotations),
    }


class MemoryAlertStore:
    """Alert state in the process: for the memory sink, whose figures are
    this process's only."""

    def __init__(self, history_limit: int = 10_000) -> None:
        self._lock = threading.Lock()
        self._lease: tuple[str, int, float] = ("", 0, 0.0)
        self._instances: dict[Key, Instance] = {}
        self._history: list[dict[str, Any]] = []
        self._outbox: list[dict[str, Any]] = []
        self._attempts: list[dict[str, Any]] = []
        self._channels: dict[str, ChannelState] = {}
        self._silences: dict[str, Silence] = {}
        self._audit: list[dict[str, Any]] = []
        self._items: dict[str, dict[str, StoredItem]] = {kind: {} for kind in _TABLES}
        self._revisions = dict.fromkeys(_TABLES, 0)
        self._reports: dict[str, tuple[float, Mapping[str, Any]]] = {}
        self._next_id = 1
        self._history_limit = history_limit

    def claim(self, holder: str, now: float, ttl: float) -> int | None:
        with self._lock:
            current, token, expires = self._lease
            if current != holder:
                if expires >= now:
                    return None
                token += 1
            self._lease = (holder, token, now + ttl)
            return token

    def release(self, holder: str) -> None:
        with self._lock:
            current, token, _ = self._lease
            if current == holder:
                self._lease = ("", token, 0.0)

    def load(self) -> dict[Key, Instance]:
        with self._lock:
            return dict(self._instances)

    def commit(
        self,
        holder: str,
        token: int,
        changed: list[Instance],
        removed: list[Key],
        transitions: list[Transition],
        renew_until: float,
        notices: Sequence[Notice] = (),
        groupings: Mapping[str, Grouping] | None = None,
    ) -> bool:
        with self._lock:
            if self._lease[:2] != (holder, token):
                return False
            self._lease = (holder, token, renew_until)
            for notice in notices:
                targets = (
                    [notice.channel]
                    if notice.channel is not None
                    else sorted(
                        {r["channel"] for r in self._outbox if r["episode"] == notice.episode}
                    )
                )
                for channel in targets:
                    if any(
                        r["channel"] == channel and r["notice_key"] == notice.key
                        for r in self._outbox
                    ):
                        continue
                    grouping = (groupings or {}).get(channel, ALONE)
                    group = grouping.key(notice.labels)
                    rows = [
                        r
                        for r in self._outbox
                        if (r["channel"], r["group_key"]) == (channel, group)
                    ]
                    pending = [r["next_at"] for r in rows if r["state"] == "pending"]
                    sent = [r["done_at"] for r in rows if r["state"] == "delivered"]
                    self._outbox.append({
                        "id": len(self._outbox) + 1, "created_at": notice.at, "channel": channel,
                        "notice_key": notice.key, "alert_key": notice.alert_key,
                        "episode": notice.episode, "group_key": group,
                        "payload": notice.payload, "state": "pending", "attempts": 0,
                        "next_at": due_at(grouping, group, notice.at, pending, sent),
                        "claimed_by": "", "claimed_until": 0.0, "last_error": "", "done_at": None,
                    })  # fmt: skip
            for instance in changed:
                self._instances[(instance.rule, instance.group)] = instance
            for key in removed:
                self._instances.pop(key, None)
            for transition in transitions:
                self._history.append({"id": self._next_id, **transition_row(transition)})
                self._next_id += 1
            del self._history[: -self._history_limit]
            return True

    def instances(self) -> list[Instance]:
        with self._lock:
            return [i for i in self._instances.values() if i.state != INACTIVE]

    def history(self, limit: int, before: int | None = None) -> list[dict[str, Any]]:
        with self._lock:
            rows = [r for r in self._history if before is None or r["id"] < before]
        return rows[::-1][:limit]

    def prune_history(self, before: float, limit: int) -> int:
        with self._lock:
            # The oldest by time, as the SQL stores delete them.
            old = sorted((r for r in self._history if r["at"] < before), key=lambda r: r["at"])
            gone = {row["id"] for row in old[:limit]}
            self._history = [row for row in self._history if row["id"] not in gone]
            closed = {
                (r["channel"], r["episode"]) for r in self._outbox
                if ".resolved." in r["notice_key"] and r["state"] != "pending"
            }  # fmt: skip
            done = [
                r for r in self._outbox
                if r["done_at"] is not None and r["done_at"] < before
                and (r["channel"], r["episode"]) in closed
            ]  # fmt: skip
            finished = {row["id"] for row in done[:limit]}
            self._outbox = [row for row in self._outbox if row["id"] not in finished]
            kept = [a for a in self._attempts if a["at"] >= before]
            tried = len(self._attempts) - len(kept)
            self._attempts = kept
            ended = [key for key, silence in self._silences.items() if silence.ends_at < before]
            for key in ended:
                del self._silences[key]
            audited = len(self._audit)
            self._audit = [row for row in self._audit if row["at"] >= before]
            return len(gone) + len(finished) + tried + len(ended) + audited - len(self._audit)

    def claim_notices(
        self, claimer: str, now: float, hold: float, limit: int, channels: Sequence[str]
    ) -> list[Claimed]:
        with self._lock:
            pending = [
                r for r in self._outbox if r["state"] == "pending" and r["channel"] in channels
            ]
            first: dict[tuple[str, str], int] = {}
            for row in pending:
                first.setdefault((row["channel"], row["alert_key"]), row["id"])
            # Groups with a row due: their other rows go in the same notification.
            due_groups = {
                (r["channel"], r["group_key"]) for r in pending
                if r["group_key"] and r["next_at"] <= now and r["claimed_until"] < now
            }  # fmt: skip
            claim = f"{claimer}:{uuid.uuid4().hex}"
            out: list[Claimed] = []
            for row in pending:
                if len(out) >= limit:
                    break
                if (
                    (row["next_at"] <= now or (row["channel"], row["group_key"]) in due_groups)
                    and row["claimed_until"] < now
                    and first[(row["channel"], row["alert_key"])] == row["id"]
                ):
                    row["claimed_by"], row["claimed_until"] = claim, now + hold
                    announced = any(
                        r["channel"] == row["channel"] and r["episode"] == row["episode"]
                        and r["state"] == "delivered" and r["id"] < row["id"]
                        for r in self._outbox
                    )  # fmt: skip
                    out.append(_claimed(row)._replace(announced=announced))
            return out

    def renew_claim(self, row: int, claim: str, until: float, now: float) -> bool:
        with self._lock:
            for item in self._outbox:
                if (
                    item["id"] == row
                    and item["claimed_by"] == claim
                    and item["claimed_until"] > now
                ):
                    item["claimed_until"] = until
                    return True
            return False

    def finish_notice(
        self, row: int, claim: str, state: str, next_at: float, error: str, now: float,
        *, outcome: str = "", seconds: float = 0.0, send_id: str = "",
    ) -> None:  # fmt: skip
        with self._lock:
            for item in self._outbox:
                if item["id"] == row and item["claimed_by"] == claim:
                    self._attempts.append({
                        "notice_id": row, "channel": item["channel"], "at": now,
                        "outcome": outcome or _outcome(state), "error": error,
                        "seconds": seconds, "sender": _sender(claim), "send_id": send_id,
                    })  # fmt: skip
                    item.update(
                        state=state, next_at=next_at, last_error=error, claimed_by="",
                        claimed_until=0.0, attempts=item["attempts"] + 1,
                        done_at=now if state != "pending" else None,
                    )  # fmt: skip

    def notices(self, limit: int) -> list[dict[str, Any]]:
        with self._lock:
            rows = [_notice_view(r) for r in self._outbox]
        return rows[::-1][:limit]

    def episode_notices(self, episodes: Sequence[str]) -> list[tuple[str, str, float, int, int]]:
        wanted = set(episodes)
        out: dict[tuple[str, str], list[Any]] = {}
        with self._lock:
            for row in self._outbox:
                if row["episode"] in wanted and row["state"] != "skipped":
                    item = out.setdefault((row["channel"], row["episode"]), [0.0, 0, 0])
                    item[0] = max(item[0], row["created_at"])
                    item[1] += row["state"] == "pending"
                    item[2] += row["state"] == "delivered"
        return [(c, e, float(v[0]), int(v[1]), int(v[2])) for (c, e), v in out.items()]

    def sends_since(self, channel: str, since: float) -> tuple[int, float | None]:
        with self._lock:
            sent = [
                a for a in self._attempts
                if a["channel"] == channel and a["at"] > since and a["outcome"] != "skipped"
            ]  # fmt: skip
        return len({a["send_id"] for a in sent}), min((a["at"] for a in sent), default=None)

    def attempts(self, notices: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
        wanted = set(notices)
        out: dict[int, list[dict[str, Any]]] = {}
        with self._lock:
            for attempt in self._attempts:
                if attempt["notice_id"] in wanted:
                    out.setdefault(attempt["notice_id"], []).append(_attempt_view(attempt))
        return out

    def notice_counts(self) -> dict[tuple[str, str], tuple[int, float | None]]:
        out: dict[tuple[str, str], tuple[int, float | None]] = {}
        with self._lock:
            for row in self._outbox:
                key = (row["channel"], row["state"])
                count, oldest = out.get(key, (0, None))
                at = row["created_at"]
                out[key] = (count + 1, at if oldest is None else min(oldest, at))
        return out

    def channel_states(self) -> dict[str, ChannelState]:
        with self._lock:
            return dict(self._channels)

    def disable_channel(self, state: ChannelState) -> None:
        with self._lock:
            self._channels[state.channel] = state

    def enable_channel(self, channel: str) -> bool:
        with self._lock:
            return self._channels.pop(channel, None) is not None

    def silences(self, since: float) -> list[Silence]:
        with self._lock:
            return [s for s in self._silences.values() if s.ends_at >= since]

    def put_silence(
        self, silence: Silence, actor: str, now: float, *, update: bool = False,
        limit: int | None = None,
    ) -> bool:  # fmt: skip
        with self._lock:
            known = self._silences.get(silence.id)
            if update and (known is None or known.ends_at <= now):
                return False
            live = sum(1 for s in self._silences.values() if s.ends_at > now)
            if known is None and limit is not None and live >= limit:
                raise TooMany(limit)
            self._silences[silence.id] = silence
            action = "update" if known is not None else "create"
            self._audit.append(_audit_row(now, actor, action, silence))
            return True

    def expire_silence(self, silence_id: str, actor: str, now: float) -> bool:
        with self._lock:
            silence = self._silences.get(silence_id)
            if silence is None or silence.ends_at <= now:
                return False
            ended = _ended(silence, now)
            if ended is None:
                del self._silences[silence_id]
            else:
                self._silences[silence_id] = ended
            self._audit.append(_audit_row(now, actor, "expire", silence))
            return True

    def revisions(self) -> Revisions:
        return Revisions(self._revisions[RULE], self._revisions[CHANNEL])

    def api_items(self, kind: str) -> tuple[int, list[StoredItem]]:
        with self._lock:
            items = sorted(self._items[kind].values(), key=lambda item: item.name)
            return self._revisions[kind], items

    def put_item(
        self, kind: str, name: str, data: Mapping[str, Any], actor: str, now: float, limit: int
    ) -> str:
        items = self._items[kind]
        with self._lock:
            action = "update" if name in items else "create"
            if action == "create" and len(items) >= limit:
                raise TooMany(limit)
            items[name] = StoredItem(name, dict(data), now, actor)
            self._revisions[kind] += 1
            self._audit.append(audit_row(now, actor, action, f"{kind} {name}", _shown(kind, data)))
        if kind == CHANNEL and action == "create":
            self.skip_channel(name, now, now, _EARLIER)
        return action

    def delete_item(
        self, kind: str, name: str, actor: str, now: float, *, notices: bool = True
    ) -> bool:
        with self._lock:
            gone = self._items[kind].pop(name, None)
            if gone is None:
                return False
            self._revisions[kind] += 1
            detail = _shown(kind, gone.data)
            self._audit.append(audit_row(now, actor, "delete", f"{kind} {name}", detail))
        if kind == CHANNEL and notices:
            self.skip_channel(name, float("inf"), now, _DELETED)
            self.enable_channel(name)
        return True

    def add_audit(
        self, actor: str, action: str, what: str, detail: Mapping[str, Any], now: float
    ) -> None:
        with self._lock:
            self._audit.append(audit_row(now, actor, action, what, dict(detail)))

    def skip_channel(self, channel: str, before: float, now: float, reason: str) -> int:
        with self._lock:
            rows = [
                row for row in self._outbox
                if row["channel"] == channel and row["state"] == "pending"
                and row["created_at"] < before
            ]  # fmt: skip
            for row in rows:
                row.update(state="skipped", last_error=reason, done_at=now, claimed_by="")
            return len(rows)

    def put_report(
        self, process: str, now: float, report: Mapping[str, Any], keep: float = REPORTS_KEPT
    ) -> None:
        with self._lock:
            self._reports[process] = (now, json.loads(json.dumps(report)))
            for gone in [p for p, (at, _) in self._reports.items() if at < now - keep]:
                del self._reports[gone]

    def remove_report(self, process: str) -> None:
        with self._lock:
            self._reports.pop(process, None)

    def reports(self, since: float) -> list[tuple[str, Mapping[str, Any]]]:
        with self._lock:
            return sorted((p, r) for p, (at, r) in self._reports.items() if at >= since)

    def audit(self, limit: int, kind: str = "") -> list[dict[str, Any]]:
        with self._lock:
            if not kind:
                return self._audit[::-1][:limit]
            return [row for row in self._audit if row["object"].startswith(f"{kind} ")][::-1][
                :limit
            ]

    def reset_after_fork(self) -> None:
        """In a forked child: a lock of its own (the parent's may be held)."""
        self._lock = threading.Lock()


class SQLAlertStore:
    """Alert state in the app's SQLite file or PostgreSQL database.

    ``borrow`` gives a context manager holding a connection whose schema
    is migrated (the sink's own, lent by a small pool of connections kept
    between calls); ``dialect`` is ``"sqlite"`` or
    ``"postgresql"``. Each call borrows a connection for its statements.
    """

    def __init__(self, borrow: Callable[[], AbstractContextManager[Any]], dialect: str) -> None:
        self._borrow = borrow
        self.dialect = dialect
        self._mark = "?" if dialect == "sqlite" else "%s"

    def _sql(self, text: str) -> str:
        return text.replace("?", self._mark)

    def _transaction(self) -> AbstractContextManager[Any]:
        """A write transaction (see :func:`aegis_mw.core.transactions.write_transaction`)."""
        return write_transaction(self._borrow, self.dialect)

    def _read(self) -> AbstractContextManager[Any]:
        return self._borrow()

    def _lease_row(self, connection: Any) -> tuple[str, int, float]:
        return leases.lease_row(connection, LEASE, mark=self._mark, lock=self.dialect != "sqlite")

    def claim(self, holder: str, now: float, ttl: float) -> int | None:
        with self._transaction() as connection:
            return leases.claim(
                connection, LEASE, holder, now, ttl,
                mark=self._mark, lock=self.dialect != "sqlite",
            )  # fmt: skip

    def release(self, holder: str) -> None:
        with self._transaction() as connection:
            leases.release(connection, LEASE, holder, mark=self._mark)

    def load(self) -> dict[Key, Instance]:
        with self._read() as connection:
            rows = connection.execute("SELECT data FROM aegis_alert_instances").fetchall()
        loaded = (instance_from_text(row[0]) for row in rows)
        return {(i.rule, i.group): i for i in loaded}

    def commit(
        self,
        holder: str,
        token: int,
        changed: list[Instance],
        removed: list[Key],
        transitions: list[Transition],
        renew_until: float,
        notices: Sequence[Notice] = (),
        groupings: Mapping[str, Grouping] | None = None,
    ) -> bool:
        with self._transaction() as connection:
            current, held, _ = self._lease_row(connection)
            if (current, held) != (holder, token):
                return False
            if notices:
                self._add_notices(connection, notices, groupings or {})
            connection.execute(
                self._sql("UPDATE aegis_alert_lease SET expires_at = ? WHERE name = ?"),
                (renew_until, LEASE),
            )
            if changed:
                connection.cursor().executemany(
                    self._sql(
                        "INSERT INTO aegis_alert_instances "
                        "(rule, group_key, state, data, updated_at) VALUES (?, ?, ?, ?, ?) "
                        "ON CONFLICT (rule, group_key) DO UPDATE SET state = excluded.state, "
                        "data = excluded.data, updated_at = excluded.updated_at"
                    ),
                    [
                        (i.rule, group_key(i.group), i.state, instance_text(i), i.seen_at)
                        for i in changed
                    ],
                )
            if removed:
                connection.cursor().executemany(
                    self._sql("DELETE FROM aegis_alert_instances WHERE rule = ? AND group_key = ?"),
                    [(rule, group_key(group)) for rule, group in removed],
                )
            if transitions:
                connection.cursor().executemany(
                    self._sql(
                        "INSERT INTO aegis_alert_transitions (at, rule, group_key, kind, "
                        "from_state, to_state, value, severity, episode, notify, labels, "
                        "annotations) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    ),
                    [_transition_params(t, self.dialect) for t in transitions],
                )
            return True

    def instances(self) -> list[Instance]:
        with self._read() as connection:
            rows = connection.execute(
                self._sql("SELECT data FROM aegis_alert_instances WHERE state <> ?"), (INACTIVE,)
            ).fetchall()
        return [instance_from_text(row[0]) for row in rows]

    def history(self, limit: int, before: int | None = None) -> list[dict[str, Any]]:
        bound = 2**62 if before is None else before
        with self._read() as connection:
            rows = connection.execute(
                self._sql(
                    "SELECT id, at, rule, group_key, kind, from_state, to_state, value, "
                    "severity, episode, notify, labels, annotations FROM aegis_alert_transitions "
                    "WHERE id < ? ORDER BY id DESC LIMIT ?"
                ),
                (bound, limit),
            ).fetchall()
        return [
            {
                "id": int(row[0]),
                "at": float(row[1]),
                "rule": row[2],
                "group": dict(json.loads(row[3])),
                "kind": row[4],
                "from_state": row[5],
                "to_state": row[6],
                "value": row[7],
                "severity": row[8],
                "episode": row[9],
                "notify": bool(row[10]),
                "labels": json.loads(row[11]),
                "annotations": json.loads(row[12]),
            }
            for row in rows
        ]

    def _add_notices(
        self, connection: Any, notices: Sequence[Notice], groupings: Mapping[str, Grouping]
    ) -> None:
        rows = []
        # Channels given a notice of each episode by this batch (a firing
        # and its resolve can come in one evaluation), and the groups this
        # batch scheduled.
        batch: dict[str, set[str]] = {}
        scheduled: dict[tuple[str, str], float] = {}
        for notice in notices:
            if notice.channel is not None:
                targets = [notice.channel]
            else:  # a resolve: wherever its episode's firing went
                stored = connection.execute(
                    self._sql("SELECT DISTINCT channel FROM aegis_alert_outbox WHERE episode = ?"),
                    (notice.episode,),
                ).fetchall()
                targets = sorted({str(row[0]) for row in stored} | batch.get(notice.episode, set()))
            batch.setdefault(notice.episode, set()).update(targets)
            for channel in targets:
                grouping = groupings.get(channel, ALONE)
                key = grouping.key(notice.labels)
                due = scheduled.get((channel, key))
                if due is None:
                    due = self._due_at(connection, grouping, channel, key, notice.at)
                    if key:
                        scheduled[(channel, key)] = due
                rows.append((
                    notice.at, channel, notice.key, notice.alert_key, notice.episode,
                    notice.payload, due, key,
                ))  # fmt: skip
        if rows:
            connection.cursor().executemany(
                self._sql(
                    "INSERT INTO aegis_alert_outbox (created_at, channel, notice_key, alert_key, "
                    "episode, payload, state, attempts, next_at, claimed_by, claimed_until, "
                    "last_error, group_key) "
                    "VALUES (?, ?, ?, ?, ?, ?, 'pending', 0, ?, '', 0, '', ?) "
                    "ON CONFLICT (channel, notice_key) DO NOTHING"
                ),
                rows,
            )

    def _due_at(
        self, connection: Any, grouping: Grouping, channel: str, key: str, at: float
    ) -> float:
        if not key:
            return due_at(grouping, key, at, [], [])
        pending, sent = connection.execute(
            self._sql(
                "SELECT min(CASE WHEN state = 'pending' THEN next_at END), "
                "max(CASE WHEN state = 'delivered' THEN done_at END) FROM aegis_alert_outbox "
                "WHERE channel = ? AND group_key = ?"
            ),
            (channel, key),
        ).fetchone()
        return due_at(
            grouping, key, at, [] if pending is None else [pending], [] if sent is None else [sent]
        )

    def claim_notices(
        self, claimer: str, now: float, hold: float, limit: int, channels: Sequence[str]
    ) -> list[Claimed]:
        if not channels:
            return []
        marks = ", ".join("?" for _ in channels)
        # A row is taken when it is due, or when a row of its group on its
        # channel is (they go in one notification); and only when it is the
        # oldest pending row of its alert on its channel (in order).
        wanted = (
            f"o.state = 'pending' AND o.claimed_until < ? AND o.channel IN ({marks}) "
            "AND (o.next_at <= ? OR (o.group_key <> '' AND EXISTS (SELECT 1 FROM "
            "aegis_alert_outbox d WHERE d.channel = o.channel AND d.group_key = o.group_key "
            "AND d.state = 'pending' AND d.next_at <= ? AND d.claimed_until < ?))) "
            "AND NOT EXISTS (SELECT 1 FROM aegis_alert_outbox p WHERE p.channel = "
            "o.channel AND p.alert_key = o.alert_key AND p.state = 'pending' AND p.id < o.id)"
        )
        arguments = (now, *channels, now, now, now)
        # A read first: a write transaction only when something can be taken
        # (with SQLite, every process's sender would otherwise take the
        # file's write lock each second, and so would a due row that waits
        # behind an older one of its alert).
        with self._read() as connection:
            found = connection.execute(
                self._sql(f"SELECT 1 FROM aegis_alert_outbox o WHERE {wanted} LIMIT 1"), arguments
            ).fetchone()
        if found is None:
            return []
        # A claim of its own: the rows this call marked, and no others.
        claim = f"{claimer}:{uuid.uuid4().hex}"
        skip = "" if self.dialect == "sqlite" else " FOR UPDATE SKIP LOCKED"
        with self._transaction() as connection:
            connection.execute(
                self._sql(
                    "UPDATE aegis_alert_outbox SET claimed_by = ?, claimed_until = ? "
                    f"WHERE id IN (SELECT o.id FROM aegis_alert_outbox o WHERE {wanted} "
                    f"ORDER BY o.id LIMIT ?{skip})"
                ),
                (claim, now + hold, *arguments, limit),
            )
            rows = connection.execute(
                self._sql(
                    "SELECT o.id, o.channel, o.notice_key, o.payload, o.attempts, o.group_key, "
                    "EXISTS (SELECT 1 FROM aegis_alert_outbox f WHERE f.channel = o.channel "
                    "AND f.episode = o.episode AND f.state = 'delivered' AND f.id < o.id) "
                    "FROM aegis_alert_outbox o WHERE o.claimed_by = ? ORDER BY o.id"
                ),
                (claim,),
            ).fetchall()
        return [
            Claimed(
                int(r[0]), str(r[1]), str(r[2]), str(r[3]), int(r[4]), claim, str(r[5]), bool(r[6])
            )
            for r in rows
        ]

    def renew_claim(self, row: int, claim: str, until: float, now: float) -> bool:
        with self._transaction() as connection:
            cursor = connection.execute(
                self._sql(
                    "UPDATE aegis_alert_outbox SET claimed_until = ? "
                    "WHERE id = ? AND claimed_by = ? AND claimed_until > ?"
                ),
                (until, row, claim, now),
            )
            return int(cursor.rowcount) == 1

    def finish_notice(
        self, row: int, claim: str, state: str, next_at: float, error: str, now: float,
        *, outcome: str = "", seconds: float = 0.0, send_id: str = "",
    ) -> None:  # fmt: skip
        with self._transaction() as connection:
            # The attempt first: written only while the claim is still this one's.
            connection.execute(
                self._sql(
                    "INSERT INTO aegis_alert_attempts (notice_id, channel, at, outcome, error, "
                    "seconds, sender, send_id) SELECT id, channel, ?, ?, ?, ?, ?, ? "
                    "FROM aegis_alert_outbox WHERE id = ? AND claimed_by = ?"
                ),
                (
                    now, outcome or _outcome(state), error, seconds, _sender(claim), send_id,
                    row, claim,
                ),
            )  # fmt: skip
            connection.execute(
                self._sql(
                    "UPDATE aegis_alert_outbox SET state = ?, next_at = ?, last_error = ?, "
                    "attempts = attempts + 1, claimed_by = '', claimed_until = 0, done_at = ? "
                    "WHERE id = ? AND claimed_by = ?"
                ),
                (state, next_at, error, None if state == "pending" else now, row, claim),
            )

    def notices(self, limit: int) -> list[dict[str, Any]]:
        with self._read() as connection:
            rows = connection.execute(
                self._sql(
                    "SELECT id, created_at, channel, notice_key, episode, state, attempts, "
                    "next_at, last_error, done_at FROM aegis_alert_outbox ORDER BY id DESC LIMIT ?"
                ),
                (limit,),
            ).fetchall()
        names = ("id", "created_at", "channel", "notice_key", "episode", "state", "attempts",
                 "next_at", "last_error", "done_at")  # fmt: skip
        return [dict(zip(names, row, strict=True)) for row in rows]

    def episode_notices(self, episodes: Sequence[str]) -> list[tuple[str, str, float, int, int]]:
        if not episodes:
            return []
        marks = ", ".join("?" for _ in episodes)
        with self._read() as connection:
            rows = connection.execute(
                self._sql(
                    "SELECT channel, episode, max(created_at), "
                    "sum(CASE WHEN state = 'pending' THEN 1 ELSE 0 END), "
                    "sum(CASE WHEN state = 'delivered' THEN 1 ELSE 0 END) "
                    f"FROM aegis_alert_outbox WHERE episode IN ({marks}) AND state <> 'skipped' "
                    "GROUP BY channel, episode"
                ),
                tuple(episodes),
            ).fetchall()
        return [(str(r[0]), str(r[1]), float(r[2]), int(r[3]), int(r[4])) for r in rows]

    def sends_since(self, channel: str, since: float) -> tuple[int, float | None]:
        with self._read() as connection:
            row = connection.execute(
                self._sql(
                    "SELECT count(DISTINCT send_id), min(at) FROM aegis_alert_attempts "
                    "WHERE at > ? AND channel = ? AND outcome <> 'skipped'"
                ),
                (since, channel),
            ).fetchone()
        return int(row[0]), None if row[1] is None else float(row[1])

    def attempts(self, notices: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
        if not notices:
            return {}
        marks = ", ".join("?" for _ in notices)
        with self._read() as connection:
            rows = connection.execute(
                self._sql(
                    "SELECT notice_id, channel, at, outcome, error, seconds, sender FROM "
                    f"aegis_alert_attempts WHERE notice_id IN ({marks}) ORDER BY id"
                ),
                tuple(notices),
            ).fetchall()
        out: dict[int, list[dict[str, Any]]] = {}
        for row in rows:
            attempt = dict(zip(_ATTEMPT_COLUMNS, row, strict=True))
            out.setdefault(int(row[0]), []).append(_attempt_view(attempt))
        return out

    def notice_counts(self) -> dict[tuple[str, str], tuple[int, float | None]]:
        with self._read() as connection:
            rows = connection.execute(
                "SELECT channel, state, count(*), min(created_at) FROM aegis_alert_outbox "
                "GROUP BY channel, state"
            ).fetchall()
        return {(str(r[0]), str(r[1])): (int(r[2]), r[3]) for r in rows}

    def channel_states(self) -> dict[str, ChannelState]:
        with self._read() as connection:
            rows = connection.execute(
                "SELECT channel, fingerprint, reason, disabled_at, probe_at "
                "FROM aegis_alert_channels"
            ).fetchall()
        return {str(r[0]): ChannelState(str(r[0]), str(r[1]), str(r[2]), r[3], r[4]) for r in rows}

    def disable_channel(self, state: ChannelState) -> None:
        with self._transaction() as connection:
            connection.execute(
                self._sql(
                    "INSERT INTO aegis_alert_channels (channel, fingerprint, reason, disabled_at, "
                    "probe_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (channel) DO UPDATE SET "
                    "fingerprint = excluded.fingerprint, reason = excluded.reason, "
                    "disabled_at = excluded.disabled_at, probe_at = excluded.probe_at"
                ),
                tuple(state),
            )

    def enable_channel(self, channel: str) -> bool:
        with self._transaction() as connection:
            return self._enable(connection, channel)

    def _enable(self, connection: Any, channel: str) -> bool:
        """Clear a channel's disabled state; whether it had one."""
        cursor = connection.execute(
            self._sql("DELETE FROM aegis_alert_channels WHERE channel = ?"), (channel,)
        )
        return int(cursor.rowcount) > 0

    def silences(self, since: float) -> list[Silence]:
        with self._read() as connection:
            rows = connection.execute(
                self._sql("SELECT data FROM aegis_alert_silences WHERE ends_at >= ? ORDER BY id"),
                (since,),
            ).fetchall()
        return _silences(row[0] for row in rows)

    def put_silence(
        self, silence: Silence, actor: str, now: float, *, update: bool = False,
        limit: int | None = None,
    ) -> bool:  # fmt: skip
        with self._transaction() as connection:
            if self.dialect != "sqlite":
                # One writer at a time (as SQLite's BEGIN IMMEDIATE): the
                # check below holds until the write.
                connection.execute("LOCK TABLE aegis_alert_silences IN SHARE ROW EXCLUSIVE MODE")
            known = connection.execute(
                self._sql("SELECT ends_at FROM aegis_alert_silences WHERE id = ?"), (silence.id,)
            ).fetchone()
            if update and (known is None or known[0] <= now):
                return False
            if known is None and limit is not None:
                live = connection.execute(
                    self._sql("SELECT count(*) FROM aegis_alert_silences WHERE ends_at > ?"),
                    (now,),
                ).fetchone()[0]
                if live >= limit:
                    raise TooMany(limit)
            self._write_silence(connection, silence, now)
            self._write_audit(
                connection, _audit_row(now, actor, "update" if known else "create", silence)
            )
            return True

    def expire_silence(self, silence_id: str, actor: str, now: float) -> bool:
        with self._transaction() as connection:
            row = connection.execute(
                self._sql("SELECT data FROM aegis_alert_silences WHERE id = ? AND ends_at > ?"),
                (silence_id, now),
            ).fetchone()
            if row is None:
                return False
            silence = silence_from_mapping(json.loads(row[0]))
            ended = _ended(silence, now)
            if ended is None:
                connection.execute(
                    self._sql("DELETE FROM aegis_alert_silences WHERE id = ?"), (silence_id,)
                )
            else:
                self._write_silence(connection, ended, now)
            self._write_audit(connection, _audit_row(now, actor, "expire", silence))
            return True

    def _write_silence(self, connection: Any, silence: Silence, now: float) -> None:
        connection.execute(
            self._sql(
                "INSERT INTO aegis_alert_silences (id, data, ends_at, updated_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET data = excluded.data, "
                "ends_at = excluded.ends_at, updated_at = excluded.updated_at"
            ),
            (silence.id, json.dumps(silence.to_mapping()), silence.ends_at, now),
        )

    def _write_audit(self, connection: Any, row: Mapping[str, Any]) -> None:
        connection.execute(
            self._sql(
                "INSERT INTO aegis_alert_audit (at, actor, action, object, detail) "
                "VALUES (?, ?, ?, ?, ?)"
            ),
            (row["at"], row["actor"], row["action"], row["object"], json.dumps(row["detail"])),
        )

    def revisions(self) -> Revisions:
        with self._read() as connection:
            rules, channels = connection.execute(_REVISIONS).fetchone()
        return Revisions(int(rules), int(channels))

    def api_items(self, kind: str) -> tuple[int, list[StoredItem]]:
        table = _TABLES[kind]  # one of ours, never the caller's text
        with self._read() as connection:
            # The revision first: a write landing between the two reads is
            # read again at the next tick, never missed.
            revision = connection.execute(
                f"SELECT coalesce(max(revision), 0) FROM {table}"
            ).fetchone()[0]
            rows = connection.execute(
                f"SELECT name, data, updated_at, updated_by FROM {table} "
                "WHERE data IS NOT NULL ORDER BY name"
            ).fetchall()
        out = []
        for name, data, updated_at, updated_by in rows:
            try:
                out.append(StoredItem(name, json.loads(data), updated_at, updated_by))
            except ValueError as exc:
                logger.warning("aegis_mw: the stored %s %r is left out: %s", kind, name, exc)
        return int(revision), out

    def _next_revision(self, connection: Any, table: str) -> int:
        if self.dialect != "sqlite":
            # Writers one at a time (SQLite's BEGIN IMMEDIATE already makes
            # them so): two may not take the same revision, or a reader that
            # saw the first would miss the second. Readers are not blocked.
            connection.execute(f"LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE")
        row = connection.execute(f"SELECT coalesce(max(revision), 0) FROM {table}").fetchone()
        return int(row[0]) + 1

    def put_item(
        self, kind: str, name: str, data: Mapping[str, Any], actor: str, now: float, limit: int
    ) -> str:
        table = _TABLES[kind]
        with self._transaction() as connection:
            revision = self._next_revision(connection, table)
            known = connection.execute(
                self._sql(f"SELECT 1 FROM {table} WHERE name = ? AND data IS NOT NULL"), (name,)
            ).fetchone()
            if known is None:
                count = connection.execute(
                    f"SELECT count(*) FROM {table} WHERE data IS NOT NULL"
                ).fetchone()[0]
                if count >= limit:
                    raise TooMany(limit)
            connection.execute(
                self._sql(
                    f"INSERT INTO {table} (name, data, revision, updated_at, updated_by) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET data = excluded.data, "
                    "revision = excluded.revision, updated_at = excluded.updated_at, "
                    "updated_by = excluded.updated_by"
                ),
                (name, json.dumps(dict(data)), revision, now, actor),
            )
            action = "update" if known else "create"
            row = audit_row(now, actor, action, f"{kind} {name}", _shown(kind, data))
            self._write_audit(connection, row)
            if kind == CHANNEL and action == "create":
                self._skip_pending(connection, name, now, _EARLIER, before=now)
            return action

    def _skip_pending(
        self, connection: Any, channel: str, now: float, reason: str, before: float | None = None
    ) -> int:
        """Skip a channel's pending notices (made before ``before``, if given)."""
        cursor = connection.execute(
            self._sql(
                "UPDATE aegis_alert_outbox SET state = 'skipped', last_error = ?, done_at = ?, "
                "claimed_by = '', claimed_until = 0 WHERE channel = ? AND state = 'pending' "
                "AND created_at < ?"
            ),
            (reason, now, channel, float("inf") if before is None else before),
        )
        return int(cursor.rowcount)

    def delete_item(
        self, kind: str, name: str, actor: str, now: float, *, notices: bool = True
    ) -> bool:
        table = _TABLES[kind]
        with self._transaction() as connection:
            revision = self._next_revision(connection, table)
            row = connection.execute(
                self._sql(f"SELECT data FROM {table} WHERE name = ? AND data IS NOT NULL"), (name,)
            ).fetchone()
            if row is None:
                return False
            # Kept as a tombstone: its revision tells every process the item
            # is gone (a revision that went down could match one seen before).
            connection.execute(
                self._sql(
                    f"UPDATE {table} SET data = NULL, revision = ?, updated_at = ?, "
                    "updated_by = ? WHERE name = ?"
                ),
                (revision, now, actor, name),
            )
            detail = _shown(kind, json.loads(row[0]))
            self._write_audit(connection, audit_row(now, actor, "delete", f"{kind} {name}", detail))
            if kind == CHANNEL and notices:  # nothing more goes there; no longer disabled
                self._skip_pending(connection, name, now, _DELETED)
                self._enable(connection, name)
            return True

    def add_audit(
        self, actor: str, action: str, what: str, detail: Mapping[str, Any], now: float
    ) -> None:
        with self._transaction() as connection:
            self._write_audit(connection, audit_row(now, actor, action, what, detail))

    def skip_channel(self, channel: str, before: float, now: float, reason: str) -> int:
        with self._transaction() as connection:
            return self._skip_pending(connection, channel, now, reason, before)

    def remove_report(self, process: str) -> None:
        with self._transaction() as connection:
            connection.execute(
                self._sql("DELETE FROM aegis_alert_reports WHERE process = ?"), (process,)
            )

    def put_report(
        self, process: str, now: float, report: Mapping[str, Any], keep: float = REPORTS_KEPT
    ) -> None:
        with self._transaction() as connection:
            connection.execute(
                self._sql(
                    "INSERT INTO aegis_alert_reports (process, at, data) VALUES (?, ?, ?) "
                    "ON CONFLICT (process) DO UPDATE SET at = excluded.at, data = excluded.data"
                ),
                (process, now, json.dumps(report, allow_nan=False)),
            )
            # Reports of processes gone an hour (a live one rewrites its own
            # every tick): the table holds about the processes alive.
            connection.execute(
                self._sql("DELETE FROM aegis_alert_reports WHERE at < ?"), (now - keep,)
            )

    def reports(self, since: float) -> list[tuple[str, Mapping[str, Any]]]:
        with self._read() as connection:
            rows = connection.execute(
                self._sql(
                    "SELECT process, data FROM aegis_alert_reports WHERE at >= ? ORDER BY process"
                ),
                (since,),
            ).fetchall()
        out = []
        for process, data in rows:
            try:
                out.append((process, json.loads(data)))
            except ValueError:
                logger.warning("aegis_mw: the report of process %s does not read", process)
        return out

    def audit(self, limit: int, kind: str = "") -> list[dict[str, Any]]:
        # An object is "<kind> <name>". Its first characters compared for
        # equality, which no collation reorders (a range or LIKE might).
        where = " WHERE substr(object, 1, ?) = ?" if kind else ""
        bounds = (len(kind) + 1, f"{kind} ") if kind else ()
        with self._read() as connection:
            rows = connection.execute(
                self._sql(
                    "SELECT at, actor, action, object, detail FROM aegis_alert_audit"
                    f"{where} ORDER BY id DESC LIMIT ?"
                ),
                (*bounds, limit),
            ).fetchall()
        return [
            {"at": r[0], "actor": r[1], "action": r[2], "object": r[3], "detail": json.loads(r[4])}
            for r in rows
        ]

    def prune_history(self, before: float, limit: int) -> int:
        with self._transaction() as connection:
            # The oldest rows first, by the index on their time.
            cursor = connection.execute(
                self._sql(
                    "DELETE FROM aegis_alert_transitions WHERE id IN (SELECT id FROM "
                    "aegis_alert_transitions WHERE at < ? ORDER BY at LIMIT ?)"
                ),
                (before, limit),
            )
            # Only the rows of episodes closed on their channel (their
            # resolve done): the rows of an alert still firing say where its
            # resolve goes, and that it was told (no second firing).
            finished = connection.execute(
                self._sql(
                    "DELETE FROM aegis_alert_outbox WHERE id IN (SELECT o.id FROM "
                    "aegis_alert_outbox o WHERE o.done_at < ? AND EXISTS (SELECT 1 FROM "
                    "aegis_alert_outbox r WHERE r.channel = o.channel AND r.episode = o.episode "
                    "AND r.notice_key LIKE ? AND r.state <> 'pending') "
                    "ORDER BY o.done_at LIMIT ?)"
                ),
                (before, "%.resolved.%", limit),
            )
            tried = connection.execute(
                self._sql(
                    "DELETE FROM aegis_alert_attempts WHERE id IN (SELECT id FROM "
                    "aegis_alert_attempts WHERE at < ? ORDER BY at LIMIT ?)"
                ),
                (before, limit),
            )
            ended = connection.execute(
                self._sql("DELETE FROM aegis_alert_silences WHERE ends_at < ?"), (before,)
            )
            audited = connection.execute(
                self._sql(
                    "DELETE FROM aegis_alert_audit WHERE id IN (SELECT id FROM "
                    "aegis_alert_audit WHERE at < ? ORDER BY at LIMIT ?)"
                ),
                (before, limit),
            )
            return sum(int(c.rowcount) for c in (cursor, finished, tried, ended, audited))


def _transition_params(transition: Transition, dialect: str) -> tuple[Any, ...]:
    notify: Any = transition.notify if dialect != "sqlite" else int(transition.notify)
    return (
        transition.at, transition.rule, group_key(transition.group), transition.kind,
        transition.from_state, transition.to_state, transition.value, transition.severity,
        transition.episode, notify, json.dumps(dict(transition.labels)),
        json.dumps(dict(transition.annotations)),
    )  # fmt: skip


def _claimed(row: Mapping[str, Any]) -> Claimed:
    return Claimed(
        row["id"], row["channel"], row["notice_key"], row["payload"], row["attempts"],
        row["claimed_by"], row["group_key"],
    )  # fmt: skip


def _silences(texts: Iterable[str]) -> list[Silence]:
    """Stored silences; one that no longer reads (written by another
    version) is left out and logged, never a failed tick."""
    out = []
    for text in texts:
        try:
            out.append(silence_from_mapping(json.loads(text)))
        except (ValueError, TypeError) as exc:
            logger.warning("aegis_mw: a stored silence is left out: %s", exc)
    return out


#: Why the pending notices of a channel the API deleted are skipped, and
#: those an API channel made again under the same name finds.
_DELETED = "the channel was deleted through the API"
_EARLIER = "made for an earlier channel of this name"


def _shown(kind: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """What the audit keeps of a rule or channel: a channel's secrets hidden."""
    return public_settings(data) if kind == CHANNEL else dict(data)


def _audit_row(now: float, actor: str, action: str, silence: Silence) -> dict[str, Any]:
    return audit_row(now, actor, action, f"silence {silence.id}", silence.to_mapping())


def audit_row(
    now: float, actor: str, action: str, what: str, detail: Mapping[str, Any]
) -> dict[str, Any]:
    """One audit entry: who did what to which object, when, and its content."""
    return {"at": now, "actor": actor, "action": action, "object": what, "detail": dict(detail)}


def _ended(silence: Silence, now: float) -> Silence | None:
    """A silence ended at ``now``; None for one that has not started (it
    never took effect: dropped, as Alertmanager drops it)."""
    if silence.starts_at >= now:
        return None
    return dataclasses.replace(silence, ends_at=now)


def due_at(
    grouping: Grouping, key: str, at: float, pending: Sequence[float], sent: Sequence[float]
) -> float:
    """When a notice raised ``at`` is due on a channel: at once alone; with a
    group, when the group's pending notification is (``pending``: their due
    times), else ``group_interval`` after its last delivery (``sent``), or
    ``group_wait`` from now for a group with none that recent."""
    if not key:
        return at
    if pending:
        return min(pending)
    last = max(sent, default=None)
    if last is None or at - last >= grouping.group_interval:
        return at + grouping.group_wait
    return last + grouping.group_interval


_NOTICE_FIELDS = (
    "id", "created_at", "channel", "notice_key", "episode", "state", "attempts", "next_at",
    "last_error", "done_at",
)  # fmt: skip


def _notice_view(row: Mapping[str, Any]) -> dict[str, Any]:
    return {name: row[name] for name in _NOTICE_FIELDS}


_ATTEMPT_COLUMNS = ("notice_id", "channel", "at", "outcome", "error", "seconds", "sender")


def _attempt_view(row: Mapping[str, Any]) -> dict[str, Any]:
    return {name: row[name] for name in _ATTEMPT_COLUMNS[1:]}


def _outcome(state: str) -> str:
    return "retry" if state == "pending" else state


def _sender(claim: str) -> str:
    """The process that held a claim (``holder:random``)."""
    return claim.rpartition(":")[0]


#: States shown as alerts (nodata is listed apart: a quiet app is no alert).
SHOWN = (PENDING, FIRING)
