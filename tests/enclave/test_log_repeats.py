"""RepeatLimit (charter.enclave_app.interface.logs): the lines outsiders can cause are held
to a burst per window and kind; the node's own lines are never held back."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator

import pytest

from charter.enclave_app.interface.logs import REPEATS_LIMITED, RepeatLimit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


Logged = tuple[logging.Logger, io.StringIO, io.StringIO, RepeatLimit, Clock]


@pytest.fixture
def logged() -> Iterator[Logged]:
    """A logger with two handlers (as the host has: stderr and a file) sharing one limit."""
    clock = Clock()
    limit = RepeatLimit(burst=3, window_s=10.0, kinds_max=4, clock=clock)
    logger = logging.getLogger("test.repeats")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    first, second = io.StringIO(), io.StringIO()
    handlers = [logging.StreamHandler(first), logging.StreamHandler(second)]
    for handler in handlers:
        handler.addFilter(limit)
        logger.addHandler(handler)
    try:
        yield logger, first, second, limit, clock
    finally:
        for handler in handlers:
            logger.removeHandler(handler)


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_marked_lines_past_the_burst_are_held_back_and_counted(logged: Logged) -> None:
    logger, first, second, limit, _ = logged
    for k in range(1000):
        logger.warning("event=dropped n=%d", k, extra=REPEATS_LIMITED)
    assert lines(first) == ["event=dropped n=0", "event=dropped n=1", "event=dropped n=2"]
    assert lines(second) == lines(first)  # each record judged once, for both handlers
    assert limit.suppressed == 997


def test_after_its_window_a_kind_logs_again_and_says_how_many_were_held(logged: Logged) -> None:
    logger, first, _, _, clock = logged
    for k in range(10):
        logger.warning("event=dropped n=%d", k, extra=REPEATS_LIMITED)
    clock.now += 9.9
    logger.warning("event=dropped n=%d", 10, extra=REPEATS_LIMITED)
    assert len(lines(first)) == 3  # still the same window
    clock.now += 0.1
    logger.warning("event=dropped n=%d", 11, extra=REPEATS_LIMITED)
    logger.warning("event=dropped n=%d", 12, extra=REPEATS_LIMITED)
    assert lines(first)[3:] == ["event=dropped n=11 repeats_suppressed=8", "event=dropped n=12"]


def test_each_kind_has_its_own_burst(logged: Logged) -> None:
    logger, first, _, _, _ = logged
    for _ in range(5):
        logger.warning("event=a", extra=REPEATS_LIMITED)
        logger.info("event=a", extra=REPEATS_LIMITED)  # another level: another kind
        logger.warning("event=b reason=%s", "x", extra=REPEATS_LIMITED)
    got = lines(first)
    assert got.count("event=a") == 6
    assert got.count("event=b reason=x") == 3


def test_unmarked_lines_are_never_held_back(logged: Logged) -> None:
    logger, first, _, limit, _ = logged
    for k in range(500):
        logger.warning("event=role_changed n=%d", k)
    assert len(lines(first)) == 500
    assert limit.suppressed == 0


def test_the_kinds_remembered_are_bounded(logged: Logged) -> None:
    logger, first, _, limit, _ = logged
    for k in range(50):
        logger.warning(f"event=kind{k}", extra=REPEATS_LIMITED)
    assert len(limit._kinds) == 4
    assert len(lines(first)) == 50


async def test_a_window_that_ends_with_lines_held_back_is_reported_once_it_ends() -> None:
    """A flood that stops leaves no later line to carry its count: the filter reports it by
    itself when the window ends, from the event loop, and the next line carries no count."""
    limit = RepeatLimit(burst=2, window_s=0.05)
    logger = logging.getLogger("test.repeats.report")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(limit)
    logger.addHandler(handler)
    try:
        for k in range(9):
            logger.warning("event=dropped n=%d", k, extra=REPEATS_LIMITED)
        assert lines(out) == ["event=dropped n=0", "event=dropped n=1"]
        await asyncio.sleep(0.15)
        assert lines(out)[2:] == [
            "event=log_lines_held count=7 window_s=0.05 of='event=dropped n=%d'"
        ]
        logger.warning("event=dropped n=%d", 9, extra=REPEATS_LIMITED)
        assert lines(out)[-1] == "event=dropped n=9"
    finally:
        logger.removeHandler(handler)
