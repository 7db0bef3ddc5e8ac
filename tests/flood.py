"""What a flood does to the calls that are not part of it (issue 17 s3), measured from outside:
a legitimate phone call in progress, SIP pings from another address, and the server's memory,
while one source floods INVITEs (sipp, `tests/interop/sipp/uac_flood.xml`).

Shared by `tests/interop/test_flood.py` (the Done-when check) and `bench/flood.py` (figures at
rising rates). Each piece runs on its own thread with blocking sockets and stamps what it
receives with `time.monotonic()`, so the figures are the network's view, not the view of an
event loop that may itself be busy:

- `Phone`: a SIP caller over UDP from its own loopback address (INVITE, ACK, BYE by hand) that
  sends a tone as PCMU every 20 ms and records when each RTP packet of the room reaches it;
  `worst_gap` is the longest silence between two of them.
- `Pinger`: OPTIONS one after another from another address; `latencies` are their round trips.
- `rss_bytes`: the server's resident memory (/proc).

`measure_flood` runs the whole of it against a started server and returns the figures.

Every wait is bounded by a deadline; the only pauses are the pacing of the RTP and the pings
(a phone sends every 20 ms because that is what phones do).
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import math
import os
import re
import secrets
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SIPP_FLOOD = Path(__file__).parent / "interop" / "sipp" / "uac_flood.xml"
FRAME_S = 0.020
PCMU_FRAME = 160


def rss_bytes(pid: int) -> int:
    """Resident memory of process `pid`."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (nearest rank) of `values` (not empty)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def _tone_payloads() -> list[bytes]:
    """A 400 Hz tone at a moderate level in PCMU, frame by frame (one period is 20 samples)."""
    samples = [int(8000 * math.sin(2 * math.pi * 400 * n / 8000)) for n in range(PCMU_FRAME)]
    frame = bytes(_ulaw(s) for s in samples)
    return [frame]


def _ulaw(sample: int) -> int:
    """G.711 u-law of one 16-bit sample (ITU-T G.711, the usual segment search)."""
    sign = 0x80 if sample < 0 else 0
    magnitude = min(abs(sample), 32635) + 0x84
    exponent = 7
    for exp in range(7, -1, -1):
        if magnitude & (0x4000 >> (7 - exp)):
            exponent = exp
            break
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def _header(message: bytes, name: str) -> str | None:
    for line in message.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name.lower().encode():
            return value.strip().decode(errors="replace")
    return None


def _status(message: bytes) -> int:
    parts = message.split(b" ", 2)
    return int(parts[1]) if message.startswith(b"SIP/2.0 ") and len(parts) > 1 else 0


class Phone:
    """A legitimate caller from `address` (one of 127.0.0.0/8): `dial`, `start_media`,
    `hang_up`. Thread-safe figures: `gaps_since(t)`."""

    def __init__(self, address: str, number: str) -> None:
        self.address = address
        self.number = number
        self.sip = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sip.bind((address, 0))
        self.rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rtp.bind((address, 0))
        self.call_id = f"legit-{secrets.token_hex(6)}@{address}"
        self.tag = secrets.token_hex(4)
        self.server: tuple[str, int] = ("127.0.0.1", 0)
        self.remote_rtp: tuple[str, int] = ("127.0.0.1", 0)
        self.to = ""
        self.target = ""
        self.arrivals: list[float] = []  # monotonic time of every RTP packet received
        self.sent_late = 0.0  # the worst lateness of our own sending (the test's own stall)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- SIP --------------------------------------------------------------------------------

    def _request(self, method: str, uri: str, cseq: int, *, to: str, body: bytes = b"") -> bytes:
        sip_port = self.sip.getsockname()[1]
        head = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/UDP {self.address}:{sip_port};branch=z9hG4bK{secrets.token_hex(6)}",
            f"From: <sip:{self.number}@{self.address}>;tag={self.tag}",
            f"To: {to}",
            f"Call-ID: {self.call_id}",
            f"CSeq: {cseq} {method}",
            f"Contact: <sip:{self.number}@{self.address}:{sip_port}>",
            "Max-Forwards: 70",
        ]
        if body:
            head.append("Content-Type: application/sdp")
        head.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(head) + "\r\n\r\n").encode() + body

    def _final(self, request: bytes, method: str, deadline: float) -> bytes:
        """Send `request` (again every 0.5 s, RFC 3261 Timer A) until its final response."""
        resend_at = 0.0
        while True:
            now = time.monotonic()
            if now >= deadline:
                raise AssertionError(f"{self.number}: no final response to {method}")
            if now >= resend_at:
                self.sip.sendto(request, self.server)
                resend_at = now + 0.5
            self.sip.settimeout(max(0.01, min(resend_at, deadline) - now))
            try:
                reply = self.sip.recv(65535)
            except TimeoutError:
                continue
            cseq = _header(reply, "CSeq") or ""
            if (
                _header(reply, "Call-ID") == self.call_id
                and cseq.endswith(method)
                and _status(reply) >= 200
            ):
                return reply

    def dial(self, server_port: int, called: str, *, timeout: float = 10.0) -> None:
        """INVITE `called` at the server, up to its 200 and our ACK."""
        self.server = ("127.0.0.1", server_port)
        rtp_port = self.rtp.getsockname()[1]
        sdp = (
            f"v=0\r\no=- 1 1 IN IP4 {self.address}\r\ns=-\r\nc=IN IP4 {self.address}\r\n"
            f"t=0 0\r\nm=audio {rtp_port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
            "a=ptime:20\r\na=sendrecv\r\n"
        ).encode()
        uri = f"sip:{called}@127.0.0.1:{server_port}"
        to = f"<sip:{called}@127.0.0.1>"
        invite = self._request("INVITE", uri, 1, to=to, body=sdp)
        reply = self._final(invite, "INVITE", time.monotonic() + timeout)
        if _status(reply) != 200:
            raise AssertionError(f"{self.number}: INVITE answered {reply[:60]!r}")
        self.to = _header(reply, "To") or to
        contact = _header(reply, "Contact") or f"<{uri}>"
        self.target = contact.strip().lstrip("<").split(">", 1)[0]
        body = reply.split(b"\r\n\r\n", 1)[1].decode()
        found = re.search(r"m=audio (\d+)", body)
        host = re.search(r"c=IN IP4 (\S+)", body)
        assert found is not None and host is not None, body
        self.remote_rtp = (host.group(1), int(found.group(1)))
        self.sip.sendto(self._request("ACK", self.target, 1, to=self.to), self.server)

    def hang_up(self, *, timeout: float = 10.0) -> None:
        self.stop_media()
        bye = self._request("BYE", self.target, 2, to=self.to)
        self._final(bye, "BYE", time.monotonic() + timeout)

    # -- RTP --------------------------------------------------------------------------------

    def start_media(self) -> None:
        for target in (self._send, self._receive):
            thread = threading.Thread(target=target, name=f"phone-{self.number}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop_media(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=2)
        self._threads = []

    def _send(self) -> None:
        payloads = _tone_payloads()
        ssrc = secrets.randbits(32)
        sequence, timestamp = secrets.randbits(16), secrets.randbits(32)
        due = time.monotonic()
        count = 0
        while not self._stop.is_set():
            now = time.monotonic()
            if now < due:
                self._stop.wait(due - now)  # the pacing of a phone, not a wait for an event
                continue
            self.sent_late = max(self.sent_late, now - due)
            header = struct.pack("!BBHII", 0x80, 0, sequence, timestamp, ssrc)
            self.rtp.sendto(header + payloads[count % len(payloads)], self.remote_rtp)
            count += 1
            sequence = (sequence + 1) & 0xFFFF
            timestamp = (timestamp + PCMU_FRAME) & 0xFFFFFFFF
            due += FRAME_S
            if due < now - 1:  # stalled for a second: do not send a burst to catch up
                due = now

    def _receive(self) -> None:
        self.rtp.settimeout(0.05)
        while not self._stop.is_set():
            try:
                data = self.rtp.recv(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            if len(data) >= 12 and data[0] >> 6 == 2 and not 200 <= data[1] <= 204:
                self.arrivals.append(time.monotonic())  # RTP, not RTCP (RFC 5761 s4)

    def worst_gap(self, start: float, end: float) -> float:
        """The longest time in [start, end] with no RTP reaching us (seconds)."""
        times = [t for t in list(self.arrivals) if start <= t <= end]
        if not times:
            return end - start
        edges = [start, *times, end]
        return max(b - a for a, b in itertools.pairwise(edges))

    def close(self) -> None:
        self.stop_media()
        self.sip.close()
        self.rtp.close()


class Pinger:
    """SIP OPTIONS from `address`, one after another every `interval` seconds, on a thread;
    `latencies` are their round trips (a lost one counts as `timeout`)."""

    def __init__(self, address: str, server_port: int, *, interval: float = 0.01) -> None:
        self.server = ("127.0.0.1", server_port)
        self.interval = interval
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, 0))
        self.address = address
        self.latencies: list[float] = []
        self.sent_at: list[float] = []  # when each of `latencies` was sent (monotonic)
        self.lost = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pinger", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.sock.close()

    def _options(self, n: int) -> tuple[bytes, str]:
        port = self.sock.getsockname()[1]
        call_id = f"ping-{n}-{secrets.token_hex(4)}@{self.address}"
        text = (
            f"OPTIONS sip:ping@127.0.0.1:{self.server[1]} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {self.address}:{port};branch=z9hG4bKp{secrets.token_hex(6)}\r\n"
            f"From: <sip:monitor@{self.address}>;tag=p{n}\r\n"
            "To: <sip:ping@127.0.0.1>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        return text.encode(), call_id

    def _run(self, timeout: float = 1.0) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            request, call_id = self._options(n)
            sent = time.monotonic()
            self.sock.sendto(request, self.server)
            while True:
                left = sent + timeout - time.monotonic()
                if left <= 0:
                    self.lost += 1
                    self.sent_at.append(sent)
                    self.latencies.append(timeout)
                    break
                self.sock.settimeout(left)
                try:
                    reply = self.sock.recv(65535)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if _header(reply, "Call-ID") == call_id:
                    self.sent_at.append(sent)
                    self.latencies.append(time.monotonic() - sent)
                    break
            self._stop.wait(max(0.0, sent + self.interval - time.monotonic()))


# -- the whole measurement ---------------------------------------------------------------------

FLOOD_ROOM = "flooded"
PHONES = ("127.0.0.2", "127.0.0.2")  # the legitimate call: two phones, one address
PINGER = "127.0.0.3"  # OPTIONS: another address again
# (the flood comes from 127.0.0.1, sipp's address in tests/harness.py)


@dataclass(frozen=True, kw_only=True)
class FloodResult:
    """What one flood did to everyone else."""

    invites: int  # what sipp was asked to send
    rate: int  # a second, as asked
    seconds: float  # how long sipp took to send them and end its calls
    sipp_code: int
    sipp_out: str
    worst_gap: float  # the longest time either phone heard no RTP during the flood (s)
    sent_late: float  # the worst lateness of the phones' own sending: the measure's own noise
    options: list[float]  # OPTIONS round trips during the flood (s)
    options_lost: int
    cpu: float  # the server's CPU during the flood, in cores (1.0: one core all the time)
    rss_before: int  # bytes, with the call up, before the flood
    rss_after: int  # bytes, once the flood's calls are all gone (or at the drain deadline)
    drained: float  # seconds after the flood until its last call had ended (inf: not by then)
    metrics: dict[str, float]  # the server's /metrics right after the flood

    @property
    def options_p99(self) -> float:
        return percentile(self.options, 99) if self.options else math.inf

    @property
    def options_p50(self) -> float:
        return percentile(self.options, 50) if self.options else math.inf

    def counted(self, kind: str) -> float:
        """A `sipbridge_sip_messages_total` counter (refused_flood, dropped_flood...)."""
        return self.metrics.get(f'sipbridge_sip_messages_total{{kind="{kind}"}}', 0.0)

    def summary(self) -> str:
        return (
            f"{self.invites} INVITEs at {self.rate}/s in {self.seconds:.1f} s (sipp exit "
            f"{self.sipp_code}); worst audio gap {self.worst_gap * 1000:.0f} ms (phones' own "
            f"sending late by at most {self.sent_late * 1000:.0f} ms); OPTIONS p50 "
            f"{self.options_p50 * 1000:.1f} ms p99 {self.options_p99 * 1000:.1f} ms of "
            f"{len(self.options)} ({self.options_lost} lost); server CPU {self.cpu:.2f} cores; "
            f"RSS {self.rss_before / 2**20:.0f} -> {self.rss_after / 2**20:.0f} MiB, the "
            f"flood's calls gone {self.drained:.1f} s after it; refused "
            f"{self.counted('refused_flood'):g}, dropped unread {self.counted('dropped_flood'):g}"
        )


def cpu_seconds(pid: int) -> float:
    """utime + stime of process `pid` (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure_flood(server: Any, **how: Any) -> FloodResult:
    """`_measure_flood` with this process's garbage collector paused: the phones and the pinger
    stamp arrivals on threads of the measuring process, and a full collection of a test process
    that has run a thousand tests holds every thread for over 20 ms, which would be counted as
    the server's latency (it was, late in a whole suite: OPTIONS p99 21 ms, 3-6 ms alone)."""
    collecting = gc.isenabled()
    gc.collect()
    gc.freeze()  # what exists now is never scanned again while we measure
    gc.disable()
    try:
        return await _measure_flood(server, **how)
    finally:
        gc.unfreeze()
        if collecting:
            gc.enable()


async def _measure_flood(
    server: Any,
    *,
    invites: int,
    rate: int,
    hold_ms: int = 1000,
    called: str = "+15105550100",
    drain_timeout: float = 30.0,
) -> FloodResult:
    """On a started `ServerProcess` with no trunks or rules yet: a trunk for `called`, a rule
    into one room, the call between two phones, then `invites` INVITEs at `rate` from sipp
    (each answered call held `hold_ms`), measured as `FloodResult`. The phones hang up at the
    end and the server is left with no call."""
    from livekit.protocol import sip  # noqa: PLC0415

    from tests import harness  # noqa: PLC0415

    port: int = server.sip_port
    pid: int = server.proc.pid
    async with harness.client(server) as lk:
        await lk.sip.create_inbound_trunk(
            sip.CreateSIPInboundTrunkRequest(
                trunk=sip.SIPInboundTrunkInfo(name="carrier", numbers=[called])
            )
        )
        rule = sip.SIPDispatchRule(
            dispatch_rule_direct=sip.SIPDispatchRuleDirect(room_name=FLOOD_ROOM)
        )
        await lk.sip.create_dispatch_rule(
            sip.CreateSIPDispatchRuleRequest(dispatch_rule=sip.SIPDispatchRuleInfo(rule=rule))
        )
    phones = [Phone(address, f"+1555000{n}") for n, address in enumerate(PHONES)]
    pinger = Pinger(PINGER, port)
    try:
        # The first rings until the second joins the room: then both are answered.
        await asyncio.gather(*(asyncio.to_thread(p.dial, port, called) for p in phones))
        for phone in phones:
            phone.start_media()
        await harness.eventually(
            lambda: all(len(p.arrivals) > 25 for p in phones), "the phones to hear each other"
        )
        pinger.start()
        await harness.eventually(lambda: len(pinger.latencies) >= 20, "OPTIONS answered")
        rss_before = rss_bytes(pid)
        quiet = len(pinger.latencies)
        cpu_before, started = cpu_seconds(pid), time.monotonic()
        run = await harness.sipp(
            SIPP_FLOOD,
            port,
            calls=invites,
            rate=rate,
            hold_ms=hold_ms,
            keys={"called": called},
            limit=invites / rate + hold_ms / 1000 + 20,
            timeout_error=False,
            extra=["-recv_timeout", "2000", "-buff_size", "4194304", "-max_recv_loops", "10000"],
        )
        ended = time.monotonic()
        cpu = (cpu_seconds(pid) - cpu_before) / (ended - started)
        options = pinger.latencies[quiet:]
        lost = pinger.lost
        metrics = await asyncio.to_thread(server.metrics)
        try:
            await harness.eventually(
                calls_back_to(server, len(phones)),
                "the flood's calls to end",
                timeout=drain_timeout,
            )
            drained = time.monotonic() - ended
        except AssertionError:
            drained = math.inf  # still up at the deadline (answered, then abandoned by sipp)
        rss_after = rss_bytes(pid)
        pinger.stop()
        worst_gap = max(p.worst_gap(started, ended) for p in phones)
        for phone in phones:
            await asyncio.to_thread(phone.hang_up)
        if drained < math.inf:
            await harness.eventually(calls_back_to(server, 0), "the phones' call to end")
    finally:
        pinger.stop()
        for phone in phones:
            phone.close()
    return FloodResult(
        invites=invites,
        rate=rate,
        seconds=ended - started,
        sipp_code=run.code,
        sipp_out=run.out,
        worst_gap=worst_gap,
        sent_late=max(p.sent_late for p in phones),
        options=options,
        options_lost=lost,
        cpu=cpu,
        rss_before=rss_before,
        rss_after=rss_after,
        drained=drained,
        metrics=metrics,
    )


def calls_back_to(server: Any, count: int) -> Callable[[], Awaitable[bool]]:
    """A check for `eventually`: the server's `sipbridge_calls_active` is `count`."""

    async def check() -> bool:
        got = await asyncio.to_thread(server.metrics)
        return bool(got.get("sipbridge_calls_active", 0.0) == count)

    return check
