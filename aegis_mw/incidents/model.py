"""An incident's fields, how they are checked, and how they read as JSON.

Every text is checked where it enters (the API, the CLI, ``Aegis``), so no
store refuses one: bounded lengths, no control characters (but tabs and
newlines where text may have lines).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ..core.record import isoformat
from ..core.text_rules import text_problem

STATUSES = ("open", "investigating", "identified", "monitoring", "resolved")
RESOLVED = "resolved"
#: Statuses of an incident not yet resolved.
ACTIVE = STATUSES[:-1]
SEVERITIES = ("critical", "high", "medium", "low")

MAX_TITLE = 200
MAX_TEXT = 8192
MAX_NAME = 128
MAX_KEY = 256
#: Fields an update may change; ``note`` adds a note beside them.
CHANGEABLE = ("title", "description", "severity", "status", "assignee", "root_cause")


class IncidentError(ValueError):
    """A field that cannot be taken; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Incident:
    """One incident. ``active_key`` is its correlation key while it is not
    resolved (the store keeps at most one active incident per key)."""

    incident_id: str
    title: str
    description: str
    severity: str
    status: str
    assignee: str | None
    root_cause: str
    correlation_key: str | None
    created_at: float
    updated_at: float
    resolved_at: float | None
    created_by: str

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data = {"id": data.pop("incident_id"), **data}
        for name in ("created_at", "updated_at", "resolved_at"):
            if data[name] is not None:
                data[name] = isoformat(data[name])
        return data


@dataclass(frozen=True)
class IncidentUpdate:
    """One change to an incident, kept as its audit and its timeline: who, when,
    what. ``kind`` is ``created``, ``changed`` (``changes`` holds each field's
    old and new value), ``note`` (``note`` holds it) or ``attached`` (a
    second opening under the incident's correlation key: ``changes`` holds
    what it asked for)."""

    incident_id: str
    seq: int
    at: float
    actor: str
    kind: str
    changes: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq, "at": isoformat(self.at), "actor": self.actor, "kind": self.kind,
            "changes": self.changes, "note": self.note,
        }  # fmt: skip

    def audit_row(self) -> dict[str, Any]:
        """As an entry of the audit log (see ``GET {api_path}/audit``)."""
        detail = {"changes": self.changes, "note": self.note} if self.changes or self.note else {}
        return {
            "at": self.at, "actor": self.actor, "action": f"incident.{self.kind}",
            "object": f"incident {self.incident_id}", "detail": detail,
        }  # fmt: skip


def text(name: str, value: Any, limit: int, *, lines: bool = False, empty: bool = True) -> str:
    """``value`` checked as text (blank counts as empty); IncidentError naming ``name``."""
    problem = text_problem(value, limit, lines=lines, empty=empty, blank=False)
    if problem is not None:
        raise IncidentError(name, problem)
    checked: str = value
    return checked


def choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise IncidentError(name, f"must be one of {', '.join(choices)}")
    return value


def _field(name: str, value: Any) -> Any:
    """One changeable field, checked."""
    if name == "title":
        return text(name, value, MAX_TITLE, empty=False)
    if name in ("description", "root_cause"):
        return text(name, value, MAX_TEXT, lines=True)
    if name == "severity":
        return choice(name, value, SEVERITIES)
    if name == "status":
        return choice(name, value, STATUSES)
    # assignee: a name, or None to leave it unassigned
    return None if value is None else text(name, value, MAX_NAME, empty=False)


def opening(data: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a new incident, checked; defaults filled in."""
    known = (*CHANGEABLE, "correlation_key")
    for name in data:
        if name not in known:
            raise IncidentError(name, f"unknown field; known: {', '.join(known)}")
    if "title" not in data:
        raise IncidentError("title", "is required")
    fields = {
        "title": data["title"], "description": "", "severity": "medium", "status": "open",
        "assignee": None, "root_cause": "", **data,
    }  # fmt: skip
    checked = {name: _field(name, fields[name]) for name in CHANGEABLE}
    key = fields.get("correlation_key")
    checked["correlation_key"] = (
        None if key is None else text("correlation_key", key, MAX_KEY, empty=False)
    )
    if checked["status"] == RESOLVED:
        raise IncidentError("status", "a new incident cannot be resolved already")
    return checked


def changes(data: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The fields an update changes, checked, and its note ("" for none)."""
    for name in data:
        if name not in (*CHANGEABLE, "note"):
            raise IncidentError(name, f"unknown field; known: {', '.join((*CHANGEABLE, 'note'))}")
    changed = {name: _field(name, value) for name, value in data.items() if name != "note"}
    note = text("note", data.get("note", ""), MAX_TEXT, lines=True)
    if not changed and not note.strip():
        raise IncidentError("body", "nothing to change: give a field or a note")
    return changed, note
