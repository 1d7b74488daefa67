"""Reading a child process's output line by line while it runs.

A thread drains the pipe (so the child can never block on a full pipe) and
tests wait on a condition for the line they need, with a deadline: no sleeps.
"""

from __future__ import annotations

import re
import threading
from typing import IO


class ChildOutput:
    """The lines a child wrote so far, and a way to wait for one."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._eof = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._drain, args=(stream,), daemon=True)
        self._thread.start()

    def _drain(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                with self._changed:
                    self.lines.append(line.rstrip("\n"))
                    self._changed.notify_all()
        finally:
            stream.close()
            with self._changed:
                self._eof = True
                self._changed.notify_all()

    def wait_for(self, pattern: str | re.Pattern[str], timeout: float) -> re.Match[str] | None:
        """The first line matching ``pattern`` (a plain string matches anywhere in a
        line); None at the child's end of output or after ``timeout`` seconds."""
        regex = re.compile(re.escape(pattern)) if isinstance(pattern, str) else pattern

        def found() -> re.Match[str] | None:
            return next((m for line in self.lines if (m := regex.search(line))), None)

        with self._changed:
            self._changed.wait_for(lambda: self._eof or found() is not None, timeout)
            return found()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    @property
    def text(self) -> str:
        with self._changed:
            return "\n".join(self.lines)
