"""Running one function in several spawned processes released together."""

from __future__ import annotations

import multiprocessing
import queue
from collections.abc import Callable
from typing import Any

import pytest


def run_together(
    target: Callable[..., None], count: int, *args: Any, timeout: float = 90.0
) -> tuple[list[Any], list[int | None]]:
    """Start ``count`` spawned processes running ``target(*args, index, barrier, results)``
    and collect one report each from ``results``. Every process is joined (or killed)
    before returning; a process that never reports fails the test.

    Returns the reports (in arrival order) and the exit codes.
    """
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(count)
    results = context.Queue()
    processes = [
        context.Process(target=target, args=(*args, index, barrier, results))
        for index in range(count)
    ]
    for process in processes:
        process.start()
    reports: list[Any] = []
    try:
        for _ in range(count):
            reports.append(results.get(timeout=timeout))
    except queue.Empty:
        pytest.fail(f"only {len(reports)} of {count} processes reported: {reports}")
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
                process.join(timeout=10)
        results.close()
        results.join_thread()
    return reports, [process.exitcode for process in processes]
