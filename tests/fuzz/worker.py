"""Each fuzz case runs in a child process, so a crash is a failure, not a dead run.

The compiled path is C: a case that makes it crash (SIGSEGV, an abort from a
sanitizer) must come back as a failing example that hypothesis can shrink and
print, and the next case must run on. ``Worker`` keeps one child
(``python -m tests.fuzz.worker``) that runs cases, both paths each, and
answers their outcomes; when it dies, the case in hand fails with the signal
and the end of the child's stderr (a sanitizer's report, a faulthandler
traceback), and the next case starts a new child.

Set ``AEGIS_FUZZ_IN_PROCESS=1`` to run cases in the test process instead
(quicker to debug with a breakpoint; a crash then kills pytest).
"""

from __future__ import annotations

import faulthandler
import gc
import importlib
import logging
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[2]
#: The module that runs each kind of case, as ``both_paths(case)``.
RUNNERS = {
    "asgi": "tests.fuzz.asgi_model",
    "wsgi": "tests.fuzz.wsgi_model",
    "django": "tests.fuzz.django_model",
}
#: A case that takes longer has hung (each takes milliseconds).
CASE_TIMEOUT = float(os.environ.get("AEGIS_FUZZ_CASE_TIMEOUT", "60"))
_HEADER = struct.Struct("!Q")


class WorkerDied(AssertionError):
    """The child process died running a case: the compiled path crashed."""


def both_paths(kind: str, case: Any) -> tuple[Any, Any]:
    """(python outcome, compiled outcome) of one case, in this process."""
    module = importlib.import_module(RUNNERS[kind])
    # The cyclic collector runs only where a case runs it (its end): run by
    # allocation counts, it would end cycles at a different point on each path.
    enabled = gc.isenabled()
    gc.disable()
    try:
        outcomes: tuple[Any, Any] = module.both_paths(case)
    finally:
        if enabled:
            gc.enable()
    return outcomes


class Worker:
    """A child process that runs cases; started again after it dies."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self.in_process = os.environ.get("AEGIS_FUZZ_IN_PROCESS") == "1"

    def run(self, kind: str, case: Any) -> tuple[Any, Any]:
        if self.in_process:
            return both_paths(kind, case)
        process = self._process if self._process is not None else self._start()
        assert process.stdin is not None and process.stdout is not None
        payload = pickle.dumps((kind, case))
        try:
            process.stdin.write(_HEADER.pack(len(payload)) + payload)
            process.stdin.flush()
            header = _read(process.stdout, _HEADER.size)
            answer = _read(process.stdout, _HEADER.unpack(header)[0])
        except (OSError, EOFError, TimeoutError) as exc:
            raise self._died(exc) from None
        status, value = pickle.loads(answer)
        if status == "error":  # the harness itself failed: not a divergence, a bug here
            raise RuntimeError(f"the fuzz worker failed running {case!r}:\n{value}")
        result: tuple[Any, Any] = value
        return result

    def close(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            assert process.stdin is not None and process.stdout is not None
            process.stdin.close()
            process.stdout.close()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def _start(self) -> subprocess.Popen[bytes]:
        self.close()
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tests.fuzz.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=ROOT,
            env=env,
        )
        return self._process

    def _died(self, cause: BaseException) -> WorkerDied:
        process, self._process = self._process, None
        assert process is not None
        if isinstance(cause, TimeoutError):
            process.kill()
        code = process.wait()
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                pipe.close()
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        tail = ""
        if self._stderr is not None:
            self._stderr.seek(0)
            tail = self._stderr.read().decode(errors="replace")[-6000:]
        what = "hung" if isinstance(cause, TimeoutError) else "died"
        return WorkerDied(f"the fuzz worker {what} ({how}); its stderr ends:\n{tail}")


def _read(stream: IO[bytes], size: int) -> bytes:
    data = b""
    while len(data) < size:
        ready, _, _ = select.select([stream], [], [], CASE_TIMEOUT)
        if not ready:
            raise TimeoutError
        part = os.read(stream.fileno(), size - len(data))
        if not part:
            raise EOFError
        data += part
    return data


def main() -> None:
    """The child: read cases from stdin, answer outcomes on stdout, until EOF."""
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever the code under test prints goes to stderr
    faulthandler.enable()
    # The pipeline logs a flusher failure per odd case: its stderr is kept for a
    # crash report, which this would bury.
    logging.disable(logging.CRITICAL)
    cases = sys.stdin.buffer
    while header := cases.read(_HEADER.size):
        kind, case = pickle.loads(cases.read(_HEADER.unpack(header)[0]))
        try:
            answer = ("ok", both_paths(kind, case))
        except BaseException:
            answer = ("error", traceback.format_exc())
        # Each case runs the cyclic collector (a coroutine never awaited warns
        # only then): what outlives a case (modules, caches) is frozen out of its way.
        gc.freeze()
        payload = pickle.dumps(answer)
        answers.write(_HEADER.pack(len(payload)) + payload)
        answers.flush()


if __name__ == "__main__":
    main()
