"""Channels written through the API: what they may hold, and what is shown.

A channel the API writes has the settings an ``alert_channels`` entry has
(see :mod:`.channels`), with three differences, since whoever holds the
admin role then decides where the app's alerts go and what they carry:

- no ``allow_private`` (it would let a channel reach the host's own
  network): the networks the API's channels may reach besides public
  addresses are the ``alert_api_networks`` setting's, checked when the
  channel is written and again at every send;
- no ``ca_file`` and no ``file:`` reference (a file of the server, read by
  a request);
- an ``env:`` reference names a variable starting with ``ALERT_SECRET_``
  (any other could hand the process's own secrets, a database password or
  the settings' own channels in ``AEGIS_ALERT_CHANNELS``, to a receiver the
  writer chose: as a PagerDuty routing key, an SMTP password, a signing
  key).

Secrets (a URL, a signing secret, a routing key, a password) are never
shown: a reference is shown as written (it is a name, not the secret), a
secret given as it is shows as ``"(hidden)"``. The stored settings hold a
secret given as it is in the app's store, readable by whoever reads that
database; references keep it out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from ..core.errors import ConfigError
from .channels import Channel, Delivery, Networks, build_channel, vetted_address

#: The fields of a channel that may hold a secret (a login name is half of one).
SECRET_FIELDS = frozenset({"url", "secret", "routing_key", "password", "username"})
#: The environment variables an API channel's ``env:`` reference may name:
#: outside ``AEGIS_``, where the app's own settings are read from.
ENV_PREFIX = "ALERT_SECRET_"
HIDDEN = "(hidden)"
#: A channel's name: it is a label value and a query parameter.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_REFUSED = {
    "allow_private": "not through the API: list the networks its channels may reach in the "
    "alert_api_networks setting",
    "ca_file": "not through the API (a file of the server): set the channel in the settings",
}


def check_name(name: Any) -> str:
    """A channel's name, checked (ValueError naming what is allowed)."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ValueError(
            "name must be 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    return name


def check_references(settings: Mapping[str, Any], where: str) -> None:
    """ConfigError for a field the API may not set, or a reference it may
    not make (see the module's text)."""
    for key, why in _REFUSED.items():
        if key in settings:
            raise ConfigError(f"{where}.{key}", settings[key], why)
    for key in sorted(SECRET_FIELDS & set(settings)):
        value = settings[key]
        if not isinstance(value, str):
            continue  # the channel's own checks name it
        if value.startswith("file:"):
            raise ConfigError(
                f"{where}.{key}", "(not shown)",
                f"the text itself or env:{ENV_PREFIX}NAME (no file: reference through the API)",
            )  # fmt: skip
        if value.startswith("env:") and not value[4:].startswith(ENV_PREFIX):
            raise ConfigError(
                f"{where}.{key}", "(not shown)",
                f"the text itself or env:{ENV_PREFIX}NAME (a variable of another name may "
                "hold the process's own secrets)",
            )  # fmt: skip


#: What a ConfigError of an API channel names its fields under.
WHERE = "channel"


def refusal(error: ConfigError) -> tuple[str, str]:
    """The field an API channel's ConfigError names, and what it says
    (never a secret's value: its "allowed" part only)."""
    field = error.option.removeprefix(f"{WHERE}.")
    return field, f"{field}: {error.allowed}"


def api_channel(
    name: str, settings: Mapping[str, Any], networks: Networks, where: str = WHERE
) -> Channel:
    """The channel of stored or written settings, checked (ConfigError
    naming ``where.field``); ``networks``: the alert_api_networks setting."""
    fields = {key: value for key, value in settings.items() if key != "name"}
    check_references(fields, where)
    return build_channel(name, fields, where, networks)


def unreachable(channel: Channel, networks: Networks) -> tuple[str, str] | None:
    """(field, why) when the host ``channel`` sends to resolves now to an
    address it may not reach; None when it may, or when the name does not
    resolve now (a passing fault: every send checks again)."""
    url = getattr(channel, "url", None)
    if isinstance(url, str):
        parts = urlsplit(url)
        field, host = "url", parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
    else:
        field, host, port = (
            "host",
            str(getattr(channel, "host", "")),
            int(getattr(channel, "port", 0)),
        )
    try:
        found = vetted_address(host, port, False, f"the channel's {field}", networks)
    except (OSError, UnicodeError):
        return None
    return (field, found.error) if isinstance(found, Delivery) else None


def public_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """A channel's settings as shown (the API's answers, the audit): every
    secret given as it is replaced by ``"(hidden)"``."""
    return {
        key: (HIDDEN if key in SECRET_FIELDS and not _reference(value) else value)
        for key, value in settings.items()
    }


def _reference(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("env:")
