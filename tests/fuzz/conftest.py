"""One worker process per fuzz module (see worker.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import compiled_module

from .worker import Worker


@pytest.fixture(scope="module")
def worker() -> Iterator[Worker]:
    compiled_module()  # skips, or fails in CI, where the extension was not built
    running = Worker()
    yield running
    running.close()
