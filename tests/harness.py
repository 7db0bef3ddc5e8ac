"""The one interop harness: waiting for observable state, running sipp and other peers, reading
the call log and the metrics of a `sipbridge serve` process.

Every wait here is bounded: a deadline, then an AssertionError that says what did not happen.
Nothing sleeps for a fixed time to let something happen; it polls what it waits for.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest

from tests.helpers import API_KEY, API_SECRET, ServerProcess, free_port

T = TypeVar("T")
SIPP_DIR = Path(__file__).parent / "interop" / "sipp"
POLL_S = 0.05  # how often `eventually` looks again

# Process groups of peers started by `run` that have not been reaped yet: a test that fails (or
# is cancelled) half-way leaves none behind (`kill_leftovers`).
RUNNING: set[int] = set()


# -- waiting ---------------------------------------------------------------------------------------


async def eventually(
    check: Callable[[], Awaitable[T]] | Callable[[], T],
    what: str,
    *,
    timeout: float = 10.0,
    interval: float = POLL_S,
) -> T:
    """Poll `check` (plain or async) until it returns something truthy, and return that.

    AssertionError naming `what` when `timeout` seconds pass first. The only way a test here
    waits for something to happen."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return cast(T, result)
        if loop.time() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)


def bound(port: int, kind: int = socket.SOCK_DGRAM) -> bool:
    """Whether a socket of `kind` is bound (for TCP: listening) on `port`: a peer is ready there.

    Read from /proc/net, not by binding a probe: a probe could take the port from under a peer
    that is binding it at that moment."""
    table = "/proc/net/udp" if kind == socket.SOCK_DGRAM else "/proc/net/tcp"
    with open(table) as rows:
        next(rows)  # the header
        for row in rows:
            fields = row.split()
            local, state = fields[1], fields[3]
            if int(local.rpartition(":")[2], 16) == port and (
                kind == socket.SOCK_DGRAM or state == "0A"  # TCP_LISTEN
            ):
                return True
    return False


# -- processes -------------------------------------------------------------------------------------


async def run(*args: str, timeout: float = 60, cwd: Path | str | None = None) -> tuple[int, str]:
    """Run a peer to its end: (exit code, stdout and stderr). TimeoutError after `timeout`; then
    (or when cancelled) its whole process group is killed and reaped."""
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=cwd,
        start_new_session=True,
    )
    RUNNING.add(proc.pid)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except (TimeoutError, asyncio.CancelledError):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        raise
    finally:
        RUNNING.discard(proc.pid)
    return proc.returncode or 0, out.decode(errors="replace")


def kill_leftovers() -> None:
    """Kill the peers a failed test left running (their process groups)."""
    for pgid in list(RUNNING):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        RUNNING.discard(pgid)


# -- sipp --------------------------------------------------------------------------------------


def sipp_port() -> int:
    """A port free for both UDP and TCP (sipp binds both for -t t1), well away from others."""
    for _ in range(50):
        port = free_port(socket.SOCK_DGRAM)
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                tcp.bind(("127.0.0.1", port))
                udp.bind(("127.0.0.1", port + 2))  # sipp's RTP ports sit at +2
            except OSError:
                continue
        return port
    raise RuntimeError("no free port")


@dataclass(frozen=True, kw_only=True)
class SippRun:
    """How one sipp run ended."""

    code: int
    out: str
    seconds: float


def sipp_args(
    scenario: str | Path,
    remote: int | None = None,
    *,
    port: int | None = None,
    calls: int = 1,
    rate: int | None = None,
    hold_ms: int | None = None,
    keys: dict[str, str] | None = None,
    transport: str | None = None,
    limit: float = 30,
    timeout_error: bool = True,
    extra: Iterable[str] = (),
    host: str = "127.0.0.1",
) -> list[str]:
    """The command line of one sipp run on loopback.

    `scenario` is a file of tests/interop/sipp, a path, or the name of one of sipp's built-in
    scenarios; `remote` the SIP port to call (none
    for a UAS); `port` sipp's own (a free one by default); `limit` bounds the run from outside
    (`timeout` sends INT, then KILL) and from inside (sipp's -timeout, a second less)."""
    args = [*("timeout", "-k", "2", "-s", "INT", str(int(limit)), "sipp")]
    if remote is not None:
        args.append(f"{host}:{remote}")  # (`host`: the remote's, e.g. a node on 127.0.0.2)
    if isinstance(scenario, str) and not scenario.endswith(".xml"):
        args += ["-sn", scenario]  # one of sipp's own scenarios ("uac", "uas")
    else:
        path = scenario if isinstance(scenario, Path) else SIPP_DIR / scenario
        args += ["-sf", str(path)]
    args += ["-i", "127.0.0.1", "-p", str(port or sipp_port())]
    if remote is not None:
        args += ["-mp", str(sipp_port())]
    if transport is not None:
        args += ["-t", transport]
    args += ["-m", str(calls)]
    if rate is not None:
        args += ["-r", str(rate)]
    if hold_ms is not None:
        args += ["-d", str(hold_ms)]
    for name, value in (keys or {}).items():
        args += ["-key", name, value]
    args += ["-nostdin", "-timeout", f"{max(1, int(limit) - 1)}s"]
    if timeout_error:
        args.append("-timeout_error")
    args += list(extra)
    return args


async def sipp(
    scenario: str | Path,
    remote: int | None = None,
    *,
    limit: float = 30,
    cwd: Path | str | None = None,
    **options: Any,
) -> SippRun:
    """One sipp run of `scenario` (see `sipp_args`) to its end, bounded by `limit` seconds."""
    started = time.monotonic()
    code, out = await run(
        *sipp_args(scenario, remote, limit=limit, **options), timeout=limit + 5, cwd=cwd
    )
    return SippRun(code=code, out=out, seconds=time.monotonic() - started)


# -- a `sipbridge serve` ---------------------------------------------------------------------------


def sip_server_process(tmp: Path, *extra: str, **options: Any) -> ServerProcess:
    """A server (not started) whose SIP port, `.sip_port`, sipp can share UDP and TCP on;
    `options` as ServerProcess takes them (http_host, ...)."""
    port = sipp_port()
    proc = ServerProcess(tmp, "--sip", f"127.0.0.1:{port}", *extra, **options)
    proc.sip_port = port  # type: ignore[attr-defined]
    return proc


def stop_cleanly(proc: ServerProcess) -> None:
    """SIGTERM; the server must exit 0 (its log says why not)."""
    if proc.proc is not None:
        code = proc.stop()
        assert code == 0, proc.log.read_text()[-5000:]


@contextlib.contextmanager
def served(proc: ServerProcess) -> Iterator[ServerProcess]:
    """`proc` started for the block; stopped after it, where it must exit 0 (`stop_cleanly`)."""
    proc.start()
    yield proc
    stop_cleanly(proc)


@contextlib.contextmanager
def all_served(*procs: ServerProcess) -> Iterator[None]:
    """`procs` started in order for the block; after it each is stopped, the last first, and
    each must exit 0 (every one is stopped, whichever fails)."""
    with contextlib.ExitStack() as stack:
        for proc in procs:
            proc.start()
            stack.callback(_stopped_with_0, proc)
        yield


def _stopped_with_0(proc: ServerProcess) -> None:
    assert proc.stop() == 0, proc.log_tail()


@asynccontextmanager
async def client(server: ServerProcess) -> AsyncIterator[Any]:
    """The official `livekit-api` client of `server`."""
    from livekit import api  # noqa: PLC0415

    async with api.LiveKitAPI(url=server.url, api_key=API_KEY, api_secret=API_SECRET) as lk:
        yield lk


async def direct_rule(server: ServerProcess, room_name: str) -> str:
    """A dispatch rule sending every call to `room_name` (through livekit-api); its id."""
    from livekit.protocol import sip  # noqa: PLC0415

    rule = sip.SIPDispatchRule(dispatch_rule_direct=sip.SIPDispatchRuleDirect(room_name=room_name))
    request = sip.CreateSIPDispatchRuleRequest(dispatch_rule=sip.SIPDispatchRuleInfo(rule=rule))
    async with client(server) as lk:
        made = await lk.sip.create_dispatch_rule(request)
    return str(made.sip_dispatch_rule_id)


async def call_log(server: ServerProcess) -> list[dict[str, Any]]:
    """`sipbridge call list --json` on the server's database, as users read it."""
    args = ["-m", "sipbridge", "call", "list", "--db", str(server.db), "--json"]
    code, out = await run(sys.executable, *args, timeout=20)
    assert code == 0, out
    entries: list[dict[str, Any]] = json.loads(out)
    return entries


async def logged_call(server: ServerProcess, call_id: str, timeout: float = 5) -> dict[str, Any]:
    """The call log entry of `call_id` once it shows the call ended."""

    async def ended() -> dict[str, Any] | None:
        for entry in await call_log(server):
            if entry["call_id"] == call_id and int(entry.get("ended_at_ns", 0)) > 0:
                return entry
        return None

    return await eventually(ended, f"the call log to show {call_id} ended", timeout=timeout)


async def metric(server: ServerProcess, name: str) -> float:
    """One sample of `GET /metrics` ('name{labels}'), 0 when absent."""
    return (await asyncio.to_thread(server.metrics)).get(name, 0.0)


# -- one server for a module -----------------------------------------------------------------------


def module_server(
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    *extra: str,
    sip: bool = False,
    clean_log: bool = False,
) -> Iterator[ServerProcess]:
    """The body of a module-scoped fixture (`yield from module_server(...)`): one started server
    for the tests of a module that need no flags, restart or fault of their own (a start costs
    ~0.7 s). `sip`: one made by `sip_server_process` (sipp can share its SIP port, `.sip_port`).
    At the module's end it must stop cleanly (no stuck call, exit 0) and, with `clean_log`, have
    logged no Traceback. Each test leaves it as found: see `leave_clean`."""
    tmp = tmp_path_factory.mktemp(name)
    proc = sip_server_process(tmp, *extra) if sip else ServerProcess(tmp, *extra)
    proc.start()
    yield proc
    stop_cleanly(proc)
    if clean_log:
        assert "Traceback" not in proc.log.read_text(), proc.log_tail()


async def leave_clean(server: ServerProcess, *, timeout: float = 15) -> None:
    """After a test on a shared server: delete (through the API) every trunk, dispatch rule and
    room it left, then wait until no call is live; no call may be stuck (the invariant
    `ServerProcess.stop` checks, here per test) and no source blocked for failed digests. The
    next test finds the server as new, but for its counters and call log: tests on a shared
    server read those as a change over the test or filtered by what the test made."""
    from livekit.protocol import room, sip  # noqa: PLC0415

    async with client(server) as lk:
        inbound = await lk.sip.list_inbound_trunk(sip.ListSIPInboundTrunkRequest())
        outbound = await lk.sip.list_outbound_trunk(sip.ListSIPOutboundTrunkRequest())
        for listed in (inbound, outbound):
            for trunk in listed.items:
                await lk.sip.delete_trunk(
                    sip.DeleteSIPTrunkRequest(sip_trunk_id=trunk.sip_trunk_id)
                )
        rules = await lk.sip.list_dispatch_rule(sip.ListSIPDispatchRuleRequest())
        for rule in rules.items:
            await lk.sip.delete_dispatch_rule(
                sip.DeleteSIPDispatchRuleRequest(sip_dispatch_rule_id=rule.sip_dispatch_rule_id)
            )
        for listed_room in (await lk.room.list_rooms(room.ListRoomsRequest())).rooms:
            await lk.room.delete_room(room.DeleteRoomRequest(room=listed_room.name))

    async def idle() -> bool:
        return await metric(server, "sipbridge_calls_active") == 0

    await eventually(idle, "no call left live on the shared server", timeout=timeout)
    assert await metric(server, "sipbridge_calls_stuck") == 0, server.log_tail()
    # a test's wrong passwords must not have this machine's address held off for the next ones
    assert await metric(server, "sipbridge_auth_blocked_sources") == 0
