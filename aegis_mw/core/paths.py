"""Which request paths the middleware leaves alone (its own routes, user globs)."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable
from typing import Any

_GLOB_CHARS = frozenset("*?[")


class PathFilter:
    """Literal paths in a frozenset (one hash lookup per request); glob patterns
    folded into one compiled regex, consulted only when there are any.
    """

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        self.patterns: tuple[str, ...] = ()
        self.literal: frozenset[str] = frozenset()
        self.match: Callable[[str], object] | None = None
        #: ``[literal, match]`` again, for the compiled request path: it reads
        #: them from this list (replaced in place, in one step) without an
        #: attribute lookup.
        self.current: list[Any] = [self.literal, self.match]
        self.add(*patterns)

    def add(self, *patterns: str) -> None:
        """Exclude more paths; takes effect for the next request."""
        self.patterns = tuple(dict.fromkeys((*self.patterns, *patterns)))
        globs = [p for p in self.patterns if _GLOB_CHARS & set(p)]
        # Publish the regex before the literal set grows so a concurrent
        # request never sees a half-built filter.
        self.match = (
            re.compile("|".join(fnmatch.translate(g) for g in globs)).match if globs else None
        )
        self.literal = frozenset(p for p in self.patterns if not _GLOB_CHARS & set(p))
        self.current[:] = (self.literal, self.match)

    def discard(self, *patterns: str) -> None:
        """Record these paths again (an app's own route where ours was)."""
        kept = tuple(p for p in self.patterns if p not in patterns)
        self.patterns = ()
        self.add(*kept)

    def excluded(self, path: str) -> bool:
        return path in self.literal or (self.match is not None and self.match(path) is not None)
