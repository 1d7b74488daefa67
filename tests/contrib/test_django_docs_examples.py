"""The docs pages' Django examples, run in the tests' Django project: the
events and incidents views called as Django calls them, the custom metrics'
app config made ready; what they recorded read back from the pipeline."""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

import pytest

django = pytest.importorskip("django")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.contrib.django_project.settings")
django.setup()

from django.apps import apps  # noqa: E402
from django.test import RequestFactory  # noqa: E402

from aegis_mw.core.events import EventQuery  # noqa: E402
from tests.test_docs_framework_examples import examples, run, sample  # noqa: E402


def pipeline() -> Any:
    return apps.get_app_config("aegis_mw").pipeline


@pytest.fixture(autouse=True, scope="module")
def _running_for_the_module() -> Any:
    """The app's pipeline lives as long as Django's app registry: started
    again (another module may have shut it down), and shut down after, as a
    process's exit would."""
    pipeline().start()
    yield
    pipeline().shutdown()


def test_the_events_view() -> None:
    view = run(examples("events.md")["Django"])["checkout"]
    request = RequestFactory().get("/checkout/")
    request.user = SimpleNamespace(pk=None)  # an anonymous user's (no auth app here)
    assert view(request).content == b"ok"
    assert pipeline().force_flush(10)
    stored = pipeline().sinks[0].read_events(EventQuery(tags=("shop",)))
    assert [(e.message, e.payload) for e in stored] == [("checkout opened", {"user": None})]


def test_the_incidents_view() -> None:
    incidents = pipeline().incidents
    opened, _ = incidents.open(
        {"title": "job export failing", "severity": "high", "correlation_key": "job:export"},
        actor="scheduler",
    )
    view = run(examples("incidents.md")["Django"])["job_recovered"]
    answer = view(RequestFactory().post("/jobs/export/recovered"), "export")
    assert answer.status_code == 200
    assert answer.content == f'{{"resolved": ["{opened.incident_id}"]}}'.encode()
    resolved = incidents.get(opened.incident_id)
    assert resolved is not None and resolved.status == "resolved"


def test_the_custom_metrics_app_config() -> None:
    namespace = run(examples("custom-metrics.md")["Django"])
    config = namespace["ShopConfig"]("shop", __import__("tests.contrib"))
    config.ready()
    config.query_time.labels("orders").observe(0.012)
    exposition = pipeline().metrics.endpoint.respond("text/plain", "")
    text = exposition.body.decode()
    assert sample(text, 'query_duration_seconds_count{table="orders"}') == 1
