"""The compiled ASGI request path against the Python one, on generated cases.

Every case (``asgi_model.py``) runs on both paths in a worker process; the
messages the server was sent, what the app saw, the exception raised (the
very object), the inbox items, the records, the realtime figures, the drops
and the in-flight count must be equal. Profiles and the long run:
``profiles.py``; known divergences skipped meanwhile: ``known_divergences.py``.
"""

from __future__ import annotations

from hypothesis import event, given, note, reject

from .asgi_model import AsgiCase, asgi_cases
from .known_divergences import known_divergence
from .profiles import FUZZ, TIMEOUT
from .worker import Worker

pytestmark = TIMEOUT


@FUZZ
@given(case=asgi_cases())
def test_compiled_asgi_path_matches_python(worker: Worker, case: AsgiCase) -> None:
    known = known_divergence("asgi", case)
    if known is not None:
        event(f"skipped, known divergence: {known}")
        reject()
    note(f"case = {case!r}")  # (pytest's schemathesis plugin hides hypothesis's own print)
    python, compiled = worker.run("asgi", case)
    assert compiled == python
