"""An incident's fields as they enter: ``opening`` (a new incident, its
defaults filled in) and ``changes`` (an update: fields and a note). Every bad
field is an IncidentError (a ValueError) whose ``field`` names it."""

from __future__ import annotations

from typing import Any

import pytest

from aegis_mw.incidents.model import (
    ACTIVE,
    CHANGEABLE,
    MAX_KEY,
    MAX_NAME,
    MAX_TEXT,
    MAX_TITLE,
    SEVERITIES,
    STATUSES,
    Incident,
    IncidentError,
    IncidentUpdate,
    changes,
    opening,
)

from .conftest import T0

#: Control characters no text may hold (C0 but tab and newline, DEL, C1).
CONTROLS = ["\x00", "\x01", "\x07", "\x0b", "\x0c", "\r", "\x1b", "\x1f", "\x7f", "\x80", "\x9f"]


def refused(check: Any, data: Any) -> IncidentError:
    with pytest.raises(IncidentError) as caught:
        check(data)
    error = caught.value
    assert isinstance(error, ValueError)
    assert error.message and str(error) == f"{error.field}: {error.message}"
    return error


def test_an_opening_fills_in_the_defaults() -> None:
    assert opening({"title": "the database is down"}) == {
        "title": "the database is down", "description": "", "severity": "medium",
        "status": "open", "assignee": None, "root_cause": "", "correlation_key": None,
    }  # fmt: skip


def test_an_opening_takes_every_field() -> None:
    data = {
        "title": "ünïcode 😀", "description": "line one\nline two\twith a tab",
        "severity": "critical", "status": "identified", "assignee": "zoë",
        "root_cause": "a bad\ndeploy", "correlation_key": "alert:errors 100%",
    }  # fmt: skip
    assert opening(data) == data
    for status in ACTIVE:
        assert opening({"title": "t", "status": status})["status"] == status
    for severity in SEVERITIES:
        assert opening({"title": "t", "severity": severity})["severity"] == severity


def test_lengths_at_their_bounds_are_taken() -> None:
    data = {
        "title": "t" * MAX_TITLE, "description": "d" * MAX_TEXT, "root_cause": "r" * MAX_TEXT,
        "assignee": "a" * MAX_NAME, "correlation_key": "k" * MAX_KEY,
    }  # fmt: skip
    assert opening(data) == {**data, "severity": "medium", "status": "open"}
    # Characters, not bytes: four-byte characters count one each.
    assert opening({"title": "😀" * MAX_TITLE})["title"] == "😀" * MAX_TITLE
    changed, note = changes({"note": "n" * MAX_TEXT, "title": "t" * MAX_TITLE})
    assert (changed, note) == ({"title": "t" * MAX_TITLE}, "n" * MAX_TEXT)


OPENING_REFUSED: list[tuple[dict[str, Any], str]] = [
    ({}, "title"),
    ({"severity": "high"}, "title"),
    ({"title": ""}, "title"),
    ({"title": "   "}, "title"),
    ({"title": "\t\n"}, "title"),
    ({"title": None}, "title"),
    ({"title": 5}, "title"),
    ({"title": ["a"]}, "title"),
    ({"title": "t" * (MAX_TITLE + 1)}, "title"),
    ({"title": "two\nlines"}, "title"),
    ({"title": "a\ttab"}, "title"),
    ({"title": "\ud800"}, "title"),
    ({"title": "t", "description": "d" * (MAX_TEXT + 1)}, "description"),
    ({"title": "t", "description": None}, "description"),
    ({"title": "t", "description": 3}, "description"),
    ({"title": "t", "description": "lone \udfff"}, "description"),
    ({"title": "t", "root_cause": "r" * (MAX_TEXT + 1)}, "root_cause"),
    ({"title": "t", "root_cause": {"a": 1}}, "root_cause"),
    ({"title": "t", "severity": "urgent"}, "severity"),
    ({"title": "t", "severity": "HIGH"}, "severity"),
    ({"title": "t", "severity": " high"}, "severity"),
    ({"title": "t", "severity": ""}, "severity"),
    ({"title": "t", "severity": None}, "severity"),
    ({"title": "t", "severity": 1}, "severity"),
    ({"title": "t", "severity": ["high"]}, "severity"),
    ({"title": "t", "status": "closed"}, "status"),
    ({"title": "t", "status": "Open"}, "status"),
    ({"title": "t", "status": None}, "status"),
    ({"title": "t", "status": "active"}, "status"),
    ({"title": "t", "status": "resolved"}, "status"),
    ({"title": "t", "assignee": ""}, "assignee"),
    ({"title": "t", "assignee": "  "}, "assignee"),
    ({"title": "t", "assignee": "a" * (MAX_NAME + 1)}, "assignee"),
    ({"title": "t", "assignee": "two\nlines"}, "assignee"),
    ({"title": "t", "assignee": 7}, "assignee"),
    ({"title": "t", "assignee": "\udc80"}, "assignee"),
    ({"title": "t", "correlation_key": ""}, "correlation_key"),
    ({"title": "t", "correlation_key": " "}, "correlation_key"),
    ({"title": "t", "correlation_key": "k" * (MAX_KEY + 1)}, "correlation_key"),
    ({"title": "t", "correlation_key": "a\nb"}, "correlation_key"),
    ({"title": "t", "correlation_key": 12}, "correlation_key"),
    ({"title": "t", "correlation_key": ["k"]}, "correlation_key"),
    ({"title": "t", "correlation_key": "\ud83d"}, "correlation_key"),
    ({"title": "t", "colour": "red"}, "colour"),
    ({"title": "t", "note": "a note is for changes"}, "note"),
    ({"title": "t", "id": "inc-mine"}, "id"),
    ({"title": "t", "created_by": "me"}, "created_by"),
    ({"title": "t", "resolved_at": None}, "resolved_at"),
    ({"title": "t", "Title": "t"}, "Title"),
    ({"title": "t", "": 1}, ""),
]


@pytest.mark.parametrize(("data", "field"), OPENING_REFUSED)
def test_a_bad_opening_names_its_field(data: dict[str, Any], field: str) -> None:
    error = refused(opening, data)
    assert error.field == field


def test_an_unknown_field_is_named_before_a_missing_title() -> None:
    assert refused(opening, {"colour": "red"}).field == "colour"
    error = refused(opening, {"title": "t", "colour": "red"})
    assert "unknown field" in error.message
    for known in (*CHANGEABLE, "correlation_key"):
        assert known in error.message


def test_a_new_incident_cannot_be_resolved_already() -> None:
    error = refused(opening, {"title": "t", "status": "resolved"})
    assert error.field == "status"
    assert "resolved" in error.message


@pytest.mark.parametrize("control", CONTROLS)
@pytest.mark.parametrize(
    "field", ["title", "description", "root_cause", "assignee", "correlation_key"]
)
def test_no_text_holds_a_control_character(field: str, control: str) -> None:
    data = {"title": "t", field: f"before{control}after"}
    assert refused(opening, data).field == field
    if field in CHANGEABLE:
        assert refused(changes, {field: f"x{control}"}).field == field
    assert refused(changes, {"note": f"x{control}"}).field == "note"


def test_tabs_and_newlines_only_where_text_may_have_lines() -> None:
    for field in ("description", "root_cause"):
        assert opening({"title": "t", field: "a\tb\nc"})[field] == "a\tb\nc"
        assert changes({field: "a\tb\nc"}) == ({field: "a\tb\nc"}, "")
    assert changes({"note": "a\tb\nc"}) == ({}, "a\tb\nc")
    for field in ("title", "assignee"):
        for whitespace in ("\t", "\n"):
            assert refused(changes, {field: f"a{whitespace}b"}).field == field
    for whitespace in ("\t", "\n"):
        data = {"title": "t", "correlation_key": f"a{whitespace}b"}
        assert refused(opening, data).field == "correlation_key"


# -- changes ---------------------------------------------------------------------------


def test_changes_take_each_field_and_a_note() -> None:
    assert changes({"title": "new"}) == ({"title": "new"}, "")
    assert changes({"description": ""}) == ({"description": ""}, "")
    assert changes({"root_cause": "disk"}) == ({"root_cause": "disk"}, "")
    assert changes({"assignee": None}) == ({"assignee": None}, "")
    assert changes({"assignee": "bob"}) == ({"assignee": "bob"}, "")
    for status in STATUSES:  # resolved included: an update may resolve
        assert changes({"status": status}) == ({"status": status}, "")
    for severity in SEVERITIES:
        assert changes({"severity": severity}) == ({"severity": severity}, "")
    assert changes({"note": "looking"}) == ({}, "looking")
    every = {
        "title": "t", "description": "d", "severity": "low", "status": "monitoring",
        "assignee": "a", "root_cause": "r",
    }  # fmt: skip
    assert changes({**every, "note": "all at once"}) == (every, "all at once")


CHANGES_REFUSED: list[tuple[dict[str, Any], str]] = [
    ({}, "body"),
    ({"note": ""}, "body"),
    ({"note": "   "}, "body"),
    ({"note": "\n\t"}, "body"),
    ({"title": ""}, "title"),
    ({"title": " "}, "title"),
    ({"title": None}, "title"),
    ({"title": "t" * (MAX_TITLE + 1)}, "title"),
    ({"description": None}, "description"),
    ({"description": "d" * (MAX_TEXT + 1)}, "description"),
    ({"root_cause": 1.5}, "root_cause"),
    ({"severity": "urgent"}, "severity"),
    ({"severity": None}, "severity"),
    ({"status": "closed"}, "status"),
    ({"status": "active"}, "status"),
    ({"status": True}, "status"),
    ({"assignee": ""}, "assignee"),
    ({"assignee": "a" * (MAX_NAME + 1)}, "assignee"),
    ({"assignee": False}, "assignee"),
    ({"note": None}, "note"),
    ({"note": 5}, "note"),
    ({"note": ["a"]}, "note"),
    ({"note": "n" * (MAX_TEXT + 1)}, "note"),
    ({"note": "\ud800"}, "note"),
    ({"status": "open", "note": 5}, "note"),
    ({"correlation_key": "k"}, "correlation_key"),
    ({"id": "inc-1"}, "id"),
    ({"title": "t", "colour": "red"}, "colour"),
    ({"created_at": 1}, "created_at"),
    ({"resolved_at": None}, "resolved_at"),
]


@pytest.mark.parametrize(("data", "field"), CHANGES_REFUSED)
def test_a_bad_change_names_its_field(data: dict[str, Any], field: str) -> None:
    assert refused(changes, data).field == field


def test_a_change_with_nothing_to_change_says_so() -> None:
    error = refused(changes, {})
    assert error.field == "body"
    assert "nothing to change" in error.message


def test_an_unknown_field_of_a_change_lists_the_known_ones() -> None:
    error = refused(changes, {"status": "open", "colour": "red"})
    assert error.field == "colour"
    for known in (*CHANGEABLE, "note"):
        assert known in error.message


# -- as JSON ----------------------------------------------------------------------------


def test_an_incident_and_an_update_as_json() -> None:
    incident = Incident(
        "inc-1", "t", "d", "high", "resolved", None, "r", "k", T0, T0 + 1.5, T0 + 2, "alice"
    )
    assert incident.to_json() == {
        "id": "inc-1", "title": "t", "description": "d", "severity": "high",
        "status": "resolved", "assignee": None, "root_cause": "r", "correlation_key": "k",
        "created_at": "2023-11-14T22:13:20.000Z", "updated_at": "2023-11-14T22:13:21.500Z",
        "resolved_at": "2023-11-14T22:13:22.000Z", "created_by": "alice",
    }  # fmt: skip
    open_one = Incident("inc-2", "t", "", "low", "open", "bob", "", None, T0, T0, None, "x")
    assert open_one.to_json()["resolved_at"] is None
    update = IncidentUpdate("inc-1", 3, T0, "carol", "changed", {"status": ["open", "resolved"]})
    assert update.to_json() == {
        "seq": 3, "at": "2023-11-14T22:13:20.000Z", "actor": "carol", "kind": "changed",
        "changes": {"status": ["open", "resolved"]}, "note": "",
    }  # fmt: skip
