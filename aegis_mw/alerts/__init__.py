"""Alerts over the app's own traffic: rules, window figures, evaluation.

Standard library only, like the core. This is the evaluation side: rules are
declared and checked (:mod:`.rules`), their window figures read from the
stored rollups every worker shares (:mod:`.figures`), and evaluated by a
pure function into instances and transitions (:mod:`.evaluator`); who is
told is decided by the channels, their grouping and the silences, mute
windows and inhibit rules (:mod:`.silences`).
"""

from __future__ import annotations

from .evaluator import (
    FIRING,
    INACTIVE,
    NODATA,
    PENDING,
    RESOLVED,
    Evaluation,
    Instance,
    Transition,
    evaluate,
    render,
)
from .figures import WindowFigures, collect, figures_for, window_of
from .matchers import Matcher, PolicyError
from .rules import (
    INPUTS,
    AlertRule,
    RuleError,
    parse_duration,
    rule_from_mapping,
    rules_from_config,
)
from .silences import InhibitRule, MuteWindow, NotificationPolicy, Silence

__all__ = [
    "FIRING",
    "INACTIVE",
    "INPUTS",
    "NODATA",
    "PENDING",
    "RESOLVED",
    "AlertRule",
    "Evaluation",
    "InhibitRule",
    "Instance",
    "Matcher",
    "MuteWindow",
    "NotificationPolicy",
    "PolicyError",
    "RuleError",
    "Silence",
    "Transition",
    "WindowFigures",
    "collect",
    "evaluate",
    "figures_for",
    "parse_duration",
    "render",
    "rule_from_mapping",
    "rules_from_config",
    "window_of",
]
