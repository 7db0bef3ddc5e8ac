"""`--rtc-ports` and `--rtc-ip`: where aioice binds and what it gathers, checked on real sockets."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import aioice
import aioice.ice
import pytest

from sipbridge.server.rtc.aiortc_patches import bind_ice_ports, restrict_host_addresses


@pytest.fixture(autouse=True)
def restore_aioice(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # both hooks replace module globals of aioice.ice: undo them after each test
    monkeypatch.setattr(aioice.ice, "asyncio", aioice.ice.asyncio)
    monkeypatch.setattr(aioice.ice, "get_host_addresses", aioice.ice.get_host_addresses)
    restrict_host_addresses(["127.0.0.1"])
    yield


def free_udp_block(size: int) -> int:
    """The first port of `size` consecutive free UDP ports on 127.0.0.1 (from the kernel's pick)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + size > 65535:
            continue
        held = []
        try:
            for port in range(base, base + size):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                held.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise AssertionError("no block of free UDP ports")


async def gathered_ports() -> list[int]:
    conn = aioice.Connection(ice_controlling=True)
    try:
        await asyncio.wait_for(conn.gather_candidates(), 5)
        return [c.port for c in conn.local_candidates]
    finally:
        await conn.close()


async def test_candidates_are_bound_within_the_range() -> None:
    base = free_udp_block(4)
    bind_ice_ports((base, base + 3))
    ports = [p for _ in range(3) for p in await gathered_ports()]
    assert ports and all(base <= p <= base + 3 for p in ports), (base, ports)


async def test_busy_ports_are_skipped_and_a_full_range_gathers_nothing() -> None:
    base = free_udp_block(2)
    bind_ice_ports((base, base + 1))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", base))
        assert await gathered_ports() == [base + 1]  # tried from a random start: base is taken
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy2:
            busy2.bind(("127.0.0.1", base + 1))
            # no port left: aioice logs that it could not bind and offers no candidate
            assert await gathered_ports() == []


def test_busy_ports_are_skipped_under_uvloop_too() -> None:
    """The server runs on uvloop, whose `create_datagram_endpoint` says "could not bind" with
    no errno for a port in use: a busy port must still be skipped, not end the gathering (a
    second WebRTC client in CI got no candidate when its random start hit the first's port)."""
    uvloop = pytest.importorskip("uvloop")
    base = free_udp_block(2)
    bind_ice_ports((base, base + 1))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", base))
        for _ in range(4):  # from either start
            assert uvloop.run(gathered_ports()) == [base + 1]


async def test_only_the_rtc_addresses_are_gathered() -> None:
    restrict_host_addresses(["127.0.0.1", "::1"])
    conn = aioice.Connection(ice_controlling=True, use_ipv6=False)
    try:
        await asyncio.wait_for(conn.gather_candidates(), 5)
        assert {c.host for c in conn.local_candidates} == {"127.0.0.1"}
    finally:
        await conn.close()


async def test_explicit_ports_and_other_loop_calls_pass_through() -> None:
    base = free_udp_block(2)
    bind_ice_ports((base, base))
    loop = aioice.ice.asyncio.get_running_loop()
    # an explicit port is bound as asked, outside the range
    transport, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.1", base + 1)
    )
    try:
        assert transport.get_extra_info("sockname")[1] == base + 1
    finally:
        transport.close()
    assert loop.time() == pytest.approx(asyncio.get_running_loop().time(), abs=1.0)
    assert aioice.ice.asyncio.sleep is asyncio.sleep
