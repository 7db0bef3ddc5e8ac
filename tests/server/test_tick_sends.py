"""The sends of the shared 20 ms clock's tick made in one call (`server/media/ports.py`
`SendBatch`, `_crelay.c` `Sender`): the compiled sender's thread puts on the wire exactly the
datagrams the loop's own `sendto`s do - same bytes, from the same socket, to the same address, in
the same order - and each socket counts its failed sends as before (issue 18).

Real `MediaService`s, legs in a mixing room and phones on loopback; the clock is driven through
`MediaClock.advance` on a fixed schedule so that two runs (sender, pure Python) can be compared
byte for byte."""

from __future__ import annotations

import itertools
import socket

import numpy as np
import pytest

from sipbridge.media.rtp import parse_rtp
from sipbridge.media.srtp import SUITES, SrtpContext, SrtpKeys
from sipbridge.server.media import crelay
from sipbridge.server.media.leg_driver import PcmPlayer
from sipbridge.server.media.ports import SendBatch
from sipbridge.server.media.service import MediaService
from tests.harness import eventually
from tests.server.media_phone import HOST, FakePhone
from tests.server.test_call_media import PLAIN, free_ports

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.skipif(not crelay.available(), reason="the relay engine is not built"),
]

LEGS = 5
TICKS = 60
EVENT_PT = 101
SRTP_LEG = 3


def _receive(sock: socket.socket, into: list[tuple[bytes, tuple[str, int]]]) -> None:
    while True:
        try:
            into.append(sock.recvfrom(4096))
        except BlockingIOError:
            return


async def _run(batched: bool) -> tuple[list[list[bytes]], SendBatch]:
    """Every datagram each phone got from its leg over TICKS ticks of one mixing room, with one
    leg playing a tone and another sending a digit; stream state fixed, so runs compare."""
    svc = MediaService(HOST, free_ports(2 * LEGS + 8))
    phones = [FakePhone() for _ in range(LEGS)]
    batch = svc.clock.batch
    try:
        assert batch.sender is not None
        if not batched:
            batch.close()  # no sender: every datagram through its socket's own sendto
        legs = []
        for index, phone in enumerate(phones):
            answer, leg = svc.negotiate(phone.offer(), PLAIN)
            phone.accept(answer)
            svc.start(leg, timeout=30.0, on_timeout=lambda: None)
            svc.attach(leg, "room")
            # the random parts of the stream fixed, the same in both runs
            leg.sender.ssrc = 0x1000 + index
            leg.sender._sequence = 65530 - 40 * index  # some wrap within the run
            leg.timeline.last = (0xFFFFF000 + 977 * index) % (1 << 32)
            if index == SRTP_LEG:  # protected as it is made, before any sink: keys fixed too
                keys = SrtpKeys.generate(SUITES[0], lambda size: bytes(range(size)))
                leg.srtp = SrtpContext(local=keys, remote=keys)
            legs.append(leg)
        clock = svc.clock
        clock.on_second = None  # no RTCP reports (random intervals) in the comparison
        tone = (np.sin(np.arange(8000) * 0.3) * 8000).astype(np.int16)
        legs[1].play(PcmPlayer(tone))
        legs[2].send_dtmf("5")
        room = svc.rooms["room"]
        assert set(room.mixers) == set(legs)
        got: list[list[tuple[bytes, tuple[str, int]]]] = [[] for _ in phones]
        for tick in range(TICKS):
            clock._next = 1000.0 + tick * 0.02
            clock.advance(clock._next)
            for phone, into in zip(phones, got, strict=True):
                _receive(phone.sock, into)
        # Driven here, on a fixed schedule, and only here: a room that changes (the digit's end)
        # wakes the clock's own timer, stopped before the loop runs it.
        clock.stop()

        for leg in legs:
            leg.sync()  # (the frames the sender made of a silent leg's stream, counted)

        def complete() -> bool:
            for phone, into in zip(phones, got, strict=True):
                _receive(phone.sock, into)
            pairs = zip(legs, got, strict=True)
            return all(len(into) >= leg.stats.packets_out for leg, into in pairs)

        await eventually(complete, "every datagram the legs sent", timeout=5.0)
        for leg, into in zip(legs, got, strict=True):
            assert {source for _, source in into} == {(HOST, leg.port)}  # from its own socket
        return [[data for data, _ in into] for into in got], batch
    finally:
        svc.close()
        for phone in phones:
            phone.close()


async def test_the_sender_sends_the_same_datagrams_as_the_loops_sendto() -> None:
    batched, batch = await _run(batched=True)
    assert batch.batches == TICKS and batch.sent == sum(len(x) for x in batched)
    plain, python = await _run(batched=False)
    assert python.batches == 0
    assert batched == plain
    # and they are what a phone needs: one stream per leg, continuous, a digit in one of them
    for index, datagrams in enumerate(batched):
        packets = [parse_rtp(data) for data in datagrams]
        assert {p.ssrc for p in packets} == {0x1000 + index}
        sequences = [p.sequence_number for p in packets]
        assert all((b - a) % 65536 == 1 for a, b in itertools.pairwise(sequences))
        kinds = {p.payload_type for p in packets}
        assert kinds == ({0, EVENT_PT} if index == 2 else {0})
        if index != 2:
            assert len(packets) == TICKS
            first = packets[0].timestamp
            assert all((p.timestamp - first) % (1 << 32) == 160 * n for n, p in enumerate(packets))
            assert [p.marker for p in packets] == [True] + [False] * (TICKS - 1)
    tone = {p.payload for p in map(parse_rtp, batched[1])}
    silence = {p.payload for p in map(parse_rtp, batched[0])}
    assert silence == {b"\xff" * 160} and len(tone) > 10
    protected = {p.payload for p in map(parse_rtp, batched[SRTP_LEG])}
    assert len(protected) == TICKS and len({len(payload) for payload in protected}) == 1
    assert b"\xff" * 160 not in {payload[:160] for payload in protected}  # encrypted, tagged


async def test_a_failed_send_is_counted_on_its_socket_and_the_batch_goes_on() -> None:
    svc = MediaService(HOST, free_ports(8))
    phone = FakePhone()
    batch = svc.clock.batch
    answer, leg = svc.negotiate(phone.offer(), PLAIN)
    try:
        phone.accept(answer)
        sock = leg.rtp
        batch.begin()
        sock.send(b"\x80" * 20, (HOST, 0))  # EINVAL: port 0
        sock.send(b"\x80" * 21, (HOST, phone.port))
        sock.send(b"\x80" * 23, (HOST, phone.port))
        batch.flush()
        assert batch.pending is None and sock.send_errors == 0  # known at the next hand-over
        got: list[tuple[bytes, tuple[str, int]]] = []
        await eventually(lambda: _receive(phone.sock, got) or len(got) == 2, "the good ones")
        assert got == [(b"\x80" * 21, (HOST, leg.port)), (b"\x80" * 23, (HOST, leg.port))]
        batch.begin()
        batch.flush()  # nothing collected: nothing handed over, nothing counted yet
        assert sock.send_errors == 0
        batch.begin()
        sock.send(b"\x80" * 22, (HOST, phone.port))
        batch.flush()
        assert sock.send_errors == 1 and batch.batches == 2
    finally:
        leg.close()  # never started: not the service's
        svc.close()
        phone.close()


async def test_an_address_the_sender_cannot_take_is_sent_by_the_loop() -> None:
    svc = MediaService(HOST, free_ports(8))
    phone = FakePhone()
    batch = svc.clock.batch
    answer, leg = svc.negotiate(phone.offer(), PLAIN)
    try:
        phone.accept(answer)
        batch.begin()
        leg.rtp.send(b"\x80" * 30, ("localhost", phone.port))  # a name: the sender takes none
        leg.rtp.send(b"\x80" * 31, (HOST, phone.port))
        batch.flush()
        assert batch.batches == 0
        got: list[tuple[bytes, tuple[str, int]]] = []
        await eventually(lambda: _receive(phone.sock, got) or len(got) == 2, "both datagrams")
        assert [data for data, _ in got] == [b"\x80" * 30, b"\x80" * 31]
    finally:
        leg.close()  # never started: not the service's
        svc.close()
        phone.close()


async def test_a_socket_sends_to_its_new_address_from_the_next_batch_on() -> None:
    """The sender keeps each socket's parsed destination while the address stays the same object
    (a leg's latch): a new one (a re-latch, a re-INVITE) is taken at once."""
    svc = MediaService(HOST, free_ports(8))
    first, second = FakePhone(), FakePhone()
    batch = svc.clock.batch
    answer, leg = svc.negotiate(first.offer(), PLAIN)
    try:
        first.accept(answer)
        there = (HOST, first.port)
        for index, destination in enumerate([there, there, (HOST, second.port), there]):
            batch.begin()
            leg.rtp.send(bytes([0x80, index]) * 10, destination)
            batch.flush()
        got: list[tuple[bytes, tuple[str, int]]] = []
        moved: list[tuple[bytes, tuple[str, int]]] = []
        await eventually(
            lambda: _receive(first.sock, got) or _receive(second.sock, moved) or len(got) == 3,
            "three datagrams at the first phone",
        )
        _receive(second.sock, moved)
        assert [data[1] for data, _ in got] == [0, 1, 3]
        assert [data[1] for data, _ in moved] == [2]
        assert batch.batches == 4
    finally:
        leg.close()
        svc.close()
        first.close()
        second.close()


async def test_a_socket_closed_during_a_tick_sends_what_it_collected_first() -> None:
    """A tick's player can end the call (its socket closed) before the tick's sends are handed
    over: that socket's datagrams leave before it closes; nothing is sent on it after."""
    svc = MediaService(HOST, free_ports(8))
    phone, other = FakePhone(), FakePhone()
    batch = svc.clock.batch
    answer, leg = svc.negotiate(phone.offer(), PLAIN)
    answer_other, stays = svc.negotiate(other.offer(), PLAIN)
    try:
        phone.accept(answer)
        other.accept(answer_other)
        batch.begin()
        leg.rtp.send(b"\x80" * 40, (HOST, phone.port))
        stays.rtp.send(b"\x80" * 41, (HOST, other.port))
        leg.close()
        assert batch.pending is not None and len(batch.pending) == 1
        batch.flush()
        got: list[tuple[bytes, tuple[str, int]]] = []
        kept: list[tuple[bytes, tuple[str, int]]] = []
        await eventually(
            lambda: _receive(phone.sock, got) or _receive(other.sock, kept) or (got and kept),
            "both datagrams",
        )
        assert got == [(b"\x80" * 40, (HOST, leg.port))]
        assert kept == [(b"\x80" * 41, (HOST, stays.port))]
    finally:
        stays.close()
        svc.close()
        phone.close()
        other.close()


async def test_the_running_clock_sends_its_ticks_through_the_sender() -> None:
    svc = MediaService(HOST, free_ports(8))
    phone = FakePhone()
    try:
        answer, leg = svc.negotiate(phone.offer(), PLAIN)
        phone.accept(answer)
        svc.start(leg, timeout=30.0, on_timeout=lambda: None)
        svc.attach(leg, "alone")  # alone in its room: silence on the clock
        got = await phone.collect(0.3)
        assert len(got) >= 5 and {p.payload for p, _ in got} == {b"\xff" * 160}
        samples = svc.samples()
        assert samples["clock_send_batches"] >= 5
        assert samples["clock_batched_sends"] >= len(got)
    finally:
        svc.close()
        phone.close()


async def test_a_socket_closed_while_a_batch_is_in_flight_closes_after_it() -> None:
    """A call that ends while the sender's thread sends a tick does not hold the loop until
    the thread is done: its descriptor stays open (nothing else can take it) until the next
    flush, which follows that batch; the batch's datagram from it arrives."""
    svc = MediaService(HOST, free_ports(8))
    phone = FakePhone()
    batch = svc.clock.batch
    answer, leg = svc.negotiate(phone.offer(), PLAIN)
    try:
        phone.accept(answer)
        batch.begin()
        leg.rtp.send(b"\x80" * 50, (HOST, phone.port))
        batch.flush()  # in flight (or sent already: the close still waits for the next flush)
        sock = leg.rtp.sock
        leg.close()
        assert sock.fileno() != -1 and batch.deferring
        got: list[tuple[bytes, tuple[str, int]]] = []
        await eventually(lambda: _receive(phone.sock, got) or got, "the batch's datagram")
        assert got == [(b"\x80" * 50, (HOST, leg.port))]
        batch.begin()
        batch.flush()  # the next tick: nothing of its own, the closed socket's turn
        assert sock.fileno() == -1 and not batch.deferring
    finally:
        svc.close()
        phone.close()


async def test_ports_held_by_sockets_closing_after_the_batch_are_taken_when_needed() -> None:
    """Every port of the range held by a socket waiting for the batch in flight: a new call
    closes them first and gets one, rather than a 503 for want of a port."""
    low, _ = free_ports(2)
    svc = MediaService(HOST, (low, low + 1))
    phone = FakePhone()
    batch = svc.clock.batch
    try:
        _, leg = svc.negotiate(phone.offer(), PLAIN)
        batch.begin()
        leg.rtp.send(b"\x80" * 20, (HOST, phone.port))
        batch.flush()
        leg.close()
        assert batch.deferring
        _, again = svc.negotiate(phone.offer(), PLAIN)
        assert again.port == leg.port and not batch.deferring
        again.close()
    finally:
        svc.close()
        phone.close()


async def test_a_failed_send_of_a_batch_whose_sockets_closed_after_it_is_not_misplaced() -> None:
    """The sender reports a batch's failed sends at the next hand-over, by index into that
    batch: when its sockets closed after it (the call ended in the tick), the report still
    finds its entries, and the clock's next batches go on (it raised IndexError in the tick,
    which stopped the shared clock: every room fell silent)."""
    svc = MediaService(HOST, free_ports(8))
    phone, other = FakePhone(), FakePhone()
    batch = svc.clock.batch
    _, leg = svc.negotiate(phone.offer(), PLAIN)
    answer, kept = svc.negotiate(other.offer(), PLAIN)
    try:
        other.accept(answer)
        batch.begin()
        leg.rtp.send(b"\x80" * 20, (HOST, 0))  # EINVAL: port 0
        leg.rtp.send(b"\x80" * 21, (HOST, phone.port))
        batch.flush()
        leg.close()  # while its batch is in flight
        batch.begin()
        batch.flush()  # nothing of its own: the closed socket's turn
        batch.begin()
        kept.rtp.send(b"\x80" * 22, (HOST, other.port))
        batch.flush()  # hands over, and hears of the first batch's failure
        assert leg.rtp.send_errors == 1 and kept.rtp.send_errors == 0
        got: list[tuple[bytes, tuple[str, int]]] = []
        await eventually(lambda: _receive(other.sock, got) or got, "the next batch's datagram")
        assert got == [(b"\x80" * 22, (HOST, kept.port))]
    finally:
        kept.close()
        svc.close()
        phone.close()
        other.close()
