"""WSGI apps that hand back, as their body, the start_response they were given.

A bug of the app's, which must never become a crash of the worker: on the
Python path, iterating a function raises TypeError, recorded like any error
of the body. Each scenario runs both paths in a fresh interpreter (this file
run as a module), so a crash of the compiled path fails the test instead of
ending the test run; the child reports both outcomes and the test compares
them. The only difference allowed is the name of the start_response's type in
the TypeError's text: a Python function on one path, the compiled path's own
callable on the other.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aegis_mw import Aegis
from tests.conftest import compiled_module
from tests.wsgi.test_compiled import App, Ctx, Outcome, Scenario, outcome

#: The compiled start_response's type, as TypeErrors name it.
COMPILED_START_RESPONSE = "aegis_mw._hotpath.StartResponse"
ROOT = Path(__file__).resolve().parents[2]


def _returns_its_start_response(ctx: Ctx) -> App:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [])
        return start_response

    return app


def _returns_it_uncalled(ctx: Ctx) -> App:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        return start_response

    return app


class HandsBack:
    """An iterable whose __iter__ returns the app's start_response."""

    def __init__(self, start_response: Any) -> None:
        self.start_response = start_response

    def __iter__(self) -> Iterator[bytes]:
        return self.start_response  # type: ignore[no-any-return]


def _iter_returns_its_start_response(ctx: Ctx) -> App:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [])
        return HandsBack(start_response)

    return app


def _generator_yields_from_its_start_response(ctx: Ctx) -> App:
    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"first"
        yield from start_response

    return app


MISUSES: dict[str, Scenario] = {
    "returns-its-start-response": Scenario(_returns_its_start_response),
    "returns-it-uncalled": Scenario(_returns_it_uncalled),
    "iter-returns-its-start-response": Scenario(_iter_returns_its_start_response),
    "generator-yields-from-its-start-response": Scenario(_generator_yields_from_its_start_response),
}


def _named_alike(found: Outcome) -> str:
    return repr(found).replace(COMPILED_START_RESPONSE, "function")


def compare(name: str) -> dict[str, str]:
    """Both paths' outcomes of one scenario (run in the child)."""
    created: list[Aegis] = []

    def make_aegis(**options: Any) -> Aegis:
        aegis = Aegis(**{"sink": "memory://", "environ": {}, **options})
        created.append(aegis)
        return aegis

    try:
        with tempfile.TemporaryDirectory() as files:
            return {
                path: _named_alike(outcome(MISUSES[name], make_aegis, Path(files), compiled))
                for path, compiled in (("python", False), ("compiled", True))
            }
    finally:
        for aegis in created:
            aegis.shutdown(timeout=5)


@pytest.mark.parametrize("name", sorted(MISUSES))
def test_an_app_handing_back_its_start_response_gets_a_type_error(name: str) -> None:
    compiled_module()
    child = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-m", "tests.wsgi.test_app_misuse", name],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert child.returncode == 0, f"the child ended with {child.returncode}:\n{child.stderr}"
    found = json.loads(child.stdout.splitlines()[-1])
    assert found["compiled"] == found["python"]
    assert re.search(r"error=[\"']TypeError: ", found["python"])
    assert "in_flight=0" in found["python"]


if __name__ == "__main__":
    print(json.dumps(compare(sys.argv[1])))
