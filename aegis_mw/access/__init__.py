"""Access control for what leaves the process: rules per route group (checked
at start, in ``core/access_rules.py``) and the decision for one request."""

from __future__ import annotations

from ..core.access_rules import GROUPS, AccessRule
from .check import ADMIN, EDITOR, VIEWER, Decision, decide

__all__ = ["ADMIN", "EDITOR", "GROUPS", "VIEWER", "AccessRule", "Decision", "decide"]
