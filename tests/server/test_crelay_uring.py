"""The relay engine's io_uring mode (`_crelay.c`): the system calls of a round batched across
sockets - each ready socket's receive, and the sends of what it forwarded, submitted together with
one io_uring_enter, the default - and the recvmmsg/sendmmsg engine kept with
`SIPBRIDGE_CRELAY_URING=0` and where io_uring cannot be had (a kernel or seccomp policy that
refuses it). What both modes relay, and every counter they leave, is
tests/server/test_crelay.py's, run in each mode; here the mode itself: which one runs, that it
is reported, that the io_uring one batches."""

from __future__ import annotations

import asyncio
import errno
import platform
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

from sipbridge.server.media import crelay
from sipbridge.server.media.crelay import RelayEngine
from tests.harness import eventually
from tests.server.media_phone import FakePhone
from tests.server.test_call_media import Harness, free_ports
from tests.server.test_crelay import FRAME, relay_mode, require_mode

__all__ = ["relay_mode"]  # the fixture, each test in both modes

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.skipif(not crelay.available(), reason="the relay engine is not built or is off"),
]

PAIRS = 8  # relayed calls in one service: their sockets ready in the same rounds
BURSTS = 40


class Pairs:
    """PAIRS calls in one media service, each its own room of two phones."""

    def __init__(self) -> None:
        self.harness = Harness(ports=free_ports(4 * PAIRS))
        self.callers: list[FakePhone] = []
        self.callees: list[FakePhone] = []
        for n in range(PAIRS):
            a, b = self.harness.phone(), self.harness.phone()
            self.harness.call(a, room=f"room{n}")
            self.harness.call(b, room=f"room{n}")
            self.callers.append(a)
            self.callees.append(b)

    @property
    def engine(self) -> RelayEngine:
        assert self.harness.svc.crelay is not None
        return self.harness.svc.crelay

    async def burst(self) -> None:
        """Every caller's datagrams until each call is armed, then BURSTS times one datagram
        from every caller at once (a socket per caller ready in the same round), 10 ms apart."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        while self.engine.counters()["armed"] < PAIRS:  # the first packets latch and arm each leg
            assert loop.time() < deadline, self.engine.counters()
            for phone in self.callers:
                phone.send_rtp(bytes(FRAME))
            await asyncio.sleep(0.01)  # the pace
        start = loop.time()
        for index in range(BURSTS):
            for phone in self.callers:
                phone.send_rtp(bytes(FRAME))
            await asyncio.sleep(max(0.0, start + (index + 1) * 0.01 - loop.time()))  # the pace

    def close(self) -> None:
        self.harness.close()


@pytest.fixture
async def pairs(monkeypatch: pytest.MonkeyPatch, relay_mode: str) -> AsyncIterator[Pairs]:
    del relay_mode  # the environment it set is read as the engine starts
    monkeypatch.setattr(crelay, "REARM_S", 0.02)  # to the engine within a few packets
    pairs = Pairs()
    try:
        yield pairs
    finally:
        pairs.close()


async def test_the_mode_is_reported_and_one_submission_serves_many_sockets(
    pairs: Pairs, relay_mode: str
) -> None:
    engine = pairs.engine
    require_mode(engine, relay_mode)
    before = engine.counters()
    await pairs.burst()
    await eventually(
        lambda: engine.counters()["forwarded"] >= before["forwarded"] + PAIRS * BURSTS * 0.9,
        "the bursts relayed by the engine",
    )
    after = engine.counters()
    forwarded = after["forwarded"] - before["forwarded"]
    receives = after["recv_calls"] - before["recv_calls"]
    sends = after["send_calls"] - before["send_calls"]
    enters = after["enters"] - before["enters"]
    if relay_mode == "uring":
        # a receive per datagram and an empty one per socket a round, a send per datagram;
        # all a chunk's in one io_uring_enter or two (PAIRS sockets a round, some rounds
        # catching a burst in two halves): far fewer system calls than operations
        assert sends >= forwarded and receives >= forwarded, after
        assert enters * 3 <= receives + sends, after
    else:
        # one recvmmsg and one sendmmsg per socket a round (a datagram each, or a few when a
        # round is late), no io_uring_enter
        assert enters == 0, after
        assert receives > 0 and sends > 0, after
    metrics = pairs.harness.svc.samples()
    assert metrics["crelay_uring"] == (relay_mode == "uring")
    assert metrics["crelay_enters"] >= after["enters"]


SECCOMP_REFUSING_IO_URING = """
import ctypes, sys
from sipbridge import _crelay
from sipbridge.media.levels import _ALAW_POWER, _ULAW_POWER

class Filter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                ("k", ctypes.c_uint)]

class Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Filter))]

IO_URING_SETUP = 425  # x86-64
rules = (Filter * 4)(
    Filter(0x20, 0, 0, 0),  # load the system call's number
    Filter(0x15, 0, 1, IO_URING_SETUP),  # io_uring_setup?
    Filter(0x06, 0, 0, 0x00050000 | 1),  # refused: EPERM
    Filter(0x06, 0, 0, 0x7FFF0000),  # the rest allowed
)
program = Program(4, rules)
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
SECCOMP_MODE_FILTER = 2
assert libc.prctl(22, SECCOMP_MODE_FILTER, ctypes.byref(program), 0, 0) == 0, ctypes.get_errno()
engine = _crelay.Engine(_ULAW_POWER.tobytes(), _ALAW_POWER.tobytes(), 1000, 2000, True)
counters = engine.counters()
print(counters["uring"], counters["uring_errno"])
"""


@pytest.mark.skipif(
    sys.platform != "linux" or platform.machine() != "x86_64", reason="a seccomp filter for x86-64"
)
def test_a_seccomp_policy_refusing_io_uring_leaves_the_engine_on_recvmmsg() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SECCOMP_REFUSING_IO_URING],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    assert done.stdout.split() == ["0", str(errno.EPERM)]


def test_the_io_uring_mode_is_asked_for_unless_the_environment_turns_it_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SIPBRIDGE_CRELAY_URING", raising=False)
    assert crelay.uring() is True  # on by default, where the kernel allows it
    monkeypatch.setenv("SIPBRIDGE_CRELAY_URING", "0")
    assert crelay.uring() is False
    monkeypatch.setenv("SIPBRIDGE_CRELAY_URING", "1")
    assert crelay.uring() is True
