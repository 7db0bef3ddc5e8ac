"""The compiled relay engine (`server/media/crelay.py`, `_crelay.c`) against the Python paths.

Two bridges of two legs each, in two `MediaService`s on loopback - one relaying through the
engine, one through the event loop only (`media/relay.py` and `RtpLeg.receive`) - get the same
datagrams from their phones at the same moments: ordinary audio both ways, loss, a duplicate and
a late packet, a sequence wrap, DTMF, RTCP (multiplexed), padding, a CSRC, a new SSRC, a stranger
and payload types nobody negotiated. What each bridge's phones receive (sequence numbers,
timestamps and markers relative to the stream's start, payload types, payloads) and every counter
the legs keep (statistics, receiver, sender, timeline, audio levels, DTMF digits) must be the
same; and the engine must have forwarded most packets and handed the odd ones back, or there is
nothing to compare. Arrival times differ between the two by scheduling, so the jitter is only
compared loosely, and the timestamps where a new source is mapped (from the arrival time) not at
all.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sipbridge.media.rtp import RtpPacket, is_rtcp, parse_rtp
from sipbridge.server.media import crelay
from sipbridge.server.media.leg_driver import CallMedia
from sipbridge.server.media.service import MediaService
from tests.harness import eventually
from tests.server.media_phone import FakePhone
from tests.server.test_call_media import Harness, paced

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.skipif(not crelay.available(), reason="the relay engine is not built or is off"),
]

FRAME = 160
STEP_S = 0.005  # the script's pace: 4x real time, so a run takes about 2 s


class WithoutEngine(MediaService):
    """A media service whose legs all stay on the event loop: the Python paths."""

    def _engine(self, loop: asyncio.AbstractEventLoop) -> crelay.RelayEngine | None:
        return None


class EngineAlone(crelay.RelayEngine):
    """The engine driver, its own disarm around a leg it releases switched off on request: what
    the engine does when a slot is removed, by itself."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.driver_disarms = True

    def _disarm_around(self, leg: CallMedia) -> None:
        if self.driver_disarms:
            super()._disarm_around(leg)


class WithEngineAlone(MediaService):
    def _engine(self, loop: asyncio.AbstractEventLoop) -> crelay.RelayEngine | None:
        if self.crelay is None:
            self.crelay = EngineAlone(loop)
        return self.crelay


class Bridge:
    """A service, two phones in one room, a stranger; what the phones receive."""

    def __init__(self, *, engine: bool, service: type[MediaService] = MediaService) -> None:
        self.harness = Harness(service=service if engine else WithoutEngine)
        self.a, self.b, self.stranger = (self.harness.phone() for _ in range(3))
        self.digits: list[str] = []
        self.leg_a = self.harness.call(self.a, on_dtmf=self.digits.append)
        self.leg_b = self.harness.call(self.b)
        self.got: dict[str, list[bytes]] = {"a": [], "b": []}
        self._readers = [
            asyncio.create_task(self._read(name, phone))
            for name, phone in (("a", self.a), ("b", self.b))
        ]

    async def _read(self, name: str, phone: FakePhone) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(phone.sock, 2048)
            if not is_rtcp(data):
                self.got[name].append(data)

    def send(self, who: str, data: bytes) -> None:
        if who == "stranger":
            self.stranger.send(data, self.a.server)
        else:
            phone = self.a if who == "a" else self.b
            phone.send(data)

    def forwarded(self) -> tuple[int, int]:
        for leg in (self.leg_a, self.leg_b):
            leg.sync()
        return self.leg_a.stats.forwarded, self.leg_b.stats.forwarded

    def close(self) -> None:
        for task in self._readers:
            task.cancel()
        self.harness.close()


def rtp(seq: int, ts: int, ssrc: int, payload: bytes, *, pt: int = 0, **fields: Any) -> bytes:
    return RtpPacket(
        payload_type=pt,
        sequence_number=seq % 65536,
        timestamp=ts % 2**32,
        ssrc=ssrc,
        payload=payload,
        **fields,
    ).serialize()


def script() -> list[tuple[str, bytes]]:
    """(who sends, datagram) of a call with everything an RTP relay meets."""
    steps: list[tuple[str, bytes]] = []
    seq_a, ts_a, seq_b, ts_b = 65450, 2**32 - 60 * FRAME, 10, 0
    for i in range(200):
        payload = bytes((i * 7 + k * (1 + i % 5)) % 256 for k in range(FRAME))
        if i not in (30, 31, 140):  # packets lost from A
            steps.append(("a", rtp(seq_a, ts_a, 0x1111, payload, marker=i == 0)))
        seq_a, ts_a = seq_a + 1, ts_a + FRAME
        steps.append(("b", rtp(seq_b, ts_b, 0x2222, payload[::-1])))
        seq_b, ts_b = seq_b + 1, ts_b + FRAME
        if i == 50:  # a duplicate and a late packet
            steps.append(("a", steps[-2][1]))
            steps.append(("a", rtp(seq_a - 5, ts_a - 5 * FRAME, 0x1111, payload)))
        if i == 80:  # a digit (RFC 4733, three packets and the end), RTCP, a stranger
            for n in range(4):
                event = bytes([5, 0x8A if n == 3 else 0x0A, *(160 * (n + 1)).to_bytes(2, "big")])
                steps.append(("a", rtp(seq_a, ts_a, 0x1111, event, pt=101, marker=n == 0)))
                seq_a += 1
            rr = bytes([0x80, 201, 0, 1]) + (0x1111).to_bytes(4, "big")
            steps.append(("a", rr))
            steps.append(("stranger", rtp(9, 9, 0x9999, payload)))
        if i == 100:  # padding and a CSRC: legal, not for the fast paths
            steps.append(("b", rtp(seq_b, ts_b, 0x2222, payload, padding=4)))
            seq_b, ts_b = seq_b + 1, ts_b + FRAME
            steps.append(("b", rtp(seq_b, ts_b, 0x2222, payload, csrc=(7,))))
            seq_b, ts_b = seq_b + 1, ts_b + FRAME
        if i == 120:  # B's phone restarts with a new SSRC (its probation, then a new mapping)
            seq_b, ts_b = 4000, 123_456
            steps[-1] = ("b", rtp(seq_b, ts_b, 0x3333, payload[::-1]))
            seq_b, ts_b = seq_b + 1, ts_b + FRAME
        if i == 160:  # a jump past MAX_DROPOUT, twice (A.1: a restart), then in order again
            seq_a += 5000
            for _ in range(2):
                steps.append(("a", rtp(seq_a, ts_a, 0x1111, payload)))
                seq_a, ts_a = seq_a + 1, ts_a + FRAME
    for n, pt in enumerate((13, 96, 99)):  # comfort noise and unknown payload types
        steps.append(("a", rtp(seq_a + n, ts_a, 0x1111, b"\x40", pt=pt)))
    return steps


def relative(datagrams: list[bytes]) -> list[tuple[Any, ...]]:
    """Each packet against the one before: sequence step, timestamp step (None where a marker
    says a new source starts: mapped from the arrival time), marker, payload type, payload."""
    out: list[tuple[Any, ...]] = []
    previous: RtpPacket | None = None
    for data in datagrams:
        packet = parse_rtp(data)
        if previous is None:
            steps: tuple[Any, Any] = (None, None)
        else:
            seq_step = (packet.sequence_number - previous.sequence_number) % 65536
            ts_step = None if packet.marker else (packet.timestamp - previous.timestamp) % 2**32
            steps = (seq_step, ts_step)
        out.append((*steps, packet.marker, packet.payload_type, packet.payload))
        previous = packet
    return out


def state(leg: CallMedia) -> dict[str, Any]:
    leg.sync(levels=True)
    receiver = leg.receiver
    stats = receiver.stats
    return {
        "stats": {f.name: getattr(leg.stats, f.name) for f in dataclasses.fields(leg.stats)},
        "receiver": (
            stats.packets,
            stats.octets,
            stats.lost,
            receiver._max_seq,
            receiver._cycles,
            receiver._received,
            receiver._d_count,
            receiver.ssrc,
        ),
        "sender": (leg.sender.packets_sent, leg.sender.octets_sent, leg._sent_since_report),
        "levels": leg.levels.read(),
        "truncated": leg.rtp.truncated,
        "send_errors": leg.relay_send_errors,
    }


@pytest.fixture(params=["uring", "recvmmsg"])
def relay_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The engine's two modes (`_crelay.c`): its system calls batched with io_uring
    (`SIPBRIDGE_CRELAY_URING=1`), and recvmmsg/sendmmsg (the default, and where io_uring is
    refused). Read as an engine starts."""
    monkeypatch.setenv("SIPBRIDGE_CRELAY_URING", "1" if request.param == "uring" else "0")
    return str(request.param)


def require_mode(engine: crelay.RelayEngine, mode: str) -> None:
    """The engine runs in `mode`; a skip where the kernel refuses io_uring (the other mode runs
    there, and is tested as the `recvmmsg` one)."""
    counters = engine.counters()
    refused = (errno.ENOSYS, errno.EPERM, errno.EACCES, errno.EINVAL, errno.ENOMEM)
    if mode == "uring" and not counters["uring"] and counters["uring_errno"] in refused:
        pytest.skip(f"io_uring refused here: {os.strerror(counters['uring_errno'])}")
    assert counters["uring"] == (mode == "uring"), counters


@pytest.fixture
async def bridges(
    monkeypatch: pytest.MonkeyPatch, relay_mode: str
) -> AsyncIterator[tuple[Bridge, Bridge]]:
    monkeypatch.setattr(crelay, "REARM_S", 0.02)  # back to the engine within a few packets
    engine, python = Bridge(engine=True), Bridge(engine=False)
    try:
        assert engine.harness.svc.crelay is not None
        require_mode(engine.harness.svc.crelay, relay_mode)
        yield engine, python
    finally:
        engine.close()
        python.close()


async def test_the_engine_leaves_what_the_python_paths_leave(
    bridges: tuple[Bridge, Bridge],
) -> None:
    engine, python = bridges
    loop = asyncio.get_running_loop()
    start = loop.time()
    for index, (who, data) in enumerate(script()):
        await asyncio.sleep(max(0.0, start + index * STEP_S - loop.time()))  # the pace
        engine.send(who, data)
        python.send(who, data)
    expected = await eventually(python.forwarded, "the Python bridge's forwarding", timeout=5)

    def done() -> bool:
        python_done = python.forwarded() == expected
        return (
            python_done
            and engine.forwarded() == expected
            and [len(v) for v in engine.got.values()] == [len(v) for v in python.got.values()]
            and len(python.got["a"]) == expected[0]
            and len(python.got["b"]) == expected[1]
        )

    await eventually(done, "both bridges to have forwarded everything", timeout=5)
    for name in ("a", "b"):
        assert relative(engine.got[name]) == relative(python.got[name]), name
        assert len({parse_rtp(data).ssrc for data in engine.got[name]}) == 1  # the leg's own
    for mine, theirs in ((engine.leg_a, python.leg_a), (engine.leg_b, python.leg_b)):
        assert state(mine) == state(theirs)
        assert abs(mine.receiver._jitter - theirs.receiver._jitter) < 4 * FRAME  # by arrival
        assert mine.latch.refused == theirs.latch.refused
    assert engine.digits == python.digits == ["5"]
    # The engine did the relaying, and the odd packets went the Python way.
    service = engine.harness.svc
    assert service.crelay is not None and python.harness.svc.crelay is None
    counters = service.crelay.counters()
    total = sum(expected)
    assert counters["forwarded"] >= total * 0.7, counters
    assert counters["handed_back"] >= 5, counters  # the first odd one of each kind, at least
    assert counters["arms"] >= 6, counters  # both ways, and again after the odd packets


async def test_a_leg_leaves_the_engine_when_it_stops_being_a_pure_relay(
    bridges: tuple[Bridge, Bridge],
) -> None:
    """A third phone joins the room: the two legs mix, nothing is forwarded by the engine; it
    leaves: they relay again, through the engine; at hang-up the counters are all in the legs."""
    bridge, _ = bridges
    engine = bridge.harness.svc.crelay
    assert engine is not None

    def armed() -> int:
        return int(engine.counters()["armed"])

    sender = asyncio.create_task(paced(bridge.a, [bytes(FRAME)] * 150, ptime=0.01))
    await eventually(lambda: armed() == 1 and bridge.got["b"], "A relayed by the engine")
    third = bridge.harness.phone()
    leg_c = bridge.harness.call(third)
    assert armed() == 0  # at once: nothing is forwarded past the room's decision
    assert bridge.leg_b.mixing and bridge.leg_a.buffered
    await eventually(lambda: bridge.leg_b.stats.mixed_frames > 5, "B hearing a mix")
    assert armed() == 0
    bridge.harness.svc.release(leg_c)
    await eventually(lambda: armed() == 1, "A back in the engine")
    before = engine.counters()["forwarded"]
    await eventually(lambda: engine.counters()["forwarded"] > before + 5, "the engine forwarding")
    await sender
    bridge.harness.svc.release(bridge.leg_a)
    assert armed() == 0
    received = len(bridge.got["b"])

    def counted() -> bool:
        # read as every reader of a leg's counters does: after `sync`, which adds what the
        # tick's sender made of B's silence while armed (server/media/silence.py)
        bridge.leg_b.sync()
        return bridge.leg_b.stats.packets_out == len(bridge.got["b"]) and received > 0

    await eventually(counted, "every packet B's phone got counted as sent")


async def test_the_engine_never_forwards_into_a_slot_it_removes(
    monkeypatch: pytest.MonkeyPatch, relay_mode: str
) -> None:
    """The engine's own guard (`Engine_remove`): a slot forwarding into one that is removed is
    disarmed there, even when the driver did not disarm it first. The engine looks for such
    slots only when one targets the slot removed (a count kept as slots are armed; issue 18: the
    pass over all 65,536 slots, the GIL held, at every call's end)."""
    monkeypatch.setattr(crelay, "REARM_S", 0.02)  # back to the engine within a few packets
    bridge = Bridge(engine=True, service=WithEngineAlone)
    try:
        engine = bridge.harness.svc.crelay
        assert isinstance(engine, EngineAlone)
        require_mode(engine, relay_mode)
        sender = asyncio.create_task(paced(bridge.a, [bytes(FRAME)] * 100, ptime=0.01))
        await eventually(
            lambda: engine.counters()["armed"] == 1 and bridge.got["b"], "A relayed by the engine"
        )
        slot_a = bridge.leg_a.crelay_slot
        assert slot_a is not None and engine._engine.state(slot_a)[0] == 1
        engine.driver_disarms = False
        bridge.harness.svc.release(bridge.leg_b)
        assert engine._engine.state(slot_a)[0] == 0
        engine.driver_disarms = True
        await sender
    finally:
        bridge.close()
