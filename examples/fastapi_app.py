"""A FastAPI app with aegis_mw: every request lands in aegis.db (SQLite).

Run it:
    uvicorn examples.fastapi_app:app --port 8000
then query:
    sqlite3 aegis.db "SELECT method, route, status, duration_ms FROM aegis_requests"

Options can also come from the environment, e.g. AEGIS_SINK=sqlite:///other.db.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, WebSocket
from fastapi.responses import StreamingResponse

from aegis_mw import AegisMiddleware

app = FastAPI(title="aegis_mw FastAPI example")
items = APIRouter(prefix="/items")


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
# Outermost of your middlewares, so errors raised by the others are seen too.
app.add_middleware(AegisMiddleware, sink="sqlite:///aegis.db")
