"""``aegis-mw demo``: a FastAPI app with the middleware, synthetic traffic, live figures.

Everything is local: the app listens on 127.0.0.1, a background thread sends
it a mix of fast, slow, failing, streamed and unmatched requests, and every
request lands in a SQLite file you can query afterwards.
"""

from __future__ import annotations

import errno
import http.client
import os
import random
import socket
import sqlite3
import sys
import threading
import time
from typing import Any
from urllib.parse import quote

from .aegis import Aegis

CLIENTS = 4
# (weight, method, path): what the synthetic clients ask for.
TRAFFIC = (
    (30, "GET", "/api/items"),
    (30, "GET", "/api/items/{n}"),
    (10, "POST", "/api/items"),
    (8, "GET", "/api/slow"),
    (5, "GET", "/api/stream"),
    (3, "GET", "/api/fail"),
    (5, "GET", "/api/items/not-a-number"),
    (4, "GET", "/no/such/page/{n}"),
    (5, "GET", "/"),
)
#: Alert rules the demo's traffic sets off: /api/fail always fails, so its
#: error ratio fires once a minute's window holds a few of its requests.
ALERT_RULES = (
    {
        "name": "fail_route_errors", "input": "error_ratio", "operator": ">",
        "threshold": 0.5, "window": "1m", "route": "/api/fail", "min_requests": 3,
        "severity": "critical", "annotations": {"summary": "$route fails $value_percent"},
    },
    {
        "name": "slow_p95", "input": "latency_p95_ms", "operator": ">", "threshold": 10_000,
        "window": "5m", "group_by": ["route"],
    },
)  # fmt: skip


def build_app(aegis: Aegis) -> Any:
    """The demo FastAPI app, instrumented with ``aegis``."""
    try:
        import anyio
        from fastapi import APIRouter, FastAPI, WebSocket
        from fastapi.responses import StreamingResponse
    except ImportError:  # pragma: no cover - depends on the installed extras
        raise ImportError("the demo needs FastAPI: pip install 'aegis_mw[fastapi]'") from None

    from .asgi import AegisMiddleware

    app = FastAPI(title="aegis_mw demo")
    api = APIRouter(prefix="/api")
    items: dict[int, dict[str, Any]] = {n: {"id": n, "name": f"item {n}"} for n in range(1, 51)}

    @app.get("/")
    async def index() -> dict[str, str]:
        return {"service": "aegis_mw demo", "try": "/api/items/1"}

    @api.get("/items")
    async def list_items() -> list[dict[str, Any]]:
        return list(items.values())[:10]

    @api.get("/items/{item_id}")
    async def get_item(item_id: int) -> dict[str, Any]:
        return items.get(item_id, {"id": item_id, "name": "unknown"})

    @api.post("/items", status_code=201)
    async def create_item(item: dict[str, Any]) -> dict[str, Any]:
        number = len(items) + 1
        items[number] = {"id": number, **item}
        return items[number]

    @api.get("/slow")
    async def slow() -> dict[str, float]:
        delay = random.uniform(0.02, 0.25)
        await anyio.sleep(delay)
        return {"slept": delay}

    @api.get("/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> Any:
            for number in range(5):
                await anyio.sleep(0.01)
                yield f"chunk {number}\n".encode()

        return StreamingResponse(chunks(), media_type="text/plain")

    @api.get("/fail")
    async def fail() -> None:
        raise RuntimeError("a deliberate failure for the demo")

    @app.websocket("/ws/echo")
    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        async for text in websocket.iter_text():
            await websocket.send_text(text)

    app.include_router(api)
    app.add_middleware(AegisMiddleware, aegis=aegis)
    return app


def _traffic(host: str, port: int, rate: float, stop: threading.Event) -> None:
    """Send weighted random requests at about ``rate`` per second until ``stop``."""
    weights = [weight for weight, _, _ in TRAFFIC]
    connection = http.client.HTTPConnection(host, port, timeout=10)
    interval = 1.0 / rate
    next_at = time.monotonic()
    while not stop.is_set():
        _, method, path = random.choices(TRAFFIC, weights)[0]
        path = path.replace("{n}", str(random.randint(1, 60)))
        body = b'{"name": "new"}' if method == "POST" else None
        headers = {"content-type": "application/json"} if body else {}
        try:
            connection.request(method, path, body=body, headers=headers)
            connection.getresponse().read()
        except (OSError, http.client.HTTPException):
            connection.close()
            connection = http.client.HTTPConnection(host, port, timeout=10)
        next_at += interval
        # Pacing the load generator, not synchronising anything.
        stop.wait(max(0.0, next_at - time.monotonic()))
    connection.close()


def _report(aegis: Aegis, stop: threading.Event, every: float = 5.0) -> None:
    while not stop.wait(every):
        now = aegis.realtime()
        stored = sum(sink.written for sink in aegis.stats().sinks)
        p95 = f"{now.latency_p95_ms:.1f} ms" if now.latency_p95_ms is not None else "-"
        print(
            f"  {now.total_requests:>6} requests, {now.requests_per_second_10s:5.1f}/s, "
            f"p95 {p95}, errors {now.error_rate:.1%} (last 60 s), {stored} stored",
            flush=True,
        )


def _stored_counts(path: str) -> tuple[int, list[tuple[str, str, int]]]:
    connection = sqlite3.connect(path)
    try:
        total = connection.execute("SELECT COUNT(*) FROM aegis_requests").fetchone()[0]
        by_route = connection.execute(
            "SELECT method, route, COUNT(*) FROM aegis_requests "
            "GROUP BY method, route ORDER BY COUNT(*) DESC LIMIT 8"
        ).fetchall()
    finally:
        connection.close()
    return int(total), by_route


def _listen(host: str, port: int) -> socket.socket:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(128)
    except BaseException:
        listener.close()
        raise
    return listener


def _cannot_listen(host: str, port: int, exc: OSError) -> str:
    """One line for a failed bind: what, where, and what to try."""
    where = f"cannot listen on {host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        in_use = "the address is already in use (another server?)"
        return f"{where}: {in_use}; try --port 0 to pick a free port"
    if exc.errno == errno.EACCES:
        return f"{where}: permission denied (ports below 1024 need privileges); try --port 0"
    return f"{where}: {exc.strerror or exc}; check --host and --port"


def run_demo(
    *, host: str, port: int, db: str, rate: float, duration: float | None, open_page: bool = False
) -> int:
    """Serve the demo app until Ctrl-C (or ``duration``); returns an exit code."""
    try:
        import uvicorn
    except ImportError:  # pragma: no cover - depends on the installed extras
        raise ImportError("the demo needs uvicorn: pip install 'aegis_mw[fastapi]'") from None

    # Bind first, so the traffic thread can connect before uvicorn is up,
    # port 0 can be resolved to the real port for the printout, and an
    # address that cannot be had fails before any file is created.
    try:
        listener = _listen(host, port)
    except OSError as exc:
        print(f"aegis-mw: error: {_cannot_listen(host, port, exc)}", file=sys.stderr)
        return 1
    port = listener.getsockname()[1]
    path = os.path.abspath(db)
    aegis = Aegis(sink=f"sqlite:///{quote(path)}", alert_rules=ALERT_RULES, alert_interval=5)
    app = build_app(aegis)
    # The demo fails on purpose; aegis records those errors, so uvicorn's
    # tracebacks for them would only bury the figures.
    server = uvicorn.Server(uvicorn.Config(app, log_level="critical", lifespan="on"))

    base = f"http://{host}:{port}"
    # The monitoring data is private: the link carries the app's access token
    # (traded for a cookie on the first visit), as the start-up line does.
    token = aegis.access_token.value if aegis.access_token is not None else ""
    dashboard = f"{base}/dashboard" + (f"?token={token}" if token else "")
    print("aegis_mw demo", flush=True)
    print(f"  dashboard  {dashboard}   (live; open it in a browser)")
    print(f"  app        {base}/   (try {base}/api/items/1)")
    print(f"  metrics    http://{host}:{port}/metrics   (Prometheus text format)")
    print(f"  health     http://{host}:{port}/health   (/health/live, /health/ready)")
    print(f"  api        {base}/api/metrics/overview?range=1h")
    if token:
        print(f'             curl -H "Authorization: Bearer {token}" {base}/api/metrics/overview')
    stream = f"ws://{host}:{port}{aegis.settings.ws_path}"
    print(f"  stream     {stream}   (live JSON frames, as the dashboard gets)")
    print(f"  records    {path}  (table aegis_requests)")
    query = "SELECT route, status, COUNT(*) FROM aegis_requests GROUP BY 1, 2"
    print(f'             sqlite3 {db} "{query}"')
    print(f"  traffic    about {rate:g} synthetic requests/s from {CLIENTS} client threads")
    print("  errors     /api/fail raises on purpose: see the error column, not a traceback")
    print(f"  alerts     {base}/api/metrics/alerts   (fail_route_errors fires within a minute)")
    print("  stop       Ctrl-C" + (f" (or after {duration:g} s)" if duration else ""), flush=True)
    if open_page:
        import webbrowser

        webbrowser.open(dashboard)

    stop = threading.Event()
    # Several clients, so slow and streamed endpoints do not hold the rate down.
    workers = [
        threading.Thread(target=_traffic, args=(host, port, rate / CLIENTS, stop), daemon=True)
        for _ in range(CLIENTS)
    ]
    workers.append(threading.Thread(target=_report, args=(aegis, stop), daemon=True))
    for worker in workers:
        worker.start()
    timer = None
    if duration:
        timer = threading.Timer(duration, lambda: setattr(server, "should_exit", True))
        timer.start()
    try:
        server.run(sockets=[listener])
    finally:
        stop.set()
        if timer is not None:
            timer.cancel()
        for worker in workers:
            worker.join(timeout=15)
        aegis.shutdown()
        listener.close()
    total, by_route = _stored_counts(path)
    stats = aegis.stats()
    print(f"\nstored {total} requests in {path}")
    for method, route, count in by_route:
        print(f"  {count:>6}  {method:6} {route}")
    dropped = sum(stats.dropped.values())
    print(f"dropped {dropped}; sink errors {sum(s.errors for s in stats.sinks)}", flush=True)
    return 0
