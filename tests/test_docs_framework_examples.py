"""The docs pages' "Examples by framework", run as written: each FastAPI and
Flask example's code, saved in a fresh directory (its default SQLite file
there), serves its route, and what the route recorded is there to read: the
event stored, the counter and gauge on ``/metrics``, one incident per
correlation key. The Django examples are checked to be Python only: they
need a project around them."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest

from aegis_mw import Aegis
from aegis_mw.core.events import EventQuery

DOCS = Path(__file__).resolve().parents[1] / "docs"
_BLOCK = re.compile(r"^(\w+)[^\n]*:\n\n```python\n(.*?)```", re.M | re.S)


def examples(page: str) -> dict[str, str]:
    """The code of each framework's example on ``page``, by framework."""
    text = (DOCS / page).read_text(encoding="utf-8")
    section = text.split("## Examples by framework", 1)[1].split("\n## ", 1)[0]
    return {match.group(1): match.group(2) for match in _BLOCK.finditer(section)}


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh directory as the working one, no AEGIS_* settings around."""
    import os

    for name in [name for name in os.environ if name.startswith("AEGIS_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(code: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "example"}
    exec(compile(code, "<example>", "exec"), namespace)
    return namespace


@pytest.mark.parametrize("page", ["events.md", "custom-metrics.md", "incidents.md"])
def test_every_page_has_the_three_frameworks_in_python(page: str) -> None:
    found = examples(page)
    assert set(found) == {"FastAPI", "Flask", "Django"}, found.keys()
    for code in found.values():
        ast.parse(code)


def sample(exposition: str, name: str) -> float:
    """One sample's value in ``/metrics`` text (``name`` with its labels)."""
    [value] = [line.split()[-1] for line in exposition.splitlines() if line.startswith(f"{name} ")]
    return float(value)


@pytest.mark.anyio
async def test_the_fastapi_examples(here: Path) -> None:
    import anyio.to_thread
    import httpx

    def client(namespace: dict[str, Any]) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=namespace["app"])
        return httpx.AsyncClient(transport=transport, base_url="http://testserver")

    events = run(examples("events.md")["FastAPI"])
    aegis: Aegis = events["aegis"]
    async with client(events) as http:
        answer = await http.post("/deploys", params={"version": "2.4.1"})
        assert answer.json() == {"ok": "2.4.1"}
    assert await anyio.to_thread.run_sync(aegis.force_flush, 10.0)
    [stored] = aegis.sinks[0].read_events(EventQuery(tags=("deploy",)))  # type: ignore[attr-defined]
    assert (stored.message, stored.tags) == ("deployed 2.4.1", ("deploy", "version:2.4.1"))

    metrics = run(examples("custom-metrics.md")["FastAPI"])
    async with client(metrics) as http:
        assert (await http.post("/orders/eu")).json() == {"placed": "eu"}
        exposition = (await http.get("/metrics")).text
    assert sample(exposition, 'orders_total{region="eu"}') == 1

    incidents = run(examples("incidents.md")["FastAPI"])
    async with client(incidents) as http:
        first = (await http.post("/hooks/payments-down")).json()
        again = (await http.post("/hooks/payments-down")).json()
    assert (first["new"], again["new"]) == (True, False)
    assert first["incident"] == again["incident"]
    for namespace in (events, metrics, incidents):
        await anyio.to_thread.run_sync(namespace["aegis"].shutdown, 10.0)


def test_the_flask_examples(here: Path) -> None:
    events = run(examples("events.md")["Flask"])
    pipeline: Aegis = events["pipeline"]
    try:
        assert events["app"].test_client().post("/jobs/nightly/failed").text == "noted"
        assert pipeline.force_flush(10)
        [stored] = pipeline.sinks[0].read_events(EventQuery(source="jobs"))  # type: ignore[attr-defined]
        assert (stored.message, stored.level) == ("job nightly failed", "error")
    finally:
        pipeline.shutdown()

    metrics = run(examples("custom-metrics.md")["Flask"])
    pipeline = metrics["pipeline"]
    try:
        client = metrics["app"].test_client()
        assert client.post("/exports").text == "queued"
        assert client.post("/exports").text == "queued"
        assert sample(client.get("/metrics").text, "exports_waiting") == 2
    finally:
        pipeline.shutdown()

    incidents = run(examples("incidents.md")["Flask"])
    pipeline = incidents["pipeline"]
    try:
        client = incidents["app"].test_client()
        first = client.post("/jobs/export/failing").get_json()
        other = client.post("/jobs/cleanup/failing").get_json()
        again = client.post("/jobs/export/failing").get_json()
        assert (first["new"], other["new"], again["new"]) == (True, True, False)
        assert first["incident"] == again["incident"] != other["incident"]
    finally:
        pipeline.shutdown()
