"""Label matchers as Alertmanager has them: ``=``, ``!=``, ``=~`` and ``!~``.

A matcher compares one label of an alert; a label the alert lacks is the
empty text, so ``severity=~""`` matches an alert without a severity and
``severity!="critical"`` matches it too. A regular expression is anchored
at both ends, as Alertmanager's ``^(?:value)$``: ``=~"crit"`` does not match
``critical``.

Regular expressions are Python's :mod:`re` in ASCII mode (``\\d``, ``\\w``,
``\\s`` and ``\\b`` are ASCII, as in Go's RE2); what RE2 lacks, and what
would read differently there (backreferences, lookaround, conditionals,
nested sets such as ``[[:alpha:]]``), is refused, so a matcher means the same
here and in an Alertmanager configuration. They are compiled once, when the
matcher is made, and at most :data:`REGEX_LIMIT` characters long.

Example::

    m = matcher_from_text('severity=~"critical|error"')
    matches([m], {"alertname": "checkout_errors", "severity": "error"})  # True
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..core.errors import ConfigError

OPS = ("=", "!=", "=~", "!~")
#: The longest regular expression a matcher takes: this bounds compiling.
REGEX_LIMIT = 1024

#: Label names as the alert rules make them (``rules._LABEL_NAME``).
_LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
# '=~' and '!~' before '=': the longest operator wins (as Alertmanager's parser).
_TEXT_FORM = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!=|!~|=)\s*(.*?)\s*", re.DOTALL)
#: An unquoted value: no space, quote, backslash, comma, brace or operator sign.
_SIMPLE_VALUE = re.compile(r"[^\s\"\\,{}=!~]*")
_NOT_RE2 = (
    ("(?=", "lookahead"), ("(?!", "lookahead"), ("(?<=", "lookbehind"), ("(?<!", "lookbehind"),
    ("(?P=", "backreferences"), ("(?(", "conditionals"),
)  # fmt: skip
_TEXT_ALLOWED = (
    'name="value" (or an unquoted value without spaces, quotes, backslashes, commas, braces, '
    "'=', '!' or '~'), with =, !=, =~ or !~; inside quotes \\\" is a quote, \\\\ a backslash"
)


class PolicyError(ConfigError):
    """A matcher, silence, mute window or inhibit rule is invalid: names
    what it is, the field, the value and what is allowed."""

    def __init__(self, what: str, field_name: str, value: Any, allowed: str) -> None:
        self.what = what
        self.field = field_name
        super().__init__(f"{what} field {field_name!r}", value, allowed)
        self.args = (f"{what}: {field_name} = {value!r} is invalid: {allowed}",)


@dataclass(frozen=True)
class Matcher:
    """One label matcher: ``Matcher("severity", "=~", "critical|error")``."""

    name: str
    op: str
    value: str
    _regex: re.Pattern[str] | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _LABEL_NAME.fullmatch(self.name):
            raise PolicyError(
                "matcher", "name", self.name, "a label name: letters, digits and '_', "
                "not starting with a digit, at most 64 characters",
            )  # fmt: skip
        if self.op not in OPS:
            raise PolicyError(
                f"matcher on {self.name!r}", "op", self.op, f"one of {', '.join(OPS)}"
            )
        if not isinstance(self.value, str):
            raise PolicyError(f"matcher on {self.name!r}", "value", self.value, "a text")
        if self.op in ("=~", "!~"):
            object.__setattr__(self, "_regex", _compile(self.name, self.value))

    def matches(self, value: str) -> bool:
        """Whether a label's value (``""`` for a missing label) matches."""
        if self._regex is None:
            return (value == self.value) == (self.op == "=")
        return (self._regex.fullmatch(value) is not None) == (self.op == "=~")

    def __str__(self) -> str:
        """The text form :func:`matcher_from_text` reads: ``name="value"``."""
        escaped = self.value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'{self.name}{self.op}"{escaped}"'


def _compile(name: str, pattern: str) -> re.Pattern[str]:
    what = f"matcher on {name!r}"
    known = _COMPILED.get(pattern)
    if known is not None:
        return known
    compiled = _checked(what, pattern)
    if len(_COMPILED) < _COMPILED_LIMIT:
        _COMPILED[pattern] = compiled
    return compiled


#: Patterns compiled and checked already: the alert thread reads the stored
#: silences every tick, and the check below touches the process's warning
#: filters (not safe with other threads warning at that moment): it runs
#: once a pattern, not once a tick.
_COMPILED: dict[str, re.Pattern[str]] = {}
_COMPILED_LIMIT = 4096


def _checked(what: str, pattern: str) -> re.Pattern[str]:
    if len(pattern) > REGEX_LIMIT:
        raise PolicyError(
            what, "value", pattern[:40] + "...", f"a regular expression of at most {REGEX_LIMIT} "
            f"characters (this one has {len(pattern)})",
        )  # fmt: skip
    lacking = _not_re2(pattern)
    if lacking:
        raise PolicyError(
            what, "value", pattern, f"a regular expression without {lacking} "
            "(Alertmanager's RE2 has none)",
        )  # fmt: skip
    try:
        # Python warns where it reads a pattern differently than it will
        # (nested sets); such a pattern is refused rather than half-understood.
        # catch_warnings changes process-wide state: once a pattern (above).
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            # Compiled alone and used with fullmatch(): Alertmanager's
            # ^(?:pattern)$, and 'a)|(b' cannot escape the group.
            return re.compile(pattern, re.ASCII)
    except (re.error, Warning) as exc:
        raise PolicyError(what, "value", pattern, f"a valid regular expression ({exc})") from None


def _not_re2(pattern: str) -> str:
    """What RE2 lacks that the pattern uses, or ``""``."""
    index, in_set = 0, False
    while index < len(pattern):
        char = pattern[index]
        if char == "\\":
            following = pattern[index + 1 : index + 2]
            if not in_set and following in tuple("123456789"):
                return "backreferences"
            index += 2
            continue
        if in_set:
            if char == "[":
                return "nested sets such as [[:alpha:]] (write [a-zA-Z])"
            in_set = char != "]"
        elif char == "[":
            in_set = True
            index += 1
            # ']' first in a set ('[]a]', '[^]a]') is a literal.
            index += pattern.startswith("^", index)
            index += pattern.startswith("]", index)
            continue
        else:
            for opener, name in _NOT_RE2:
                if pattern.startswith(opener, index):
                    return name
        index += 1
    return ""


def matcher_from_text(text: str) -> Matcher:
    """A matcher from Alertmanager's text form: ``name="value"``,
    ``name!="value"``, ``name=~"regex"``, ``name!~"regex"``; quotes are
    optional around a simple value (``alertname=checkout_errors``), and
    inside them ``\\"`` is a quote, ``\\\\`` a backslash and ``\\n`` a newline
    (any other backslash is kept: ``code=~"5\\d\\d"``)."""
    form = _TEXT_FORM.fullmatch(text) if isinstance(text, str) else None
    if form is None:
        raise PolicyError("matcher", "text", text, _TEXT_ALLOWED)
    name, op, raw = form.groups()
    if not raw.startswith('"'):
        if not _SIMPLE_VALUE.fullmatch(raw):
            raise PolicyError("matcher", "text", text, _TEXT_ALLOWED)
        return Matcher(name, op, raw)
    value: list[str] = []
    index, end = 1, len(raw)
    while index < end:
        char = raw[index]
        if char == "\\" and index + 1 < end:
            following = raw[index + 1]
            value.append({"n": "\n", '"': '"', "\\": "\\"}.get(following, "\\" + following))
            index += 2
            continue
        if char == '"':
            break
        value.append(char)
        index += 1
    if index != end - 1:  # an unescaped quote, and only at the end
        raise PolicyError("matcher", "text", text, _TEXT_ALLOWED)
    return Matcher(name, op, "".join(value))


def matches(matchers: Iterable[Matcher], labels: Mapping[str, str]) -> bool:
    """Whether every matcher matches the labels (a missing label is ``""``);
    true for no matchers."""
    return all(m.matches(labels.get(m.name, "")) for m in matchers)
