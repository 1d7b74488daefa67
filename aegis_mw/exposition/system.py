"""Machine-wide figures for ``/metrics`` (the ``system`` extra: psutil).

Process metrics (``process_*``: CPU time, resident memory, open file
descriptors) come from prometheus-client's default registry, shown after ours;
these are the machine's: CPU use, memory, and the disk holding a configured
path. Read at scrape time, off the event loop.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ..core.errors import ConfigError


@dataclass(frozen=True)
class SystemReading:
    cpu_ratio: float
    memory: dict[str, int]  # total, available, used
    disk_path: str
    disk: dict[str, int]  # total, used, free


class SystemMetrics:
    """Reads the machine through psutil; built only when ``metrics_system`` is on."""

    def __init__(self, disk_path: str) -> None:
        try:
            import psutil
        except ImportError:
            raise ImportError(
                "metrics_system needs psutil: pip install 'aegis_mw[system]'"
            ) from None
        if not os.path.exists(disk_path):
            raise ConfigError(
                "metrics_disk_path",
                disk_path,
                "an existing path whose file system /metrics reports",
            )
        self._psutil: Any = psutil
        self.disk_path = disk_path
        psutil.cpu_percent(interval=None)  # the first reading only starts the measurement

    def read(self) -> SystemReading:
        psutil = self._psutil
        memory = psutil.virtual_memory()
        try:
            usage = psutil.disk_usage(self.disk_path)
            disk = {"total": usage.total, "used": usage.used, "free": usage.free}
        except OSError:
            # The path went away (unmounted, removed) after start: no disk
            # series this scrape, rather than no /metrics at all.
            disk = {}
        return SystemReading(
            cpu_ratio=psutil.cpu_percent(interval=None) / 100.0,
            memory={"total": memory.total, "available": memory.available, "used": memory.used},
            disk_path=self.disk_path,
            disk=disk,
        )
