"""A FastAPI app with aegis_mw: every request lands in aegis.db (SQLite), and
/health/ready runs a health check written as a FastAPI dependency.

Run it:
    uvicorn examples.fastapi_app:app --port 8000
then query:
    sqlite3 aegis.db "SELECT method, route, status, duration_ms FROM aegis_requests"
    curl http://127.0.0.1:8000/health/ready

Options can also come from the environment, e.g. AEGIS_SINK=sqlite:///other.db.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, WebSocket
from fastapi.responses import StreamingResponse

from aegis_mw.contrib.fastapi import dependency_check, install

APP_DATABASE = "app.db"

app = FastAPI(title="aegis_mw FastAPI example")
items = APIRouter(prefix="/items")


def get_db() -> Iterator[sqlite3.Connection]:
    """The app's database connection, opened per request and closed after it."""
    # FastAPI runs each half of a sync `yield` dependency in its thread pool, not
    # necessarily on the same thread (hence check_same_thread, as in its tutorial).
    connection = sqlite3.connect(APP_DATABASE, check_same_thread=False)
    try:
        yield connection
    finally:
        connection.close()


@items.get("/{item_id}")
async def read_item(item_id: int) -> dict[str, int]:
    return {"item_id": item_id}


@items.post("/", status_code=201)
async def create_item(item: dict[str, str]) -> dict[str, str]:
    return item


@app.get("/stream")
async def stream() -> StreamingResponse:
    async def numbers():  # type: ignore[no-untyped-def]
        for number in range(3):
            yield f"{number}\n".encode()

    return StreamingResponse(numbers(), media_type="text/plain")


@app.get("/fail")
async def fail() -> None:
    raise RuntimeError("example failure")


@app.websocket("/ws/echo")
async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    async for text in websocket.iter_text():
        await websocket.send_text(text)


app.include_router(items)
# After your other middleware: install() puts aegis_mw outermost, so errors
# raised by the others are seen too.
aegis = install(app, sink="sqlite:///aegis.db")


# The app's own dependency, resolved by FastAPI as for a route (its connection
# closed after the check; app.dependency_overrides apply, as in your tests).
@aegis.health.check("database", timeout=1.0)
@dependency_check(app)
def database(db: Annotated[sqlite3.Connection, Depends(get_db)]) -> dict[str, str]:
    (version,) = db.execute("SELECT sqlite_version()").fetchone()
    return {"sqlite_version": version}
