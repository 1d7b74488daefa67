"""The shipped dashboards as files: valid against Grafana's own schema
(grafana-foundation-sdk, see ``grafana_schema.py``), importable with a data
source of the importer's choice, with a data source variable, app and route
variables, ``$__rate_interval`` in every rate, and no job written in. That their queries return data is the business of the
tests against a real Prometheus and a real PostgreSQL beside this one."""

from __future__ import annotations

import copy
import re
import sys
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

import pytest

from aegis_mw.grafana import exported
from tests.grafana.dashboards import dashboard, label, panels, targets, variables
from tests.grafana.grafana_schema import Problems, dashboard_problems, sdk
from tests.servers import ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

PROMETHEUS = "prometheus"
POSTGRESQL = "grafana-postgresql-datasource"
#: The dashboard -> its data source plugin and the variables it has.
DASHBOARDS = {
    "prometheus-dashboard": (PROMETHEUS, ["datasource", "job", "instance", "route"]),
    "postgresql-dashboard": (POSTGRESQL, ["datasource", "route"]),
}
#: The fields of Grafana's SQL query model (grafana-sql's SQLQuery), which the
#: SDK has no model of, and the type of each.
SQL_QUERY_FIELDS: dict[str, type | tuple[type, ...]] = {
    "refId": str, "datasource": dict, "rawSql": str, "format": str, "rawQuery": bool,
    "editorMode": str, "hide": bool, "dataset": str, "table": str, "sql": dict,
}  # fmt: skip


def sql_query_problems(data: dict[str, Any], path: str) -> Problems:
    """A PostgreSQL query checked against Grafana's SQL query model."""
    problems = []
    for key, value in data.items():
        expected = SQL_QUERY_FIELDS.get(key)
        if expected is None:
            problems.append(f"{path}.{key}: not a field of a SQL query")
        elif not isinstance(value, expected):
            problems.append(f"{path}.{key}: {value!r} is not a {expected}")
    if data.get("format") not in ("time_series", "table"):
        problems.append(f"{path}.format: {data.get('format')!r} is not time_series or table")
    if data.get("editorMode") not in (None, "code", "builder"):
        problems.append(f"{path}.editorMode: {data['editorMode']!r} is not code or builder")
    if data.get("datasource", {}).get("type") != POSTGRESQL:
        problems.append(f"{path}.datasource: not the PostgreSQL data source")
    return problems


def test_the_schema_is_the_pinned_one() -> None:
    """The SDK's versions are "<build>!<Grafana version>", one build per Grafana
    release: the dashboards are judged by the build the dev extra pins."""
    sdk()
    with (ROOT / "pyproject.toml").open("rb") as handle:
        dev = tomllib.load(handle)["project"]["optional-dependencies"]["dev"]
    [pinned] = [item for item in dev if item.startswith("grafana-foundation-sdk==")]
    assert pinned.split(";")[0] == f"grafana-foundation-sdk=={version('grafana-foundation-sdk')}"
    assert pinned.split(";")[0].endswith("!11.6.0")


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_grafanas_schema_accepts_the_dashboard(name: str) -> None:
    assert dashboard_problems(dashboard(name), sql_query_problems) == []


Change = Callable[[dict[str, Any]], None]
#: Mistakes the schema check must catch, each with what it reports.
MISTAKES: list[tuple[str, Change, str]] = [
    ("misspelt panel field", lambda d: d["panels"][0].update(titel="x"),
     "$.panels[0].titel: not in Grafana's schema"),
    ("string for an integer", lambda d: d["panels"][0]["gridPos"].update(h="4"),
     "$.panels[0].grid_pos.h: an integer expected"),
    ("unknown legend mode", lambda d: d["panels"][7]["options"]["legend"].update(displayMode="x"),
     "legend.display_mode: 'x' is not one of"),
    ("panel plugin without a schema", lambda d: d["panels"][7].update(type="graph"),
     "panel type 'graph' has no schema"),
    ("option the plugin lacks", lambda d: d["panels"][7]["options"].update(bars=True),
     "$.panels[7].options.bars: not in Grafana's schema"),
    ("unknown field config", lambda d: d["panels"][7]["fieldConfig"]["defaults"]["custom"]
     .update(fillOpacty=3), "custom.fillOpacty: not in Grafana's schema"),
    ("misspelt query field", lambda d: d["panels"][7]["targets"][0].update(expresion="up"),
     "targets[0].expresion: not in Grafana's schema"),
    ("query of an unknown data source", lambda d: d["panels"][7].update(
        datasource={"type": "x", "uid": "y"}), "a query of a data source the SDK has no model"),
    ("variable refresh as text", lambda d: d["templating"]["list"][1].update(refresh="yes"),
     "refresh: 'yes' is none of"),
    ("boolean for a string", lambda d: d["panels"][0]["fieldConfig"]["defaults"].update(unit=True),
     "defaults.unit: True is none of"),
    ("mapping of the wrong shape", lambda d: d["panels"][0]["fieldConfig"]["defaults"].update(
        mappings=[{"type": "value", "options": [1]}]), "$: does not decode"),
    ("raw transformation with an unknown key", lambda d: d["panels"][7].update(
        transformations=[{"id": "merge", "optoins": {}}]), "transformations[0].optoins"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("change", "reported"), [m[1:] for m in MISTAKES], ids=[m[0] for m in MISTAKES]
)
def test_the_schema_check_catches_mistakes(change: Change, reported: str) -> None:
    data = copy.deepcopy(dashboard("prometheus-dashboard"))
    assert data["panels"][7]["type"] == "timeseries"
    change(data)
    problems = dashboard_problems(data)
    assert any(reported in problem for problem in problems), problems


def test_a_sql_query_with_an_unknown_field_is_reported() -> None:
    data = copy.deepcopy(dashboard("postgresql-dashboard"))
    data["panels"][0]["targets"][0]["rawSQL"] = "SELECT 1"
    assert dashboard_problems(data, sql_query_problems) == [
        "$.panels[0].targets[0].rawSQL: not a field of a SQL query"
    ]


# -- importing --------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_inputs_requires_and_the_data_source_variable(name: str) -> None:
    """On import Grafana asks for the input's data source and puts its uid where
    ``${DS_...}`` is: the data source variable starts on it, and every panel,
    query and query variable reads the variable."""
    plugin, names = DASHBOARDS[name]
    data = dashboard(name)
    [source] = data["__inputs"]
    assert source["type"] == "datasource" and source["pluginId"] == plugin
    assert re.fullmatch(r"DS_[A-Z]+", source["name"])
    chosen = "${" + source["name"] + "}"

    found = variables(data)
    assert list(found) == names
    picker = found["datasource"]
    assert picker["type"] == "datasource" and picker["query"] == plugin
    assert picker["current"] == {"text": chosen, "value": chosen}
    reference = {"type": plugin, "uid": "${datasource}"}
    for variable in found.values():
        if variable["type"] == "query":
            assert variable["datasource"] == reference, variable["name"]
    for panel in panels(data):
        if panel["type"] != "row":
            assert panel["datasource"] == reference, panel["title"]
    for panel, target in targets(data):
        assert target["datasource"] == reference, label(panel, target)
    # ${DS_...} only where the variable starts: the rest follows the variable.
    assert exported(name).count(chosen) == 2

    requires = {(item["type"], item["id"]) for item in data["__requires"]}
    used = {("panel", panel["type"]) for panel in panels(data) if panel["type"] != "row"}
    assert requires == {("grafana", "grafana"), ("datasource", plugin), *used}
    ids = [panel["id"] for panel in panels(data)]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_panels_fit_the_grid_without_overlapping(name: str) -> None:
    taken: set[tuple[int, int]] = set()
    for panel in panels(dashboard(name)):
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & taken, f"{panel['title']!r} overlaps another panel"
        taken |= cells


# -- the Prometheus dashboard's queries -------------------------------------------------
_RANGE = re.compile(r"\[([^\]]*)\]")
_SERIES = re.compile(r"\b(aegis_[a-z_]+)(\{[^}]*\})?")


def test_every_rate_follows_the_zoom_and_no_job_is_written_in() -> None:
    """A range query's windows are ``$__rate_interval`` (Grafana's at least four
    scrapes, widened with the zoom); an instant query's, summing up the
    dashboard's range, ``$__range``. Every series is read for the selected apps
    and instances (``job=~"$job"``), never for a job written in."""
    data = dashboard("prometheus-dashboard")
    for panel, target in targets(data):
        expr, where = target["expr"], label(panel, target)
        windows = set(_RANGE.findall(expr))
        if target.get("instant"):
            assert windows <= {"$__range"}, where
        else:
            assert target.get("range") is True, where
            assert windows <= {"$__rate_interval"}, where
        for call in ("rate(", "increase("):
            if call in expr:
                assert windows, where
        assert not re.search(r"\bjob\s*(=|!=|!~)\s*\"", expr), where
        for name, selector in _SERIES.findall(expr):
            assert 'job=~"$job"' in selector, (where, name)
            assert 'instance=~"$instance"' in selector, (where, name)
    for variable in variables(data).values():
        query = variable.get("query", "")
        assert not re.search(r"\bjob\s*(=|!=|!~)\s*\"", query), variable["name"]


def test_the_variables_chain_app_instance_route() -> None:
    found = variables(dashboard("prometheus-dashboard"))
    assert found["job"]["query"] == "label_values(aegis_http_requests_total, job)"
    assert '{job=~"$job"}' in found["instance"]["query"]
    assert 'job=~"$job", instance=~"$instance"' in found["route"]["query"]
    for name in ("job", "instance", "route"):
        variable = found[name]
        assert variable["multi"] and variable["includeAll"], name
        assert variable["refresh"] == 2, name  # on a time range change: apps come and go
    # "All" is every listed app (never every job of the Prometheus); instances and
    # routes, filtered by app already, match anything rather than a long regex.
    assert "allValue" not in found["job"]
    assert found["instance"]["allValue"] == found["route"]["allValue"] == ".*"


def test_every_variable_is_used_and_every_use_is_a_variable() -> None:
    for name, (_, names) in DASHBOARDS.items():
        text = exported(name)
        # $__name: Grafana's own; ${DS_NAME}: the import's input.
        used = set(re.findall(r"\$\{?([a-zA-Z][a-zA-Z0-9_]*)", text)) - {
            "DS_PROMETHEUS",
            "DS_POSTGRESQL",
        }
        assert used == set(names), name


def test_the_postgresql_queries_read_our_tables_with_grafanas_macros() -> None:
    data = dashboard("postgresql-dashboard")
    tables: set[str] = set()
    for panel, target in targets(data):
        sql = target["rawSql"]
        tables |= set(re.findall(r"\bFROM (aegis_[a-z_]+)", sql))
        # Times are float epoch seconds in our tables: the epoch macros, never $__timeFilter.
        assert "$__timeFilter" not in sql, label(panel, target)
        assert "$__unixEpoch" in sql, label(panel, target)
        assert ";" not in sql, label(panel, target)  # one statement
    assert tables == {
        "aegis_rollup_totals", "aegis_rollups", "aegis_requests", "aegis_websocket_sessions",
        "aegis_events",
    }  # fmt: skip
