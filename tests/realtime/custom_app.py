"""An app with metrics and events of its own, for the dashboard's panels of them; options come
from AEGIS_* variables."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from aegis_mw import Aegis, AegisMiddleware

aegis = Aegis(sink="memory://")
widgets = aegis.counter("widgets_total", "Widgets made.", ("color",))
in_stock = aegis.gauge("widgets_in_stock", "Widgets in stock.")


async def make(request: Request) -> PlainTextResponse:
    widgets.labels(request.path_params["color"]).inc()
    in_stock.inc()
    return PlainTextResponse("made")


app = Starlette(
    routes=[Route("/widgets/{color}", make, methods=["POST"])],
    middleware=[Middleware(AegisMiddleware, aegis=aegis)],
)


async def deployed(request: Request) -> PlainTextResponse:
    version = request.path_params["version"]
    aegis.event(
        f"deployed {version}\nby the pipeline", tags=["deploy"], event_id=f"deploy-{version}"
    )
    return PlainTextResponse("noted")


async def boom(request: Request) -> PlainTextResponse:
    raise RuntimeError("kaput")


def open_incident(request: Request) -> PlainTextResponse:
    # A plain function: Starlette runs it in a worker thread (the store is I/O).
    assert aegis.incidents is not None
    incident, _ = aegis.incidents.open(
        {"title": "checkout errors", "severity": "critical"}, "on-call"
    )
    aegis.incidents.change(incident.incident_id, {"note": "looking"}, "ana")
    # ?notes=N: N more notes, for a timeline longer than a page.
    for index in range(int(request.query_params.get("notes", "0"))):
        aegis.incidents.change(incident.incident_id, {"note": f"more {index}"}, "ana")
    return PlainTextResponse(incident.incident_id)


app.router.routes.extend(
    [
        Route("/deploys/{version}", deployed, methods=["POST"]),
        Route("/boom", boom),
        Route("/incidents/open", open_incident, methods=["POST"]),
    ]
)
