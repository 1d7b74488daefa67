"""Checks and creation shared by the sinks that write a file.

Done when the sink is built, so a path that cannot work is a configuration
error at start (naming the option), not a sink error at the first flush.
Files are created readable by their owner only: records hold client
addresses, paths and error messages.
"""

from __future__ import annotations

import os

from ..core.errors import ConfigError

FILE_MODE = 0o600


def prepare_path(path: str, url: str) -> str:
    """The absolute path for a sink file; its directory exists and is writable."""
    absolute = os.path.abspath(path)
    if os.path.isdir(absolute):
        raise ConfigError("sink", url, "names a directory; give a file path")
    directory = os.path.dirname(absolute)
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            "sink", url, f"its directory {directory} cannot be created ({exc.strerror})"
        ) from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError("sink", url, f"its directory {directory} is not writable")
    if os.path.exists(absolute) and not os.access(absolute, os.R_OK | os.W_OK):
        raise ConfigError("sink", url, f"the file {absolute} is not readable and writable")
    return absolute


def create_private(path: str) -> None:
    """Create ``path`` with owner-only permissions unless it exists already."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return
    os.close(descriptor)
