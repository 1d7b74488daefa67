"""Each worker's live figures in the shared metrics directory, and their sum.

Beside its metrics snapshot (:mod:`.multiprocess`), each worker writes its
live figures (:mod:`aegis_mw.core.live_share`) after every flush cycle to a
file of its own, ``aegis-live_<pid>_<nonce>.json``, replaced atomically: a
file of their own so that a scrape of ``/metrics`` never parses them and a
live read never parses the per-label counters (at a thousand routes those
are ten times the size). The name is outside ``aegis_*.json``, so a worker
of an earlier version, which knows only its snapshots, leaves them alone.

A dead worker's live file is folded into ``aegis-live_archive.json`` by
the next living worker to publish, under the lock readers share
(``aegis.lock``, as the snapshots' archive), so its requests still count
and nothing counts twice; its in-flight requests and WebSockets no longer.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..core.live_share import Peers
from .multiprocess import SnapshotFiles, _pid_of, _process_exists

logger = logging.getLogger("aegis_mw.metrics")

PREFIX = "aegis-live_"
ARCHIVE = f"{PREFIX}archive.json"


class LiveFiles:
    """This process's live file, and the sum of the others'."""

    def __init__(self, snapshots: SnapshotFiles, clock: Callable[[], float]) -> None:
        self.snapshots = snapshots
        self.directory = snapshots.directory
        #: The clock the rings' seconds come from (the archive ages them by it).
        self.clock = clock
        self._pid = 0
        self._path = self.directory

    @property
    def own_path(self) -> Path:
        """This process's file; a forked child gets a name of its own."""
        pid = os.getpid()
        if pid != self._pid:
            self._pid = pid
            self._path = self.directory / f"{PREFIX}{pid}_{os.urandom(4).hex()}.json"
        return self._path

    def publish(self, data: dict[str, Any]) -> None:
        """Replace this process's file (flusher thread), then archive dead ones."""
        path = self.own_path
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(data, allow_nan=False), "utf-8")
        os.replace(temporary, path)
        self._archive_dead()

    def _others(self) -> Iterator[Path]:
        own = self.own_path
        for path in sorted(self.directory.glob(f"{PREFIX}*_*.json")):
            if path != own and path.name != ARCHIVE:
                yield path

    def state(self) -> tuple[tuple[str, int, int, int, bool], ...]:
        """What :meth:`read` would read: each file's name, inode, time and
        size (each publication is a new file), and whether its process lives."""
        found = []
        for path in [*self._others(), self.directory / ARCHIVE]:
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            alive = path.name != ARCHIVE and _process_exists(_pid_of(path))
            found.append((path.name, stat.st_ino, stat.st_mtime_ns, stat.st_size, alive))
        return tuple(found)

    def read(self) -> Peers:
        """Every other process's latest live figures and the archive, added up."""
        peers = Peers()
        with self.snapshots._locked(fcntl.LOCK_SH):
            for path in [*self._others(), self.directory / ARCHIVE]:
                data = _read(path)
                if data is None:
                    continue
                live = path.name != ARCHIVE and _process_exists(_pid_of(path))
                if not peers.add(data, live=live):
                    logger.warning("aegis_mw: %s is not a live figures file; left out", path)
        return peers

    def _archive_dead(self) -> None:
        dead = [path for path in self._others() if not _process_exists(_pid_of(path))]
        for leftover in self.directory.glob(f"{PREFIX}*_*.tmp"):
            if not _process_exists(_pid_of(leftover)):
                leftover.unlink(missing_ok=True)
        if not dead:
            return
        with self.snapshots._locked(fcntl.LOCK_EX):
            archive_path = self.directory / ARCHIVE
            peers = Peers()
            for path in [archive_path, *dead]:
                data = _read(path)
                if data is not None:
                    peers.add(data, live=False)  # a damaged one is removed all the same
            temporary = archive_path.with_suffix(".tmp")
            published = peers.published(int(self.clock()))
            temporary.write_text(json.dumps(published, allow_nan=False), "utf-8")
            os.replace(temporary, archive_path)
            for path in dead:
                path.unlink(missing_ok=True)


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None  # replaced or archived meanwhile
    except (OSError, ValueError):
        logger.warning("aegis_mw: ignoring unreadable live figures file %s", path)
        return None
