"""The compiled WSGI request path against the Python one, on generated cases.

Every case (``wsgi_model.py``) runs on both paths in a worker process; the
server's calls (start_response, write, len(), each chunk, close(), every
exception by identity), what the app saw (its iterable's __iter__, __next__
and close calls, its generator's end), the inbox items, the records, the
realtime figures, the drops and the in-flight count must be equal. Profiles and the long run:
``profiles.py``; known divergences skipped meanwhile: ``known_divergences.py``.
"""

from __future__ import annotations

from hypothesis import event, given, note, reject

from .known_divergences import known_divergence
from .profiles import FUZZ, TIMEOUT
from .worker import Worker
from .wsgi_model import WsgiCase, wsgi_cases

pytestmark = TIMEOUT


@FUZZ
@given(case=wsgi_cases())
def test_compiled_wsgi_path_matches_python(worker: Worker, case: WsgiCase) -> None:
    known = known_divergence("wsgi", case)
    if known is not None:
        event(f"skipped, known divergence: {known}")
        reject()
    note(f"case = {case!r}")  # (pytest's schemathesis plugin hides hypothesis's own print)
    python, compiled = worker.run("wsgi", case)
    assert compiled == python
