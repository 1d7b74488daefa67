"""A FastAPI app with custom metrics declared on its pipeline, served by gunicorn in
tests/test_gunicorn_custom_metrics.py. Every answer names the worker (``pid``)
that recorded it, so the test knows each worker's share.

The sink and the flush interval may come from AEGIS_* environment variables.
"""

from __future__ import annotations

import os

from fastapi import FastAPI

from aegis_mw.contrib.fastapi import install

app = FastAPI(title="aegis_mw custom metrics under gunicorn")
# AEGIS_SINK, when set, names the sink (a keyword would win over it).
aegis = install(app, **({} if "AEGIS_SINK" in os.environ else {"sink": "sqlite:///aegis.db"}))

orders = aegis.counter("orders_total", "Orders placed.", labels=("region",))
# The request latency's buckets (none given).
order_seconds = aegis.histogram("order_seconds", "Time to place an order.", labels=("region",))
active_jobs = aegis.gauge("active_jobs", "Jobs running.")  # multiprocess_mode="sum"


# A sync route: FastAPI runs it in its thread pool, so a worker records it from
# several threads.
@app.post("/orders/{region}")
def place_order(region: str, amount: int, seconds: float) -> dict[str, int]:
    orders.labels(region=region).inc(amount)
    order_seconds.labels(region).observe(seconds)
    return {"pid": os.getpid()}


@app.post("/jobs/start")
async def start_job() -> dict[str, int]:
    active_jobs.inc()
    return {"pid": os.getpid()}


@app.post("/jobs/stop")
async def stop_job() -> dict[str, int]:
    active_jobs.dec()
    return {"pid": os.getpid()}


@app.get("/ping")
async def ping() -> dict[str, int]:
    """Records no custom metric."""
    return {"pid": os.getpid()}
