"""The app's access token: what opens the monitoring data by default.

The JSON API, the dashboard and the stream show request paths, client
addresses and error messages, so they are not open by default: the page and
its API without a rule of their own take the other's rule, or, when neither
has one, this token (as a bearer token, or the cookie the
dashboard's ``?token=`` link is traded for). It is the ``access_token``
option when set; else it is generated once and kept in a file every worker
of the app reads, so a link printed by one worker opens the dashboard
whichever worker answers: ``access_token_file``, by default beside the
SQLite (or JSONL) file the app records into, as ``<file>.token``; with
PostgreSQL (no file, several processes) the working directory's
``aegis.token``; with records that stay in the process (memory, callables),
in memory. If no file can be written the token lives in memory, one per
process, with a warning saying how to share one.

The file is created whole or not at all (written aside, then linked into
place), with mode 0600, so a worker never reads half a token and the first
worker's token is the one every other worker uses.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..core.access_rules import AccessRule
from ..core.settings import AegisSettings

logger = logging.getLogger("aegis_mw")

#: The groups that serve monitoring data; ``websocket`` follows ``dashboard``.
PRIVATE_GROUPS = ("api", "dashboard")
DEFAULT_FILE = "aegis.token"
_VALID = re.compile(r"[A-Za-z0-9._~+/=-]{16,256}")


@dataclass(frozen=True)
class AppToken:
    value: str
    #: Where it comes from: "option", a file's path, or "memory".
    origin: str


def default_file(sinks: Iterable[object]) -> str:
    """Beside the first file the app records into; the working directory's
    ``aegis.token`` for a database shared by processes; "" (a token in
    memory) when records stay in the process (memory, callables)."""
    from ..sinks.history_sql import ReaderBacked

    shared = False
    for sink in sinks:
        path = getattr(sink, "path", None)
        if isinstance(path, str) and path:
            return f"{path}.token"
        shared = shared or isinstance(sink, ReaderBacked)
    return DEFAULT_FILE if shared else ""


def monitoring_access(
    settings: AegisSettings, sinks: Iterable[object]
) -> tuple[AppToken | None, dict[str, AccessRule]]:
    """The app token (None when every private group has a rule or none is
    served) and the access rules with the token's filled in."""
    rules = dict(settings.access)
    served = bool(settings.api_path or settings.dashboard_path or settings.ws_path)
    if not needs_token(rules, served):
        return None, with_defaults(rules, None)
    path = settings.access_token_file or default_file(sinks)
    if settings.access_token or path:
        token = resolve(settings.access_token, path)
    else:
        token = AppToken(secrets.token_urlsafe(24), "memory")
    return token, with_defaults(rules, token)


def resolve(option: str, path: str) -> AppToken:
    """The option's token, else the file's (created when missing)."""
    if option:
        return AppToken(option, "option")
    try:
        return AppToken(_read_or_create(path), os.path.abspath(path))
    except OSError as exc:
        logger.warning(
            "aegis_mw: cannot keep the access token in %s (%s); this process uses its own, "
            "so other workers will not take its links: set AEGIS_ACCESS_TOKEN or "
            "access_token_file",
            path,
            exc,
        )
        return AppToken(secrets.token_urlsafe(24), "memory")


def _read_or_create(path: str) -> str:
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    directory = os.path.dirname(path) or "."
    # A name of its own (mode 0600), so pipelines racing in one process too
    # never write or remove each other's file.
    fd, aside = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=directory)
    try:
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_urlsafe(24) + "\n")
        try:
            os.link(aside, path)  # fails if another worker got there first
        except FileExistsError:
            pass
    finally:
        os.unlink(aside)
    return _read(path)


def _read(path: str) -> str:
    with open(path, encoding="ascii", errors="replace") as file:
        value = file.read().strip()
    if not _VALID.fullmatch(value):
        raise OSError(f"{path} does not hold a token (16 to 256 URL-safe characters)")
    return value


def with_defaults(rules: Mapping[str, AccessRule], token: AppToken | None) -> dict[str, AccessRule]:
    """The user's rules, each private group without one filled in: the page
    and its API go together (the page is useless without its API calls), so
    a rule given for one serves for the other; with none, the token's."""
    merged = dict(rules)
    given = next((rules[group] for group in PRIVATE_GROUPS if group in rules), None)
    if given is None and token is not None:
        given = AccessRule(tokens=(token.value,))
    if given is not None:
        for group in PRIVATE_GROUPS:
            merged.setdefault(group, given)
    return merged


def needs_token(rules: Mapping[str, AccessRule], served: bool) -> bool:
    """Whether the private groups would be served with no rule of the user's."""
    return served and not any(group in rules for group in PRIVATE_GROUPS)
