"""Run one printed fuzz case on both paths and show where they differ::

    .venv/bin/python -m tests.fuzz.replay asgi "AsgiCase(method='GET', ...)"

The case is the ``case = ...`` line of a failing fuzz test (``wsgi`` and
``django`` cases likewise). It runs in this process: a crash shows here.
"""

from __future__ import annotations

import importlib
import logging
import sys
from http import HTTPStatus
from pprint import pformat

from .worker import RUNNERS, both_paths


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in RUNNERS:
        print(__doc__, file=sys.stderr)
        return 2
    kind, text = argv
    logging.disable(logging.CRITICAL)
    namespace = {"HTTPStatus": HTTPStatus, "inf": float("inf"), "nan": float("nan")}
    namespace.update(vars(importlib.import_module(RUNNERS[kind])))
    case = eval(text, namespace)  # a case printed by the fuzzer: plain data
    python, compiled = both_paths(kind, case)
    differing = [key for key in python if python[key] != compiled.get(key)]
    for key in differing:
        print(f"{key}:\n  python:   {pformat(python[key])}\n  compiled: {pformat(compiled[key])}")
    print("the same on both paths" if not differing else f"differ: {', '.join(differing)}")
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
