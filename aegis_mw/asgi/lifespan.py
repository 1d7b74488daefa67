"""Lifespan passes through; its startup (re)starts the pipeline and its
shutdown flushes it, off the event loop, before the server hears back."""

from __future__ import annotations

from ..aegis import Aegis
from ..types import ASGIApp, Message, Receive, Scope, Send


async def run_lifespan(
    aegis: Aegis, app: ASGIApp, scope: Scope, receive: Receive, send: Send
) -> None:
    async def receive_wrapper() -> Message:
        message = await receive()
        if message["type"] == "lifespan.startup":
            aegis.asgi_lifespan = True
            aegis.start()
            # Liveness watches this loop from now on (a thread pings it).
            aegis.health.loop_lag.start_here()
        return message

    async def send_wrapper(message: Message) -> None:
        if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
            # anyio runs the blocking flush in a worker thread on asyncio and trio alike.
            import anyio.to_thread

            await anyio.to_thread.run_sync(aegis.shutdown)
        await send(message)

    await app(scope, receive_wrapper, send_wrapper)
