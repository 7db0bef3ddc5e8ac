"""The shared 20 ms media clock (`server/media/leg_driver.py` `MediaClock`) while no room mixes:
it does not wake every frame, yet checks the legs' timeouts every second, and a room that starts
mixing brings it back to the 20 ms grid at once (issue 18: at 50 relayed calls its 50 wake-ups a
second were half of the event loop's work).

Real `MediaService`s, legs and phones on loopback (tests/server/test_call_media.py's harness)."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from sipbridge import sdp
from sipbridge.server.media.leg_driver import CATCH_UP, FRAME_S
from tests.harness import eventually
from tests.server.test_call_media import Harness, pcmu, settle

pytestmark = pytest.mark.timeout(30)


def runs(media: Harness) -> int:
    """The clock's ticks that ran (woke the loop), as opposed to those it passed idle."""
    clock = media.svc.clock
    return clock.ticks - clock.idle


async def test_no_wake_up_per_frame_while_no_room_mixes_and_timeouts_still_checked(
    media: Harness,
) -> None:
    loop = asyncio.get_running_loop()
    a, b = media.phone(), media.phone()
    started = loop.time()
    legs = [media.call(phone, room="pair", timeout=1.0) for phone in (a, b)]  # a relay: no mixing
    clock = media.svc.clock
    assert not clock.rooms
    # Nothing sent: both legs time out after 1 s, found by the once-a-second check.
    await eventually(lambda: len(media.timeouts) == 2, "both media timeouts", timeout=5.0)
    elapsed = loop.time() - started
    assert set(media.timeouts) == set(legs)
    assert elapsed < 3.5  # checked every second, not later
    # The grid went on (a tick every 20 ms, counted) without waking for each of them.
    assert clock.ticks >= 45
    assert runs(media) <= 2 + int(elapsed)


async def test_a_room_that_starts_mixing_wakes_the_idle_clock_at_the_next_frame(
    media: Harness,
) -> None:
    loop = asyncio.get_running_loop()
    for phone in (media.phone(), media.phone()):
        media.call(phone, room="pair")
    clock = media.svc.clock
    # idle, and its next wake-up far enough away that waiting for it would show
    await eventually(
        lambda: (
            clock._handle is not None
            and clock._idle > 0
            and clock._handle.when() - loop.time() > 0.5
        ),
        "the clock idle for at least 0.5 s more",
        timeout=3.0,
    )
    ran, ticks = runs(media), clock.ticks
    alone = media.phone()
    media.call(alone, room="solo")  # alone in its room: it mixes (silence) on the clock
    assert clock.rooms
    got = await alone.collect(0.4)
    assert len(got) >= 5  # frames from the next tick on, not from the next second
    assert runs(media) - ran >= 5
    # the ticks it passed idle before waking stay counted on the grid
    assert clock.ticks - ticks >= runs(media) - ran


async def test_the_clock_outlives_a_tick_that_raises(media: Harness) -> None:
    """A fault in a tick's work outside any one room (here the once-a-second work) is logged and
    the clock goes on: before, it stopped re-arming and every room on it fell silent."""
    alone = media.phone()
    media.call(alone, room="solo")  # alone in its room: silence mixed and sent every 20 ms
    clock = media.svc.clock
    second = clock.on_second
    failed: list[float] = []

    def fails_once(now: float) -> None:
        if not failed:
            failed.append(now)
            raise RuntimeError("a fault in the once-a-second work")
        if second is not None:
            second(now)

    clock.on_second = fails_once
    await eventually(lambda: bool(failed), "the failing once-a-second work", timeout=3.0)
    ticks = clock.ticks
    got = await alone.collect(0.4)
    assert len(got) >= 5  # the room still hears its frames after the fault
    assert clock.ticks - ticks >= 5


async def test_calls_joining_one_a_turn_do_not_hold_back_the_clock_they_woke(
    media: Harness,
) -> None:
    """Each join to a mixing room tells the clock again that the room mixes (`RoomAudio.changed`
    -> `MediaClock.add`). While calls are set up one a turn (a burst of INVITEs), the tick the
    first join woke must still run when it is due: it was cancelled and queued again behind the
    next join every turn, and the room heard nothing until the burst was over (200-400 ms in
    the flood test)."""
    loop = asyncio.get_running_loop()
    for phone in (media.phone(), media.phone()):
        media.call(phone, room="pair")
    clock = media.svc.clock
    await eventually(
        lambda: clock._handle is not None and clock._idle > 0, "the clock idle", timeout=3.0
    )
    ran = runs(media)
    media.call(media.phone(), room="solo")  # alone in its room: it mixes, the clock wakes
    (room,) = clock.rooms
    bound = loop.time() + 5.0  # the next tick is due within 20 ms
    ticked = loop.create_future()

    def join_turn() -> None:  # what one more call joining the room does, one call a turn
        clock.add(room)
        if runs(media) > ran:
            ticked.set_result(True)
        elif loop.time() > bound:
            ticked.set_result(False)
        else:
            loop.call_soon(join_turn)

    loop.call_soon(join_turn)
    assert await ticked, "the clock never ticked while calls kept joining"


async def test_a_late_tick_reads_the_mixing_legs_and_runs_the_ticks_it_missed(
    media: Harness,
) -> None:
    """The loop held up for 90 ms: the next tick first reads what the mixing legs' sockets hold
    (a loop may run timers before it polls), then runs the four ticks it missed back to back,
    each at its own time - every frame of the stall mixed and sent, late, 20 ms apart in RTP
    time; none cut (they were skipped, and the jitter buffers then dropped what they held)."""
    loop = asyncio.get_running_loop()
    a, b = media.phone(), media.phone()
    leg_a = media.call(a)  # PCMU and G.722: each mixes the other, their packets buffered
    media.call(b, offer=b.offer((sdp.G722, sdp.TELEPHONE_EVENT)))
    assert leg_a.buffered and leg_a.rtp.stamped  # (its packets get their kernel receive time)
    clock = media.svc.clock
    for index in range(3):  # past the receiver's probation: buffered from the second on
        a.send_rtp(pcmu(440, index))
    await settle(lambda: leg_a.jitter.stats.received == 2)
    clock.stop()
    media.sent()  # the last tick's frames out of the sender's thread before the drain
    b.drain()
    for index in range(3, 8):  # sent during the stall: in the kernel, not read by the loop
        a.send_rtp(pcmu(440, index))
    ticks, skipped, caught_up = clock.ticks, clock.skipped, clock.caught_up
    clock._next = loop.time() - 0.09  # its tick 90 ms overdue
    clock._tick()  # (no await: the loop reads no socket meanwhile)
    clock.stop()
    assert leg_a.jitter.stats.received == 7  # read before the ticks ran
    assert clock.ticks - ticks == 5 and clock.caught_up - caught_up == 4
    assert clock.skipped == skipped and media.svc.samples()["clock_caught_up"] == 4
    frames = await b.collect(0.3)
    assert len(frames) == 5
    steps = [(q.timestamp - p.timestamp) % 2**32 for (p, _), (q, _) in itertools.pairwise(frames)]
    assert steps == [160] * 4

    # Later than CATCH_UP ticks (a flood, a long stall): the missed ticks are skipped, as before.
    ticks = clock.ticks
    clock._next = loop.time() - (CATCH_UP + 2.5) * FRAME_S
    clock._tick()
    clock.stop()
    assert clock.ticks - ticks == 1 and clock.caught_up - caught_up == 4
    assert clock.skipped - skipped == CATCH_UP + 2
