"""Text the API refuses in any string parameter, on every sink that keeps history:
control characters (a NUL, which PostgreSQL cannot even compare), invalid UTF-8
and lone surrogates, and values over 1024 characters are bad input, a 400 that
names the parameter, never a storage error."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from aegis_mw import Aegis, AegisMiddleware
from aegis_mw.endpoints.api import MAX_TEXT, PARAMETERS, MetricsAPI

#: Percent-escaped as a client sends them, or raw bytes as a server may pass them.
BAD_VALUES = {
    "NUL": b"%00",
    "newline": b"a%0Ab",
    "escape": b"%1B%5B2J",
    "DEL": b"%7F",
    "C1 control": b"%C2%85",
    "encoded surrogate": b"%ED%A0%80",
    "invalid UTF-8": b"%FF",
    "raw invalid UTF-8": b"\xff\xfe",
    "over-long": b"x" * (MAX_TEXT + 1),
}
STRING_PARAMETERS = sorted(
    {(endpoint, name) for endpoint, names in PARAMETERS.items() for name in names}
)


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def sink(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/aegis.db"


@pytest.fixture
def api(sink: str, make_aegis: Callable[..., Aegis]) -> MetricsAPI:
    return MetricsAPI(make_aegis(sink=sink, metrics_registry="none", flush_interval=3600))


@pytest.mark.parametrize("value", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_bad_text_in_any_parameter_is_a_400_naming_it(
    api: MetricsAPI, value: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    for endpoint, parameter in STRING_PARAMETERS:
        response = api.respond(endpoint, parameter.encode() + b"=" + value)
        body = json.loads(response.body)
        assert response.status == 400, (endpoint, parameter, body)
        assert body["error"]["parameter"] == parameter, (endpoint, body)
        assert body["error"]["message"], body
    assert caplog.records == []


def test_a_bad_parameter_name_is_a_400_too(api: MetricsAPI) -> None:
    for name in (b"%00", b"%ED%A0%80", b"\xff", b"x" * 5000):
        response = api.respond("requests", name + b"=1")
        body = json.loads(response.body)
        assert response.status == 400, body
        # The name is shown as valid, short text: JSON with no lone surrogate.
        assert len(body["error"]["parameter"]) <= 64
        body["error"]["parameter"].encode("utf-8")


def test_good_text_still_reads(api: MetricsAPI) -> None:
    """Tabs are not the only text allowed: any printable Unicode, 1024 characters."""
    for route in ("/items/{id}", "/caf\u00e9/\u2603", "/" + "r" * (MAX_TEXT - 1)):
        query = httpx.QueryParams({"route": route, "method": "get", "status": "2xx"})
        response = api.respond("requests", str(query).encode())
        assert response.status == 200, response.body


@pytest.mark.anyio
async def test_a_nul_route_on_postgresql_is_bad_input(
    postgres_url: str, make_aegis: Callable[..., Aegis], caplog: pytest.LogCaptureFixture
) -> None:
    """The report's case, through the middleware: no 503, no traceback."""
    aegis = make_aegis(sink=postgres_url, metrics_registry="none")
    app = AegisMiddleware(Starlette(), aegis=aegis)
    transport = httpx.ASGITransport(app=app)
    caplog.clear()  # what start-up said aside
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        with caplog.at_level(logging.INFO):
            response = await http.get("/api/metrics/requests?route=%00")
    assert response.status_code == 400, response.text
    assert response.json()["error"]["parameter"] == "route"
    assert [r for r in caplog.records if r.name.startswith("aegis_mw")] == []


def test_the_document_rules_out_the_same_text(api: MetricsAPI) -> None:
    """The OpenAPI description stays true: no parameter's schema admits what
    the API refuses (surrogates aside: no JSON document can hold one)."""
    import jsonschema_rs

    document = json.loads(api.respond("openapi.json", b"").body)
    refused = ["\x00", "a\nb", "\x1b[2J", "\x7f", "\x85", "x" * (MAX_TEXT + 1)]
    checked = 0
    for operation in document["paths"].values():
        for parameter in operation.get("get", {}).get("parameters", []):
            schema = jsonschema_rs.Draft202012Validator(parameter["schema"], validate_formats=True)
            for value in refused:
                assert not schema.is_valid(value), (parameter, value)
            checked += 1
    assert checked == sum(len(names) for names in PARAMETERS.values())
