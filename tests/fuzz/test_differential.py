"""The compiled request paths against the Python ones, on generated cases.

Every case runs on both paths in a worker process (``worker.py``), and
everything either path shows must be equal:

- ASGI (``asgi_model.py``): the messages the server was sent, what the app saw,
  the exception raised (the very object), the inbox items, the records, the
  realtime figures, the drops, the in-flight count and the warnings;
- WSGI (``wsgi_model.py``): the server's calls (start_response, write, len(),
  each chunk, close(), every exception by identity), what the app saw (its
  iterable's __iter__, __next__ and close calls, its generator's end) and the
  same pipeline figures;
- Django (``django_model.py``): what the server saw (the response, its status,
  each chunk, every exception by identity), the stream's end and the same
  pipeline figures.

Profiles and the long run: ``profiles.py``; known divergences skipped
meanwhile: ``known_divergences.py``; one case replayed: ``replay.py``.
"""

from __future__ import annotations

from typing import Any

from hypothesis import event, given, note, reject

from .asgi_model import AsgiCase, asgi_cases
from .django_model import DjangoCase, django_cases
from .known_divergences import known_divergence
from .profiles import FUZZ, TIMEOUT
from .worker import Worker
from .wsgi_model import WsgiCase, wsgi_cases

pytestmark = TIMEOUT


def check(worker: Worker, kind: str, case: Any) -> None:
    known = known_divergence(kind, case)
    if known is not None:
        event(f"skipped, known divergence: {known}")
        reject()
    note(f"case = {case!r}")  # (pytest's schemathesis plugin hides hypothesis's own print)
    python, compiled = worker.run(kind, case)
    assert compiled == python


@FUZZ
@given(case=asgi_cases())
def test_compiled_asgi_path_matches_python(worker: Worker, case: AsgiCase) -> None:
    check(worker, "asgi", case)


@FUZZ
@given(case=wsgi_cases())
def test_compiled_wsgi_path_matches_python(worker: Worker, case: WsgiCase) -> None:
    check(worker, "wsgi", case)


@FUZZ
@given(case=django_cases())
def test_compiled_django_path_matches_python(worker: Worker, case: DjangoCase) -> None:
    check(worker, "django", case)
