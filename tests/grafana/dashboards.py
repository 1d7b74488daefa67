"""The exported dashboards and rules as the tests read them: parsed, and walked
panel by panel (rows' own panels included)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from aegis_mw.grafana import exported

Panel = dict[str, Any]


def dashboard(name: str) -> dict[str, Any]:
    """``prometheus-dashboard`` or ``postgresql-dashboard``, parsed."""
    data: dict[str, Any] = json.loads(exported(name))
    return data


def panels(data: dict[str, Any]) -> Iterator[Panel]:
    """Every panel, those inside a collapsed row too."""
    for panel in data["panels"]:
        yield panel
        yield from panel.get("panels", [])


def targets(data: dict[str, Any]) -> Iterator[tuple[Panel, dict[str, Any]]]:
    """Every query of every panel, with its panel."""
    for panel in panels(data):
        for target in panel.get("targets", []):
            yield panel, target


def variables(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The dashboard's variables by name, in their order."""
    return {variable["name"]: variable for variable in data["templating"]["list"]}


def label(panel: Panel, target: dict[str, Any]) -> str:
    """A target named in a failure message."""
    return f"{panel['title']!r} {target['refId']}"
