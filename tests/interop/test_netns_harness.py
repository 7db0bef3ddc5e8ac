"""The WebRTC test harness proved: a network namespace on a veth pair (tests/netns.py), and the
official realtime SDK joining a room from inside it (tests/sdk_client.py).

- The namespace reaches the host end of the pair (a TCP connection to a listener of this test on
  host_ip arrives from ns_ip) and nothing else: no default route, no IPv6 address, and its
  127.0.0.1 is its own loopback, not the host's.
- Two namespaces at once get different subnets; teardown removes the namespace and the pair, also
  when the body raises; leftovers of a dead test process are removed by the next one.
- `sipbridge serve` with its HTTP/WebSocket listener on host_ip (ServerProcess(http_host=...))
  and its ICE candidates on host_ip (`--rtc-ip`): the SDK in the namespace connects, the server
  lists the participant through the official `livekit-api` client, and the SDK leaves cleanly.
  No media is checked here.

Note: the SDK's `Room.connect()` returns only once its peer connection is up, so the join needs
the server's WebRTC, not just signalling; without `--rtc-ip` that test is skipped.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from livekit import api

from tests.harness import eventually
from tests.helpers import API_KEY, API_SECRET, ServerProcess, token
from tests.netns import VethNamespace, available, cleanup_stale, namespaces, veth_namespace

pytestmark = pytest.mark.skipif(available() is not None, reason=available() or "")

SDK_CLIENT = Path(__file__).resolve().parents[1] / "sdk_client.py"
ROOM = "harness"


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=15, check=False)


def _link_exists(name: str) -> bool:
    return _run("ip", "link", "show", "dev", name).returncode == 0


def _clean_env() -> dict[str, str]:
    """The environment for clients in the namespace: no proxy (only host_ip is reachable)."""
    return {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}


def _connect_from(ns: VethNamespace, host: str, port: int) -> subprocess.CompletedProcess[str]:
    code = (
        "import socket, sys\n"
        "try:\n"
        f"    s = socket.create_connection(({host!r}, {port}), timeout=3)\n"
        "except OSError as e:\n"
        "    print(type(e).__name__); sys.exit(3)\n"
        "s.sendall(b'hello from the namespace'); s.close(); print('sent')\n"
    )
    return subprocess.run(
        ns.exec_args(sys.executable, "-c", code),
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
        env=_clean_env(),
    )


def test_namespace_reaches_only_the_host_end_and_is_removed() -> None:
    with veth_namespace() as ns:
        assert ns.name in namespaces()
        assert ns.host_ip.startswith("10.213.") and ns.host_ip.endswith(".1")
        assert ns.ns_ip == ns.host_ip[:-1] + "2"
        assert len(ns.host_if) <= 15 and len(ns.ns_if) <= 15

        # host -> namespace: a listener of this test on host_ip sees a connection from ns_ip
        with socket.socket() as listener:
            listener.bind((ns.host_ip, 0))
            listener.listen(1)
            listener.settimeout(10)
            port = listener.getsockname()[1]
            result = _connect_from(ns, ns.host_ip, port)
            assert result.returncode == 0, result
            conn, peer = listener.accept()
            with conn:
                conn.settimeout(5)
                assert conn.recv(100) == b"hello from the namespace"
            assert peer[0] == ns.ns_ip

        # 127.0.0.1 inside is the namespace's own loopback: the host's listeners are not there
        with socket.socket() as loopback:
            loopback.bind(("127.0.0.1", 0))
            loopback.listen(1)
            result = _connect_from(ns, "127.0.0.1", loopback.getsockname()[1])
            assert result.returncode == 3 and "ConnectionRefused" in result.stdout, result

        # nothing but the /30: no default route, no IPv6 anywhere on the pair
        routes = _run(*ns.exec_args("ip", "-4", "route", "show")).stdout.strip().splitlines()
        assert routes and all(r.startswith(f"{ns.host_ip[:-1]}0/30") for r in routes), routes
        assert _run(*ns.exec_args("ip", "-6", "addr", "show")).stdout.strip() == ""
        assert _run("ip", "-6", "addr", "show", "dev", ns.host_if).stdout.strip() == ""
        ns_lo = _run(*ns.exec_args("ip", "link", "show", "dev", "lo")).stdout
        assert "UP" in ns_lo, ns_lo

        # a second namespace at the same time gets another subnet
        with veth_namespace() as other:
            assert other.index != ns.index and other.name != ns.name
        assert other.name not in namespaces()
    assert ns.name not in namespaces()
    assert not _link_exists(ns.host_if)


def test_teardown_on_failure_and_stale_leftovers() -> None:
    sleepers: list[subprocess.Popen[bytes]] = []
    try:
        with pytest.raises(RuntimeError, match="boom"), veth_namespace() as ns:
            sleepers.append(subprocess.Popen(ns.exec_args("sleep", "60")))
            # inside before the failure (on a busy machine `ip netns exec` takes its time; one
            # not in yet when the teardown swept would enter a namespace no longer listed)
            deadline = time.monotonic() + 10
            while sleepers[0].pid not in ns.pids() and time.monotonic() < deadline:
                time.sleep(0.02)
            assert sleepers[0].pid in ns.pids()
            raise RuntimeError("boom")
        # teardown ended what still ran inside (or `ip netns del` would leave the pair up)
        assert sleepers[0].wait(timeout=15) != 0
    finally:
        for sleeper in sleepers:
            if sleeper.poll() is None:
                sleeper.kill()
                sleeper.wait(timeout=10)
    assert ns.name not in namespaces()
    assert not _link_exists(ns.host_if)

    # a namespace left by a test process that died is removed by the next one
    dead = subprocess.Popen(["true"])
    dead.wait(timeout=10)
    stale = f"sbns{dead.pid}-999"
    assert _run("ip", "netns", "add", stale).returncode == 0
    try:
        assert stale in cleanup_stale()
        assert stale not in namespaces()
    finally:
        _run("ip", "netns", "del", stale)


def _serve_flags() -> str:
    return _run(sys.executable, "-m", "sipbridge", "serve", "--help").stdout


async def _next_event(stream: asyncio.StreamReader, seen: list[dict[str, Any]]) -> dict[str, Any]:
    line = await stream.readline()
    if not line:
        raise EOFError("sdk_client.py closed its output")
    event: dict[str, Any] = json.loads(line)
    seen.append(event)
    return event


async def _participants(lk: api.LiveKitAPI) -> list[Any]:
    resp = await lk.room.list_participants(api.ListParticipantsRequest(room=ROOM))
    return list(resp.participants)


async def test_sdk_joins_from_the_namespace(tmp_path: Path) -> None:
    if "--rtc-ip" not in _serve_flags():
        pytest.skip("the SDK's connect() waits for its peer connection: needs serve --rtc-ip")
    with veth_namespace() as ns:
        server = ServerProcess(tmp_path, "--rtc-ip", ns.host_ip, http_host=ns.host_ip)
        server.start()
        try:
            await _join_and_leave(ns, server)
        finally:
            if server.proc is not None:
                assert server.stop() == 0, server.log.read_text()
    assert ns.name not in namespaces()
    assert not _link_exists(ns.host_if)


async def _join_and_leave(ns: VethNamespace, server: ServerProcess) -> None:
    identity = "sdk-harness"
    tok = token(api.VideoGrants(room_join=True, room=ROOM), identity=identity)
    ws_url = server.url.replace("http://", "ws://")
    assert ws_url == f"ws://{ns.host_ip}:{server.port}"
    seen: list[dict[str, Any]] = []
    proc = await asyncio.create_subprocess_exec(
        *ns.exec_args(sys.executable, str(SDK_CLIENT), "--url", ws_url, "--token", tok),
        "--seconds",
        "4",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_clean_env(),
    )
    assert proc.stdout is not None and proc.stderr is not None
    stderr = asyncio.ensure_future(proc.stderr.read())  # drained all along: the pipe never fills

    def report() -> str:
        text = stderr.result().decode(errors="replace") if stderr.done() else "(still running)"
        return f"events: {seen}\nstderr: {text[-3000:]}"

    try:
        started = time.monotonic()
        async with asyncio.timeout(20):
            while (await _next_event(proc.stdout, seen))["event"] != "connected":
                pass
        joined_s = time.monotonic() - started
        connected = seen[-1]
        assert connected["room"] == ROOM and connected["identity"] == identity, report()
        assert connected["participant_sid"].startswith("PA_"), report()

        async with api.LiveKitAPI(url=server.url, api_key=API_KEY, api_secret=API_SECRET) as lk:
            listed = await _participants(lk)
            assert [p.identity for p in listed] == [identity], report()
            assert listed[0].sid == connected["participant_sid"]

            async with asyncio.timeout(20):
                while (await _next_event(proc.stdout, seen))["event"] != "exit":
                    pass
            assert await asyncio.wait_for(proc.wait(), 10) == 0, report()
            events = [e["event"] for e in seen]
            assert "error" not in events, report()
            assert any(e["event"] == "disconnected" for e in seen), report()

            # the server lets the participant go once the SDK has left
            async def left() -> bool:
                return not await _participants(lk)

            await eventually(left, "the participant to leave", timeout=5, interval=0.1)
            assert await _participants(lk) == [], report()
        print(f"SDK joined from {ns.name} in {joined_s:.2f} s (process start included)")
    finally:
        if proc.returncode is None:
            proc.kill()
            await asyncio.wait_for(proc.wait(), 10)
        await asyncio.wait_for(stderr, 10)
