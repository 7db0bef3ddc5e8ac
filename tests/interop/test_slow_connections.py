"""Slow connections against a real `sipbridge serve` (issue 17 item 5): 2,000 SIP TCP connections
that trickle bytes, on a server limited to 1,024 open files, leave the HTTP API and `/healthz`
answering within 100 ms; each address keeps at most 32 connections, SIP connections as a whole
at most a quarter of the descriptors; a message begun must complete within --sip-message-timeout
however slowly its bytes come; an HTTP client that never finishes its headers is cut off after
--http-idle-timeout; /metrics can live on a listener of its own. (The timeouts are set short here,
3 s against defaults of 10 and 15, so that the suite does not wait them out.)"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.harness import eventually, served, sip_server_process
from tests.helpers import ServerProcess, free_port

SOURCES = [f"127.0.0.{n}" for n in range(2, 12)]  # ten addresses of our own loopback
PER_SOURCE = 200
MESSAGE_TIMEOUT_S = 3  # --sip-message-timeout
HTTP_IDLE_TIMEOUT_S = 3  # --http-idle-timeout


@pytest.fixture
def limited_server(tmp_path: Path) -> Iterator[ServerProcess]:
    flags = ("--sip-message-timeout", str(MESSAGE_TIMEOUT_S))
    flags += ("--http-idle-timeout", str(HTTP_IDLE_TIMEOUT_S))
    with served(sip_server_process(tmp_path, *flags, open_files=1024)) as server:
        yield server
    assert "Traceback" not in server.log.read_text()


async def open_slow(port: int, source: str) -> asyncio.StreamWriter | None:
    """A connection from `source`, silent so far; None if refused."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    except OSError:
        return None
    writer.transport.set_write_buffer_limits(high=0)
    writer.reader = reader  # type: ignore[attr-defined]
    return writer


async def closed_by_server(writer: asyncio.StreamWriter, timeout: float) -> bool:
    reader: asyncio.StreamReader = writer.reader  # type: ignore[attr-defined]
    try:
        data = await asyncio.wait_for(reader.read(1024), timeout)
    except TimeoutError:
        return False
    except ConnectionError:  # reset: refused at once
        return True
    return data == b""


async def latencies(url: str, count: int = 10) -> list[float]:
    """Seconds each of `count` requests took: /healthz and the Twirp API in turn."""
    out = []
    async with aiohttp.ClientSession() as session:
        for n in range(count):
            started = time.monotonic()
            if n % 2:
                async with session.get(f"{url}/healthz") as resp:
                    assert resp.status == 200
            else:  # an unauthenticated Twirp call still goes through the whole API path
                async with session.post(
                    f"{url}/twirp/livekit.RoomService/ListRooms",
                    json={},
                    headers={"Content-Type": "application/json"},
                ) as resp:
                    assert resp.status == 401
            out.append(time.monotonic() - started)
    return out


async def test_slow_sip_connections_leave_the_api_answering(limited_server: ServerProcess) -> None:
    port = limited_server.sip_port  # type: ignore[attr-defined]
    writers: list[asyncio.StreamWriter] = []
    try:
        for source in SOURCES:
            for _ in range(PER_SOURCE):
                writer = await open_slow(port, source)
                if writer is not None:
                    writers.append(writer)
        # The server refuses (closes at once) what is over its budgets.
        refused = await asyncio.gather(*(closed_by_server(w, 2.0) for w in writers))
        kept = [w for w, gone in zip(writers, refused, strict=True) if not gone]
        assert 0 < len(kept) <= 1024 // 4, len(kept)
        by_source: dict[str, int] = {}
        for w in kept:
            source = w.get_extra_info("sockname")[0]
            by_source[source] = by_source.get(source, 0) + 1
        assert max(by_source.values()) <= 32, by_source

        took = await latencies(limited_server.url)
        assert statistics.median(took) < 0.1 and max(took) < 1.0, took

        # A trickle does not keep a message alive: one byte every half second, and still
        # every kept connection is closed once its message has taken MESSAGE_TIMEOUT_S (and
        # not before: a message's first byte starts its clock).
        started = time.monotonic()

        async def trickle() -> None:
            while True:
                for w in kept:
                    if not w.is_closing():
                        w.write(b"N")
                await asyncio.sleep(0.5)  # the trickle under test, not a wait for something

        dripping = asyncio.create_task(trickle())
        try:
            gone = await asyncio.gather(
                *(closed_by_server(w, MESSAGE_TIMEOUT_S + 10) for w in kept)
            )
        finally:
            dripping.cancel()
        assert all(gone), sum(gone)
        assert MESSAGE_TIMEOUT_S - 0.5 < time.monotonic() - started < MESSAGE_TIMEOUT_S + 10
        metrics = limited_server.metrics()
        assert metrics['sipbridge_sip_messages_total{kind="stream_too_slow"}'] >= len(kept)
        assert metrics['sipbridge_sip_messages_total{kind="connections_refused_per_source"}'] > 0
    finally:
        for w in writers:
            w.close()


async def test_an_http_client_that_never_finishes_its_headers_is_cut_off(
    limited_server: ServerProcess,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", limited_server.port)
    started = time.monotonic()
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line

    async def cut_off() -> bool | None:
        with contextlib.suppress(ConnectionError):
            writer.write(b"X-Slow: 1\r\n")  # a trickle of header lines
            await writer.drain()
        try:
            while await asyncio.wait_for(reader.read(65536), 0.2):
                pass  # (whatever it said before closing)
        except TimeoutError:
            return None
        except ConnectionError:
            pass
        return True

    try:
        await eventually(cut_off, "the server to close it", timeout=HTTP_IDLE_TIMEOUT_S + 10)
    finally:
        writer.close()
    assert time.monotonic() - started >= HTTP_IDLE_TIMEOUT_S - 1


async def test_metrics_can_live_on_an_address_of_their_own(tmp_path: Path) -> None:
    """`--metrics HOST:PORT`: /metrics there (for a private network), and no longer on the
    API's address that the internet may reach."""
    port = free_port()
    server = ServerProcess(tmp_path, "--metrics", f"127.0.0.1:{port}")
    await asyncio.to_thread(server.start)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{server.url}/metrics") as resp:
                assert resp.status == 404
            async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
                assert resp.status == 200
                assert "sipbridge_calls_active 0" in await resp.text()
    finally:
        assert await asyncio.to_thread(server.stop) == 0
