"""The runtime's deadline timer (enclave_app/deadline.py) on a real event loop: it ticks the
node at the deadline the node gives, on the host's clock, between the host's own ticks."""

from __future__ import annotations

import asyncio

from charter.enclave_app.deadline import DeadlineTimer

# Bounds the waits below: generous, since the machine is shared; nothing is timed against it.
WAIT_S = 10.0


async def test_the_timer_fires_once_at_the_deadline_with_the_host_clock_extrapolated() -> None:
    loop = asyncio.get_running_loop()
    fired: asyncio.Queue[int] = asyncio.Queue()
    timer = DeadlineTimer(loop, fired.put_nowait)
    timer.host_tick(1_000_000)
    timer.arm(1_000_020)
    timer.arm(1_000_020)  # the same deadline again arms nothing new
    now_ms = await asyncio.wait_for(fired.get(), WAIT_S)
    assert now_ms >= 1_000_020, "never before its deadline on the host's clock"
    assert timer.deadline_ms is None
    await asyncio.sleep(0.05)
    assert fired.empty(), "fired once"


async def test_a_deadline_already_passed_fires_at_the_next_turn() -> None:
    loop = asyncio.get_running_loop()
    fired: list[int] = []
    timer = DeadlineTimer(loop, fired.append)
    timer.host_tick(5_000)
    timer.arm(4_000)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert fired and fired[0] >= 5_000


async def test_disarming_or_rearming_later_replaces_the_armed_deadline() -> None:
    loop = asyncio.get_running_loop()
    fired: asyncio.Queue[int] = asyncio.Queue()
    timer = DeadlineTimer(loop, fired.put_nowait)
    timer.host_tick(0)
    timer.arm(10)
    timer.arm(None)
    assert timer.deadline_ms is None
    timer.arm(30)
    timer.arm(60)
    assert timer.deadline_ms == 60
    now_ms = await asyncio.wait_for(fired.get(), WAIT_S)
    assert now_ms >= 60
    await asyncio.sleep(0.05)
    assert fired.empty(), "the replaced deadlines never fire"


async def test_nothing_is_armed_before_the_first_host_tick() -> None:
    """The host keeps the clock: without a tick the timer cannot place a deadline."""
    loop = asyncio.get_running_loop()
    fired: list[int] = []
    timer = DeadlineTimer(loop, fired.append)
    timer.arm(0)
    assert timer.deadline_ms is None
    assert timer.now_ms() is None
    await asyncio.sleep(0.02)
    assert fired == []


async def test_a_host_tick_resets_the_extrapolated_clock() -> None:
    """The host clock jumped back (reset): the timer's clock follows it."""
    loop = asyncio.get_running_loop()
    timer = DeadlineTimer(loop, lambda _: None)
    timer.host_tick(9_000_000)
    timer.host_tick(1_000)
    now_ms = timer.now_ms()
    assert now_ms is not None and 1_000 <= now_ms < 1_000 + int(WAIT_S * 1000)


async def test_a_late_host_tick_after_arming_delays_the_firing_instead_of_ticking_ahead() -> None:
    """A host tick that arrives late moves the extrapolated clock back; the timer then waits
    for that clock to reach the deadline, so the node is never ticked ahead of the host."""
    loop = asyncio.get_running_loop()
    fired: asyncio.Queue[int] = asyncio.Queue()
    timer = DeadlineTimer(loop, fired.put_nowait)
    timer.host_tick(10_000)
    timer.arm(10_030)
    timer.host_tick(9_960)  # the same moment, told by a tick 40 ms late
    now_ms = await asyncio.wait_for(fired.get(), WAIT_S)
    assert now_ms >= 10_030
    extrapolated = timer.now_ms()
    assert extrapolated is not None and now_ms <= extrapolated, "not ahead of the host clock"
