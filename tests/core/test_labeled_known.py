"""The per-label totals' fast path (label sets seen before) counts exactly
what the general path counts, whatever the items carry."""

from __future__ import annotations

import math
import random
from enum import IntEnum
from typing import Any

import pytest

import aegis_mw.core.labeled as labeled_module
from aegis_mw.core.labeled import LabeledTotals
from aegis_mw.core.labels import RouteCap
from tests.harness import inbox_item


class Status(IntEnum):
    OK = 200
    TEAPOT = 418


class Text(str):
    pass


def odd_item(chance: random.Random) -> list[Any]:
    """An item from a real request, or with one of the values a raw scope, an
    odd app or a third-party caller of Recorder.offer can put there."""
    start = 1000.0 + chance.random()
    item = inbox_item(
        f"/p/{chance.randrange(50)}",
        method=chance.choice(["GET", "POST", "HEAD", "BREW", Text("GET")]),
        route=chance.choice([f"/r/{chance.randrange(12)}", "/r/{id}", None, Text("/r/{id}")]),
        status=chance.choice([200, 200, 404, 500, 418, 299, 999]),
        start=start,
        ttfb=chance.choice([None, start + 0.001]),
        end=start + chance.choice([0.0005, 0.002, 0.3, 7.0]),
        request_bytes=chance.randrange(3),
        response_bytes=chance.randrange(1000),
    )
    oddity = chance.randrange(12)
    if oddity == 0:
        item[3] = chance.choice([200.0, Status.OK, Status.TEAPOT, True, "200", None])
    elif oddity == 1:
        item[6] = chance.choice([math.nan, math.inf, "late"])
    elif oddity == 2:
        item[1] = ["unhashable"]
    elif oddity == 3:
        item[7] = chance.choice([1.5, "x", None])
    return item


def folded(items: list[list[Any]], known_limit: int, cap: int) -> LabeledTotals:
    totals = LabeledTotals()
    routes = RouteCap(cap)
    previous = labeled_module.KNOWN_LIMIT
    labeled_module.KNOWN_LIMIT = known_limit
    try:
        # In several parts, as the flusher folds them.
        for first in range(0, len(items), 97):
            totals.fold(items[first : first + 97], routes.label)
    finally:
        labeled_module.KNOWN_LIMIT = previous
    return totals


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("cap", [4, 1000])
def test_known_label_sets_count_as_the_general_path_does(seed: int, cap: int) -> None:
    chance = random.Random(seed)
    items = [odd_item(chance) for _ in range(3000)]
    fast = folded(items, labeled_module.KNOWN_LIMIT, cap)
    general = folded(items, 0, cap)

    assert fast._known  # the fast path was taken
    assert not general._known
    assert fast.requests == general.requests
    # repr: exact for floats, and a NaN sum (a NaN duration counts as the
    # general path counts it) equals itself.
    assert repr(fast.series) == repr(general.series)
    assert fast.latency == general.latency
    assert fast.route_overflow == general.route_overflow
    assert sum(fast.requests.values()) > 2000


def test_the_remembered_label_sets_are_bounded() -> None:
    """An app that answers with many statuses cannot grow the memory without bound."""
    totals = LabeledTotals()
    routes = RouteCap(1000)
    items = [inbox_item("/p", route="/r", status=status) for status in range(100, 100 + 3 * 5000)]
    previous = labeled_module.KNOWN_LIMIT
    labeled_module.KNOWN_LIMIT = 5000
    try:
        totals.fold(items, routes.label)
    finally:
        labeled_module.KNOWN_LIMIT = previous
    assert len(totals._known) == 5000
    assert sum(totals.requests.values()) == 15000
