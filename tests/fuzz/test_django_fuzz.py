"""The compiled Django path (sync handlers) against the Python middleware, on
generated cases.

Every case (``django_model.py``) runs on both paths in a worker process; what
the server saw (the response, its status, each chunk, every exception by
identity), what the view chain saw (its stream's end), the inbox items, the
records, the realtime figures, the drops and the in-flight count must be equal. Profiles and the long run:
``profiles.py``; known divergences skipped meanwhile: ``known_divergences.py``.
"""

from __future__ import annotations

import pytest
from hypothesis import event, given, note, reject

from .django_model import DjangoCase, django_cases
from .known_divergences import known_divergence
from .profiles import FUZZ, TIMEOUT
from .worker import Worker

pytest.importorskip("django")
pytestmark = TIMEOUT


@FUZZ
@given(case=django_cases())
def test_compiled_django_path_matches_python(worker: Worker, case: DjangoCase) -> None:
    known = known_divergence("django", case)
    if known is not None:
        event(f"skipped, known divergence: {known}")
        reject()
    note(f"case = {case!r}")  # (pytest's schemathesis plugin hides hypothesis's own print)
    python, compiled = worker.run("django", case)
    assert compiled == python
