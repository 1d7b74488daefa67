"""What any text a user gives us (an event's, an incident's) may hold."""

from __future__ import annotations

import re
from typing import Any

#: C0 and C1 controls and DEL: never in a name, a tag or an id.
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
#: The same but tab and newline: text that may have lines.
CONTROL_IN_TEXT = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def text_problem(
    value: Any, limit: int, *, lines: bool = False, empty: bool = False, blank: bool = True
) -> str | None:
    """What is wrong with ``value`` as text of at most ``limit`` characters
    (``lines``: tabs and newlines allowed; ``empty``: "" allowed; ``blank``:
    only spaces allowed when not empty), or None."""
    if not isinstance(value, str):
        return f"must be text, not {type(value).__name__}"
    if not empty and not (value if blank else value.strip()):
        return "may not be empty"
    if len(value) > limit:
        return f"may be at most {limit} characters"
    if (CONTROL_IN_TEXT if lines else CONTROL).search(value):
        return "may not hold control characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode (no lone surrogates)"
    return None
