"""`MediaPoller`: media sockets read in batches on a real event loop with real UDP sockets."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator

import pytest

from sipbridge.server.media.poller import MediaPoller
from sipbridge.server.media.ports import MediaSocket
from tests.harness import eventually

HOST = "127.0.0.1"


async def settle(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    await eventually(condition, "the condition", timeout=timeout, interval=0.002)


def bound() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    sock.setblocking(False)
    return sock


@pytest.fixture
def sender() -> Iterator[socket.socket]:
    sock = bound()
    yield sock
    sock.close()


def receiver(
    received: list[tuple[int, bytes]], index: int
) -> Callable[[bytes, tuple[str, int]], None]:
    return lambda data, _source: received.append((index, data))


async def test_a_burst_to_many_sockets_is_read_in_few_wakeups(sender: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    poller = MediaPoller()
    received: list[tuple[int, bytes]] = []
    sockets = []
    for index in range(50):
        sock = MediaSocket(bound(), receiver(received, index), poller)
        sock.start(loop)
        sockets.append(sock)
    try:
        for round_ in range(3):
            for index, sock in enumerate(sockets):
                sender.sendto(bytes([round_, index]), (HOST, sock.port))
            await settle(lambda r=round_: len(received) == 50 * (r + 1))
        assert sorted(received) == sorted((i, bytes([r, i])) for r in range(3) for i in range(50))
        # 150 datagrams, each socket read once per round: far fewer looks than datagrams
        assert poller.reads == 150 and poller.wakeups < 30
        # quiet again: no look scheduled, the set watched (an idle server does not poll)
        await settle(lambda: poller._timer is None and poller._watching)
        sender.sendto(b"late", (HOST, sockets[7].port))
        await settle(lambda: received[-1] == (7, b"late"))
    finally:
        for sock in sockets:
            sock.close()
        poller.close()
    assert not poller._sockets


async def test_a_failing_socket_does_not_stop_the_others(
    sender: socket.socket, caplog: pytest.LogCaptureFixture
) -> None:
    loop = asyncio.get_running_loop()
    poller = MediaPoller()
    received: list[bytes] = []

    def broken(data: bytes, source: tuple[str, int]) -> None:
        raise RuntimeError("a bug in one call")

    bad = MediaSocket(bound(), broken, poller)
    good = MediaSocket(bound(), lambda data, _source: received.append(data), poller)
    bad.start(loop)
    good.start(loop)
    try:
        for index in range(3):
            sender.sendto(b"x", (HOST, bad.port))
            sender.sendto(bytes([index]), (HOST, good.port))
            await settle(lambda i=index: len(received) == i + 1)
        assert "reading media socket" in caplog.text
    finally:
        bad.close()
        good.close()
        poller.close()


async def test_a_flooded_socket_is_drained_in_the_next_turns(sender: socket.socket) -> None:
    """A socket that fills faster than a look a millisecond drains is looked at again at once:
    a flood of 5,000 datagrams, sent in bursts of 32 between turns of the loop, all read."""
    loop = asyncio.get_running_loop()
    poller = MediaPoller()
    count = [0]

    def counted(data: bytes, source: tuple[str, int]) -> None:
        count[0] += 1

    flooded = MediaSocket(bound(), counted, poller)
    flooded.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    flooded.start(loop)
    try:
        for index in range(5000):
            sender.sendto(b"\x00" * 32, (HOST, flooded.port))
            if index % 32 == 31:
                await asyncio.sleep(0)
        await settle(lambda: count[0] == 5000)
    finally:
        flooded.close()
        poller.close()
