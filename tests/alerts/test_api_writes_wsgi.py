"""The API's writes under WSGI (a plain WSGI app, Django's WSGI and ASGI
handlers): the body read from ``wsgi.input`` (or Django's request) within
its bound, the same roles and cross-site checks as under ASGI."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from aegis_mw import Aegis
from aegis_mw.alerts.store import RULE as RULE_KIND
from aegis_mw.wsgi import AegisWSGIMiddleware
from tests.wsgi.test_middleware import environ_for, serve

from .test_api_writes import ACCESS, ADMIN, API, EDITOR, RULE, VIEWER

JSON = {"CONTENT_TYPE": "application/json", "HTTP_AUTHORIZATION": f"Bearer {EDITOR}"}


def plain(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"app"]


@pytest.fixture
def pipeline(make_aegis: Callable[..., Aegis], tmp_path: Path) -> Aegis:
    return make_aegis(
        sink=f"sqlite:///{tmp_path / 'aegis.db'}", alerts_enabled=True, access=ACCESS,
        metrics_registry="none", alert_interval=3600,
    )  # fmt: skip


def test_wsgi_writes(pipeline: Aegis) -> None:
    app = AegisWSGIMiddleware(plain, aegis=pipeline)
    body = json.dumps(RULE).encode()
    made, answer = serve(app, environ_for(f"{API}/alert-rules", "PUT", body, **JSON))
    assert made.status == "201 Created", answer
    viewer = {**JSON, "HTTP_AUTHORIZATION": f"Bearer {VIEWER}"}
    refused, _ = serve(app, environ_for(f"{API}/alert-rules", "PUT", body, **viewer))
    assert refused.status == "403 Forbidden"
    other = {**JSON, "HTTP_ORIGIN": "https://evil.example", "HTTP_HOST": "127.0.0.1:8000"}
    cross, _ = serve(app, environ_for(f"{API}/alert-rules", "PUT", body, **other))
    assert cross.status == "403 Forbidden"
    form = {**JSON, "CONTENT_TYPE": "application/x-www-form-urlencoded"}
    assert serve(app, environ_for(f"{API}/alert-rules", "PUT", body, **form))[0].status.startswith(
        "415"
    )
    huge = environ_for(f"{API}/alert-rules", "PUT", b"{" + b" " * 70_000 + b"}", **JSON)
    too_large, _ = serve(app, huge)
    assert too_large.status == "413 Content Too Large"
    # A length that lies past the bound is refused before anything is read.
    lying = environ_for(f"{API}/alert-rules", "PUT", b"{}", **JSON, CONTENT_LENGTH="999999999")
    assert serve(app, lying)[0].status.startswith("413") and lying["wsgi.input"].tell() == 0
    gone, _ = serve(
        app, environ_for(f"{API}/alert-rules", "DELETE", QUERY_STRING="name=boom_errors", **JSON)
    )
    assert gone.status == "200 OK"
    assert pipeline.alerts is not None
    assert [a["action"] for a in pipeline.alerts.store.audit(5)] == ["delete", "create"]
    assert pipeline.alerts.store.audit(5)[0]["actor"] == "editor token 2 via api from 10.1.2.3"


@pytest.mark.usefixtures("names")
def test_wsgi_channel_writes_need_the_admin(pipeline: Aegis) -> None:
    app = AegisWSGIMiddleware(plain, aegis=pipeline)
    channel = {"name": "ops", "type": "slack", "url": "https://hooks.example/T0/B0/secret-part"}
    body = json.dumps(channel).encode()
    refused, _ = serve(app, environ_for(f"{API}/alert-channels", "PUT", body, **JSON))
    assert refused.status == "403 Forbidden"
    admin = {**JSON, "HTTP_AUTHORIZATION": f"Bearer {ADMIN}"}
    made, answer = serve(app, environ_for(f"{API}/alert-channels", "PUT", body, **admin))
    assert made.status == "201 Created", answer
    listed, text = serve(app, environ_for(f"{API}/alert-channels", "GET", **admin))
    assert listed.status == "200 OK" and b"secret-part" not in text and b"(hidden)" in text
    gone, _ = serve(
        app, environ_for(f"{API}/alert-channels", "DELETE", QUERY_STRING="name=ops", **admin)
    )
    assert gone.status == "200 OK"


django = pytest.importorskip("django")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.contrib.django_project.settings")
django.setup()


@pytest.fixture
def django_pipeline(pipeline: Aegis) -> Iterator[Aegis]:
    """The Django app's pipeline swapped for ``pipeline`` (each handler built
    below builds Django's middleware chain, and so ours, anew)."""
    from django.apps import apps

    config: Any = apps.get_app_config("aegis_mw")
    saved = config._pipeline
    config._pipeline = pipeline
    try:
        yield pipeline
    finally:
        config._pipeline = saved


@pytest.mark.usefixtures("hot_path")
def test_django_writes_under_wsgi(django_pipeline: Aegis) -> None:
    from django.core.wsgi import get_wsgi_application

    handler = get_wsgi_application()
    body = json.dumps({"matchers": ['alertname="x"'], "duration": "1h", "comment": "c"})
    made, answer = serve(handler, environ_for(f"{API}/silences", "POST", body.encode(), **JSON))
    assert made.status.startswith("201"), answer
    silence = json.loads(answer)["data"]
    assert silence["created_by"].startswith("editor token 2")
    # Django's own CSRF check is for its views: ours answers before any view.
    expired, _ = serve(
        handler,
        environ_for(f"{API}/silences", "DELETE", QUERY_STRING=f"id={silence['id']}", **JSON),
    )
    assert expired.status.startswith("200")


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.usefixtures("hot_path")
async def test_django_writes_under_asgi(anyio_backend: str, django_pipeline: Aegis) -> None:
    from django.test import AsyncClient

    client = AsyncClient()
    answer = await client.put(
        f"{API}/alert-rules", data=json.dumps(RULE), content_type="application/json",
        headers={"authorization": f"Bearer {EDITOR}"},
    )  # fmt: skip
    assert answer.status_code == 201, answer.content
    bad = await client.put(
        f"{API}/alert-rules", data="{", content_type="application/json",
        headers={"authorization": f"Bearer {EDITOR}"},
    )  # fmt: skip
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "body"
    assert django_pipeline.alerts is not None
    assert [r.name for r in django_pipeline.alerts.store.api_items(RULE_KIND)[1]] == ["boom_errors"]


@pytest.mark.parametrize("terminated", [False, True])
def test_wsgi_without_a_length(pipeline: Aegis, terminated: bool) -> None:
    """No Content-Length: the input is read only when the server says it
    ends by itself (PEP 3333: else a read could wait for ever)."""
    app = AegisWSGIMiddleware(plain, aegis=pipeline)
    environ = environ_for(f"{API}/alert-rules", "PUT", **JSON)
    environ["wsgi.input"].write(json.dumps(RULE).encode())
    environ["wsgi.input"].seek(0)
    if terminated:
        environ["wsgi.input_terminated"] = True
    response, body = serve(app, environ)
    if terminated:
        assert response.status == "201 Created", body
    else:
        assert response.status == "400 Bad Request" and b'"field":"body"' in body


def test_wsgi_client_leaving_mid_body_is_a_400(pipeline: Aegis) -> None:
    class Broken:
        def read(self, size: int = -1) -> bytes:
            raise OSError("the client went away")

    app = AegisWSGIMiddleware(plain, aegis=pipeline)
    environ = environ_for(f"{API}/alert-rules", "PUT", **JSON, CONTENT_LENGTH="20")
    environ["wsgi.input"] = Broken()
    response, body = serve(app, environ)
    assert response.status == "400 Bad Request" and b"body_unreadable" in body
