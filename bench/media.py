"""Media benchmark: N relayed calls with real RTP both ways, through sipbridge and through
Debian's rtpengine (and optionally another sipbridge build) with the same generator in one run.

    .venv/bin/python bench/media.py [--steps 50,200,400,800] [--rounds 1] [--seconds 10]
                                    [--peers sipbridge,rtpengine[,before]] [--before-src DIR]
                                    [--warmup 1] [--cps 200] [--slots 20] [--keep-going] [--keep]

A relayed call is two legs, counted the way a media relay counts them: for sipbridge, two SIP
calls (INVITEs) that meet in one room; for rtpengine, one offer/answer call (each side one leg).
N relayed calls are 2N streams of 20 ms PCMU each way. CPU "per call" is per relayed call (the
per-leg figure is half of it, in the JSON): earlier versions of this bench counted legs as calls,
which is why their 0.11% per call was half of what a relay's users measure (issue 18).

Peers (`--peers`, in one run, each step driven once per peer, the order alternating step by step
so that neither always runs on the warmer machine):
- sipbridge: this tree, `sipbridge serve` on loopback;
- rtpengine: Debian's `rtpengine` 10.5 (`apt-get install rtpengine-daemon`; the bench says so
  when it is missing), userspace forwarding only (`--table=-1`, no kernel module), controlled
  over its ng protocol (bench/rtpengine.py: offer with A's SDP, answer with B's, delete);
- before: sipbridge from another source tree (`--before-src`, e.g. `git archive` of an older
  commit), for before/after figures in the same conditions.
`--rounds` repeats the whole ladder; the summary gives each figure's range over the rounds and
the ratio of sipbridge's CPU per relayed call to each other peer's, round by round.

Rooms: one dispatch rule created through the official `livekit-api` client,
`SIPDispatchRuleCallee(room_prefix="pair")`. Calls 2k and 2k+1 of a step dial the same number,
so they meet in one room; the server answers both once the second is in, and forwards each
leg's packets to the other (same codec: header rewritten, payload bytes unchanged).

The load generator is a child process (this file with --generator), one per step, on its own
epoll loop (no asyncio: nothing between a deadline and a send). Its RTP loop - the schedule, the
sends, the receives and every per-packet figure below - runs in C (bench/_rtpgen.c, built with
the system's cc on first use into build/bench/, driven through ctypes by bench/rtpgen.py;
`--engine python` runs the same loop in the interpreter, as the JSON's "generator_engine" says).
In Python the generator used a whole core at 800 relayed calls and fell behind its own
schedule (it sent 84-89% of its packets), so the relay could not be judged there; in C it sends
them all with 79-83% of a core, most of it the kernel's (a send on loopback delivers into the
receiving socket), and at 200 relayed calls 20% against Python's 35-40%.
It acts as N SIP UACs over one UDP socket: INVITE paced at --cps (PCMU + telephone-event,
a=rtcp to a second socket per call), 100/180/200, ACK; CANCEL for a call not answered in time;
BYE for every call at the end of the step, each 200 to a BYE checked. Each call has its own
RTP socket with a 1 MiB receive buffer, bound to port 0 (the ephemeral range); the server's
--rtp-ports range is chosen outside it.

Sending: one shared schedule of absolute deadlines on CLOCK_MONOTONIC, 20 ms per frame split
into --slots phases (1 ms apart by default); call i sends in phase i % slots, spread as the
phases of independent phones are (--slots 1: every call in one burst). Each 160-byte PCMU
payload starts with the send time (CLOCK_REALTIME ns, taken just before sendto), the sending
call's index and a packet counter; the rest is mu-law silence.

Receiving: a datagram's arrival time is the kernel's receive timestamp (SO_TIMESTAMPNS, the
same CLOCK_REALTIME), so the generator's own scheduling delays do not count. Per packet:
- latency = arrival - embedded send time, one way generator -> server -> generator;
  "added" = that minus the same percentile of a baseline measured once at the start without
  the server (each call's socket sending straight to its partner's, same schedule);
- loss: packets each call sent within the window vs distinct packets of it its partner
  received (by the embedded counter, so the server's sequence rewriting hides nothing); gaps
  in the server's RTP sequence numbers, duplicates and reordering go in the JSON as checks;
- misrouted: a packet whose embedded call index is not the receiver's partner. The server's
  own silence frames (a leg alone in its room after its partner hung up) are counted apart;
- pacing jitter: |interarrival - 20 ms| of consecutive packets of a stream at the receiver,
  p99 ("srv"); the generator's own pacing, |interval between its sends - 20 ms|, measured on
  the sending side the same way ("gen"), so the server's share is the difference.

The window: from --warmup seconds after the last call was answered, for --seconds, by the
packets' send times; then the generator stops sending, waits (up to 3 s) for the window's
packets still on their way and hangs up. CPU over the window: the server's utime+stime from
/proc/<pid>/stat (all threads) as % of one core (its media path is one event loop: one core
is its ceiling), per call = that / N; the generator's own CPU (getrusage), so readers see it
was not the bottleneck; "other" = the machine's busy time (/proc/stat) minus both: other
processes on this shared machine compete for the same cores, and the latency tail follows
them. "skip": ticks of the server's 20 ms media clock skipped (its event loop was > 20 ms
late), from /metrics, with the change in the server's RTP counters over each step in the JSON
("server_metrics", each counter's meaning in "server_metrics_meaning");
"udp drop": the whole system's UDP buffer drops (any process's).

Before each step the bench waits up to --quiet-wait seconds for a second in which other
processes use under 15% of a core. Stops after a step at which every peer lost packets or
failed a call (--keep-going runs every step). Goals (issue 18,
printed as "issue 18 goal"): sipbridge's CPU per relayed call at most rtpengine's at 50, 200 and
400 relayed calls, and 800 relayed calls with 0 loss and added latency p95 <= 2 ms.

Every loop is bounded in count and time; only 127.0.0.1; every process started is stopped.
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import json
import os
import platform
import resource
import secrets
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from livekit import api
from livekit.protocol import room, sip
from tests.helpers import API_KEY, API_SECRET, ServerProcess, free_sip_port

from bench import rtpengine, rtpgen
from bench.common import (
    PCMU_PT,
    TICKS,
    cpu_seconds,
    ephemeral_range,
    invite,
    machine_ticks,
    pct,
    print_result,
    scrape,
    self_cpu,
    udp_counters,
    wait_quiet,
)

FRAME_NS = 20_000_000
SAMPLES = 160  # PCMU, 20 ms at 8 kHz
# RTP header (12 bytes), then the payload's stamp: send time (ns), call index, packet counter.
PACKET = struct.Struct("!BBHIIqII")
RTP_HEADER = 12
FILL = b"\xff" * (RTP_HEADER + SAMPLES - PACKET.size)  # mu-law silence
STAMP = struct.Struct("!qII")
SILENCE = b"\xff" * SAMPLES
SEQ = struct.Struct("!H")
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; not exported by Python 3.11
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
TIMESPEC = struct.Struct("@qq")
ANC_SIZE = socket.CMSG_SPACE(TIMESPEC.size)
RTP_BUFFER = 1 << 20
SIP_BUFFER = 4 << 20
DRAIN_LIMIT = 64  # datagrams read per socket per wake-up
T1_NS = 500_000_000
TRANSACTION_NS = 8_000_000_000
DRAIN_S = 3.0  # for the window's packets still on their way
BYE_WITHIN_S = 8.0  # every BYE of a step sent within this (the server ends calls silent 15 s)
MAX_CALLS = 2000
MAX_STEPS = 20
RULE_PREFIX = "pair"
COMPACT = {
    "v": "via",
    "f": "from",
    "t": "to",
    "i": "call-id",
    "m": "contact",
    "l": "content-length",
}


# -- /proc --------------------------------------------------------------------------------------


def percentile(ordered: list[int], p: float) -> float | None:
    """The p-th percentile (nearest rank) of sorted nanosecond values, in ms."""
    value = pct(ordered, p)
    return None if value is None else round(value / 1e6, 3)


def dist_ms(values: array[int]) -> dict[str, float | None]:
    ordered = sorted(values)
    return {
        "p50": percentile(ordered, 50),
        "p95": percentile(ordered, 95),
        "p99": percentile(ordered, 99),
        "max": round(ordered[-1] / 1e6, 3) if ordered else None,
        "count": float(len(ordered)),
    }


# -- the load generator (child process) ----------------------------------------------------------


def _bind_udp(buffer: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, buffer)  # root: past rmem_max
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


def parse_sip(data: bytes) -> tuple[str, list[tuple[str, str]], bytes]:
    """(first line, [(lower-case full header name, value)], body)."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode(errors="replace").split("\r\n")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            key = name.strip().lower()
            headers.append((COMPACT.get(key, key), value.strip()))
    return lines[0], headers, body


def header(headers: list[tuple[str, str]], name: str) -> str:
    return next((v for k, v in headers if k == name), "")


def sdp_media(body: bytes) -> tuple[str, int] | None:
    """The audio address of an SDP answer: (the last c= address, the m=audio port)."""
    address, port = "", 0
    for line in body.decode(errors="replace").splitlines():
        if line.startswith("c=IN IP4 "):
            address = line.split()[2]  # a media-level c= follows the session one
        elif line.startswith("m=audio "):
            port = int(line.split()[1])
    return (address, port) if address and port else None


class Call:
    __slots__ = (
        "ack",
        "answered_at",
        "branch",
        "bye_status",
        "call_id",
        "contact",
        "counter",
        "from_hdr",
        "idx",
        "invite",
        "last_recv_arrival",
        "last_recv_counter",
        "last_send_ns",
        "last_seq",
        "marker",
        "partner",
        "provisional",
        "received",
        "remote",
        "rtcp",
        "rtcp_in",
        "rtp",
        "sent",
        "seq",
        "seq_gaps",
        "ssrc",
        "state",
        "status",
        "to_hdr",
        "ts",
        "tx_at",
        "tx_deadline",
        "tx_interval",
        "tx_msg",
    )

    def __init__(self, idx: int) -> None:
        self.idx = idx
        self.partner = idx ^ 1
        self.rtp = _bind_udp(RTP_BUFFER)
        self.rtcp = _bind_udp(64 * 1024)
        self.remote: tuple[str, int] | None = None
        self.state = "new"  # inviting, up, failed, bye, ended, gone
        self.status = 0
        self.bye_status = 0
        self.provisional = False
        self.answered_at = 0
        self.call_id = self.branch = self.from_hdr = self.to_hdr = self.contact = ""
        self.invite = self.ack = self.tx_msg = b""
        self.tx_at = self.tx_deadline = self.tx_interval = 0
        self.ssrc = secrets.randbits(32)
        self.seq = secrets.randbits(16)
        self.ts = secrets.randbits(32)
        self.marker = 0x80
        self.counter = 0
        self.sent = 0  # packets sent in the window
        self.received = 0  # the partner's packets received, sent in the window
        self.last_send_ns = 0
        self.last_recv_counter = -1
        self.last_recv_arrival = 0
        self.last_seq = -1
        self.seq_gaps = 0
        self.rtcp_in = 0

    def close(self) -> None:
        self.rtp.close()
        self.rtcp.close()


class Generator:
    """N SIP UACs streaming RTP on one epoll loop; `run` returns the step's figures."""

    def __init__(self, opts: argparse.Namespace) -> None:
        self.n = opts.calls
        self.direct = opts.direct
        self.cps = opts.cps
        self.bye_cps = opts.cps
        self.slots = opts.slots
        self.slot_ns = FRAME_NS // self.slots
        self.seconds = opts.seconds
        self.warmup = opts.warmup
        self.step = opts.step
        self.server_pid = opts.server_pid
        self.rtpengine = bool(opts.rtpengine_ng)
        self.ng = (
            rtpengine.NgClient(("127.0.0.1", opts.rtpengine_ng)) if opts.rtpengine_ng else None
        )
        host, port = (opts.server_sip or "127.0.0.1:0").rsplit(":", 1)
        self.server = (host, int(port))
        self.ep = select.epoll()
        self.sip = _bind_udp(SIP_BUFFER)
        self.sip_port = self.sip.getsockname()[1]
        self.calls = [Call(i) for i in range(self.n)]
        self.by_fd: dict[int, Call] = {}
        self.by_call_id: dict[str, Call] = {}
        self.rtcp_fds: dict[int, Call] = {}
        # The RTP loop: in C (bench/_rtpgen.c) unless asked for Python or it cannot be built.
        self.engine: rtpgen.Engine | None = None
        self.engine_name = "python"
        lib = rtpgen.load() if opts.engine == "c" else None
        if lib is not None:
            self.engine = rtpgen.Engine(lib, self.n, self.slots, self.slot_ns)
            self.engine_name = "c"
            self.engine.watch_sip(self.sip)
            for call in self.calls:
                self.engine.phone(
                    call.idx, call.rtp, call.rtcp, ssrc=call.ssrc, seq=call.seq, ts=call.ts
                )
        else:
            if opts.engine == "c":
                self.engine_name = f"python (the C engine: {rtpgen.why_not})"
            self.ep.register(self.sip.fileno(), select.EPOLLIN)
            for call in self.calls:
                self.by_fd[call.rtp.fileno()] = call
                self.rtcp_fds[call.rtcp.fileno()] = call
                self.ep.register(call.rtp.fileno(), select.EPOLLIN)
                self.ep.register(call.rtcp.fileno(), select.EPOLLIN)
        self.slot_calls: list[list[Call]] = [[] for _ in range(self.slots)]
        self.streaming = True
        self.next_slot_at = 0
        self.slot = 0
        self.win_start = 1 << 62  # CLOCK_REALTIME ns: nothing counts before the window opens
        self.win_end = 1 << 62
        self.pending: set[Call] = set()
        self.invite_queue: list[Call] = []
        self.bye_queue: list[Call] = []
        self.next_paced_at = 0
        self.next_timer_check = 0
        # figures
        self.latency: array[int] = array("q")
        self.recv_jitter: array[int] = array("q")
        self.send_jitter: array[int] = array("q")
        self.lateness: array[int] = array("q")
        self.misrouted = 0
        self.server_silence = 0
        self.misrouted_samples: list[dict[str, object]] = []
        self.duplicates = 0
        self.window_sent = 0
        self.window_received = 0
        self.reordered = 0
        self.stray = 0
        self.send_errors = 0
        self.recv_errors = 0
        self.statuses: dict[str, int] = {}
        self.server_requests: dict[str, int] = {}

    # -- the loop ---------------------------------------------------------------------------

    def spin(self, seconds: float, done: Callable[[], bool] | None = None) -> None:
        """Run the loop for up to `seconds`, or until `done()`."""
        until = time.monotonic_ns() + int(seconds * 1e9)
        next_done_check = 0
        for _ in range(int(seconds * 200_000) + 1000):  # bounded: ~200k turns a second at most
            now = time.monotonic_ns()
            if now >= until:
                return
            if done is not None and now >= next_done_check:
                if done():
                    return
                next_done_check = now + 10_000_000
            if now >= self.next_timer_check:
                self.sip_timers(now)
            wake = min(until, self.next_timer_check)
            if done is not None:
                wake = min(wake, next_done_check)
            if self.engine is None:
                self._turn(now, wake)
            elif self.engine.run(wake):  # the RTP loop in C, back when SIP is readable
                self.read_sip()

    def _turn(self, now: int, wake: int) -> None:
        """One turn of the Python RTP loop: the slots due, then wait for sockets until the
        next slot or `wake`."""
        late = 0
        while self.next_slot_at <= now and late < 4 * self.slots:
            self.send_slot(now)
            late += 1
        if late >= 4 * self.slots:  # far behind (stalled): resume the schedule from now
            self.next_slot_at = now + self.slot_ns
        wait = min(self.next_slot_at, wake) - time.monotonic_ns()
        if wait >= 2_000_000:
            events = self.ep.poll((wait // 1_000_000 - 1) / 1000)  # epoll rounds up to whole ms
        else:
            events = self.ep.poll(0)
            if not events and wait > 0:
                time.sleep(wait / 1e9)  # sub-ms: clock_nanosleep
        for fd, _ in events:
            call = self.by_fd.get(fd)
            if call is not None:
                self.read_rtp(call)
            elif fd == self.sip.fileno():
                self.read_sip()
            else:
                self.read_rtcp(self.rtcp_fds[fd])

    def window_counts(self) -> tuple[int, int]:
        """(packets sent in the window, of those received so far)."""
        if self.engine is not None:
            return self.engine.counter("window_sent"), self.engine.counter("window_received")
        return self.window_sent, self.window_received

    def send_slot(self, now_mono: int) -> None:
        slot_at = self.next_slot_at
        self.next_slot_at += self.slot_ns
        calls = self.slot_calls[self.slot]
        self.slot = (self.slot + 1) % self.slots
        if not self.streaming or not calls:
            return
        pack, time_ns = PACKET.pack, time.time_ns
        win_start, win_end = self.win_start, self.win_end
        measuring = False
        for call in calls:
            remote = call.remote
            if remote is None:
                continue
            sent_at = time_ns()
            data = (
                pack(
                    0x80,
                    PCMU_PT | call.marker,
                    call.seq,
                    call.ts,
                    call.ssrc,
                    sent_at,
                    call.idx,
                    call.counter,
                )
                + FILL
            )
            call.marker = 0
            call.seq = (call.seq + 1) & 0xFFFF
            call.ts = (call.ts + SAMPLES) & 0xFFFFFFFF
            call.counter += 1
            try:
                call.rtp.sendto(data, remote)
            except OSError:
                self.send_errors += 1
                continue
            if win_start <= sent_at < win_end:
                measuring = True
                call.sent += 1
                self.window_sent += 1
                if call.last_send_ns:
                    self.send_jitter.append(abs(sent_at - call.last_send_ns - FRAME_NS))
            call.last_send_ns = sent_at
        if measuring:
            self.lateness.append(max(0, now_mono - slot_at))

    def read_rtp(self, call: Call) -> None:
        recvmsg = call.rtp.recvmsg
        unpack_stamp, unpack_seq, unpack_ts = STAMP.unpack_from, SEQ.unpack_from, TIMESPEC.unpack
        partner = call.partner
        win_start, win_end = self.win_start, self.win_end
        for _ in range(DRAIN_LIMIT):
            try:
                data, anc, _, _ = recvmsg(2048, ANC_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.recv_errors += 1  # ICMP unreachable for an earlier send and the like
                continue
            if anc:
                sec, nsec = unpack_ts(anc[0][2][: TIMESPEC.size])
                arrival = sec * 1_000_000_000 + nsec
            else:
                arrival = time.time_ns()
            if len(data) < PACKET.size or data[1] & 0x7F != PCMU_PT:
                self.stray += 1
                continue
            sent_at, src, counter = unpack_stamp(data, RTP_HEADER)
            if src != partner and sent_at == -1 and data[RTP_HEADER:] == SILENCE:
                self.server_silence += 1  # the server's own frame: a leg alone in its room
                continue
            if src != partner:
                self.misrouted += 1
                if len(self.misrouted_samples) < 10:
                    (seq,) = unpack_seq(data, 2)
                    self.misrouted_samples.append(
                        {
                            "to_call": call.idx,
                            "from_call": src,
                            "counter": counter,
                            "seq": seq,
                            "to_call_state": call.state,
                            "ms_after_answer": round(
                                (time.monotonic_ns() - call.answered_at) / 1e6, 1
                            ),
                        }
                    )
                continue
            (seq,) = unpack_seq(data, 2)
            if call.last_seq >= 0:
                gap = (seq - call.last_seq - 1) & 0xFFFF
                if gap < 0x8000:
                    call.seq_gaps += gap
                    call.last_seq = seq
            else:
                call.last_seq = seq
            last = call.last_recv_counter
            if counter == last:
                self.duplicates += 1
                continue
            in_window = win_start <= sent_at < win_end
            if counter < last:
                self.reordered += 1
                if in_window:
                    call.received += 1
                    self.window_received += 1
                    self.latency.append(arrival - sent_at)
                continue
            if in_window:
                call.received += 1
                self.window_received += 1
                self.latency.append(arrival - sent_at)
                if counter == last + 1:
                    self.recv_jitter.append(abs(arrival - call.last_recv_arrival - FRAME_NS))
            call.last_recv_counter = counter
            call.last_recv_arrival = arrival

    def read_rtcp(self, call: Call) -> None:
        for _ in range(DRAIN_LIMIT):
            try:
                call.rtcp.recv(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            call.rtcp_in += 1

    # -- SIP --------------------------------------------------------------------------------

    def _send_sip(self, data: bytes) -> None:
        try:
            self.sip.sendto(data, self.server)
        except OSError:
            self.send_errors += 1

    def _via(self, branch: str) -> str:
        return f"Via: SIP/2.0/UDP 127.0.0.1:{self.sip_port};branch={branch};rport"

    def invite(self, call: Call, now: int) -> None:
        i = call.idx
        number = f"{self.step:02d}{i // 2:05d}"
        call.call_id = f"media-{self.step}-{i}-{secrets.token_hex(6)}"
        call.branch = "z9hG4bK" + secrets.token_hex(8)
        call.from_hdr = (
            f"From: <sip:+1555{self.step:02d}{i:05d}@127.0.0.1>;tag={secrets.token_hex(4)}"
        )
        call.invite = invite(
            number=number,
            server=self.server,
            via=self._via(call.branch),
            from_hdr=call.from_hdr,
            call_id=call.call_id,
            contact=f"sip:caller{i}@127.0.0.1:{self.sip_port}",
            origin="gen",
            session=i + 1,
            rtp_port=call.rtp.getsockname()[1],
            rtcp_port=call.rtcp.getsockname()[1],
        )
        call.state = "inviting"
        self.by_call_id[call.call_id] = call
        self._start_tx(call, call.invite, now)

    def _start_tx(self, call: Call, msg: bytes, now: int) -> None:
        call.tx_msg = msg
        call.tx_interval = T1_NS
        call.tx_at = now + T1_NS
        call.tx_deadline = now + TRANSACTION_NS
        self.pending.add(call)
        self._send_sip(msg)

    def _in_dialog(self, call: Call, method: str, cseq: int, branch: str) -> bytes:
        return (
            f"{method} {call.contact} SIP/2.0\r\n{self._via(branch)}\r\nMax-Forwards: 70\r\n"
            f"{call.from_hdr}\r\n{call.to_hdr}\r\nCall-ID: {call.call_id}\r\n"
            f"CSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
        ).encode()

    def bye(self, call: Call, now: int) -> None:
        call.state = "bye"
        self._start_tx(call, self._in_dialog(call, "BYE", 2, "z9hG4bK" + secrets.token_hex(8)), now)

    def cancel(self, call: Call) -> None:
        number = f"{self.step:02d}{call.idx // 2:05d}"
        self._send_sip(
            (
                f"CANCEL sip:{number}@{self.server[0]}:{self.server[1]} SIP/2.0\r\n"
                f"{self._via(call.branch)}\r\nMax-Forwards: 70\r\n{call.from_hdr}\r\n"
                f"To: <sip:{number}@{self.server[0]}>\r\nCall-ID: {call.call_id}\r\n"
                f"CSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n"
            ).encode()
        )

    def sip_timers(self, now: int) -> None:
        self.next_timer_check = now + 5_000_000
        for _ in range(100):
            if now < self.next_paced_at or not (self.invite_queue or self.bye_queue):
                break
            if self.invite_queue:
                self.invite(self.invite_queue.pop(), now)
            else:
                self.bye(self.bye_queue.pop(), now)
            rate = self.cps if self.invite_queue else self.bye_cps
            self.next_paced_at = max(self.next_paced_at + int(1e9 / rate), now - 50_000_000)
        if self.invite_queue or self.bye_queue:
            self.next_timer_check = min(self.next_timer_check, self.next_paced_at)
        for call in [c for c in self.pending if now >= c.tx_at]:
            if now >= call.tx_deadline:
                self.pending.discard(call)
                if call.state == "inviting":
                    call.state, call.status = "failed", 408
                elif call.state == "bye":
                    call.state, call.bye_status = "ended", 408
                continue
            if call.state == "inviting" and call.provisional:
                call.tx_at = call.tx_deadline  # a provisional stops INVITE retransmissions
                continue
            self._send_sip(call.tx_msg)
            call.tx_interval = min(call.tx_interval * 2, 4 * T1_NS)
            call.tx_at = now + call.tx_interval

    def read_sip(self) -> None:
        for _ in range(1024):
            try:
                data = self.sip.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            try:
                self.on_sip(data)
            except (ValueError, IndexError):
                self.statuses["unparsable"] = self.statuses.get("unparsable", 0) + 1

    def on_sip(self, data: bytes) -> None:
        first, headers, body = parse_sip(data)
        call = self.by_call_id.get(header(headers, "call-id"))
        if not first.startswith("SIP/2.0 "):
            method = first.split(" ", 1)[0]
            self.server_requests[method] = self.server_requests.get(method, 0) + 1
            if method != "ACK":
                keep = [f"{k.title()}: {v}" for k, v in headers if k in ("via", "from", "to")]
                keep += [f"Call-ID: {header(headers, 'call-id')}"]
                keep += [f"CSeq: {header(headers, 'cseq')}"]
                self._send_sip(
                    (
                        "SIP/2.0 200 OK\r\n" + "\r\n".join(keep) + "\r\nContent-Length: 0\r\n\r\n"
                    ).encode()
                )
            if method == "BYE" and call is not None and call.state in ("up", "inviting"):
                call.state = "gone"
                self._stop_stream(call)
            return
        status = int(first.split(" ", 2)[1])
        if call is None:
            return
        _, method = header(headers, "cseq").split()
        if method == "INVITE":
            self._invite_response(call, status, headers, body)
        elif method == "BYE" and call.state == "bye" and status >= 200:
            call.state, call.bye_status = "ended", status
            self.pending.discard(call)

    def _invite_response(
        self, call: Call, status: int, headers: list[tuple[str, str]], body: bytes
    ) -> None:
        if status < 200:
            call.provisional = True
            return
        if status >= 300:
            # Non-2xx: the ACK belongs to the INVITE transaction (same branch).
            if call.state == "inviting":
                self.pending.discard(call)
                call.state, call.status = "failed", status
                key = str(status)
                self.statuses[key] = self.statuses.get(key, 0) + 1
            number = f"{self.step:02d}{call.idx // 2:05d}"
            self._send_sip(
                (
                    f"ACK sip:{number}@{self.server[0]}:{self.server[1]} SIP/2.0\r\n"
                    f"{self._via(call.branch)}\r\nMax-Forwards: 70\r\n{call.from_hdr}\r\n"
                    f"To: {header(headers, 'to')}\r\nCall-ID: {call.call_id}\r\n"
                    f"CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
                ).encode()
            )
            return
        if call.state != "inviting":
            if call.ack:
                self._send_sip(call.ack)  # a retransmitted 200: ACK again
            return
        self.pending.discard(call)
        call.status = status
        call.to_hdr = f"To: {header(headers, 'to')}"
        contact = header(headers, "contact")
        start, end = contact.find("<"), contact.find(">")
        call.contact = contact[start + 1 : end] if 0 <= start < end else contact.split(";")[0]
        if not call.contact:
            call.contact = f"sip:{self.server[0]}:{self.server[1]}"
        call.ack = self._in_dialog(call, "ACK", 1, "z9hG4bK" + secrets.token_hex(8))
        self._send_sip(call.ack)
        call.remote = sdp_media(body)
        call.state = "up"
        call.answered_at = time.monotonic_ns()
        if call.remote is None:
            self.statuses["no_sdp"] = self.statuses.get("no_sdp", 0) + 1
            return
        self._start_stream(call)

    # -- rtpengine: the same pairs through its ng protocol instead of SIP --------------------

    def _bridge_through_rtpengine(self) -> None:
        """Each pair is one rtpengine call: offer with A's SDP, answer with B's (see
        bench/rtpengine.py); each side then sends to the port rtpengine gave it."""
        assert self.ng is not None
        for first in range(0, self.n - 1, 2):
            a, b = self.calls[first], self.calls[first + 1]
            call_id = f"media-{self.step}-{first // 2}-{secrets.token_hex(4)}"
            try:
                a.remote, b.remote = rtpengine.bridge(
                    self.ng,
                    call_id,
                    (a.rtp.getsockname()[1], a.rtcp.getsockname()[1]),
                    (b.rtp.getsockname()[1], b.rtcp.getsockname()[1]),
                )
            except (rtpengine.NgError, OSError, ValueError) as err:
                key = f"ng: {err}"[:80]
                self.statuses[key] = self.statuses.get(key, 0) + 1
                a.state = b.state = "failed"
                continue
            a.call_id = b.call_id = call_id
            for call in (a, b):
                call.state = "up"
                call.answered_at = time.monotonic_ns()
                self._start_stream(call)

    def _delete_from_rtpengine(self) -> None:
        assert self.ng is not None
        for first in range(0, self.n - 1, 2):
            a, b = self.calls[first], self.calls[first + 1]
            if a.state != "up":
                continue
            try:
                self.ng.command("delete", call_id=a.call_id, from_tag="a")
                status = 200
            except (rtpengine.NgError, OSError, ValueError):
                status = 500
            for call in (a, b):
                call.state, call.bye_status = "ended", status

    def _start_stream(self, call: Call) -> None:
        assert call.remote is not None
        if self.engine is not None:
            self.engine.stream(call.idx, call.remote, call.answered_at)
        else:
            self.slot_calls[call.idx % self.slots].append(call)

    def _stop_stream(self, call: Call) -> None:
        if self.engine is not None:
            self.engine.unstream(call.idx)
            return
        calls = self.slot_calls[call.idx % self.slots]
        if call in calls:
            calls.remove(call)

    # -- the step ---------------------------------------------------------------------------

    def count(self, *states: str) -> int:
        return sum(1 for c in self.calls if c.state in states)

    def run(self) -> dict[str, object]:
        began = time.monotonic()
        self.next_slot_at = time.monotonic_ns() + self.slot_ns
        if self.engine is not None:
            self.engine.schedule_from(self.next_slot_at)
        if self.rtpengine:
            self._bridge_through_rtpengine()
        elif self.direct:
            for call in self.calls:
                partner = self.calls[call.partner] if call.partner < self.n else call
                call.remote = partner.rtp.getsockname()
                call.state = "up"
                self._start_stream(call)
        else:
            self.invite_queue = list(reversed(self.calls))
            self.next_paced_at = time.monotonic_ns()
            setup_s = self.n / self.cps + 10
            self.spin(setup_s, lambda: not self.invite_queue and not self.count("inviting"))
            for call in self.calls:
                if call.state == "inviting":
                    self.cancel(call)
                    call.state, call.status = "failed", 487
        setup_wall = time.monotonic() - began
        self.spin(self.warmup)
        server0 = cpu_seconds(self.server_pid) if self.server_pid else 0.0
        self0, udp0, machine0 = self_cpu(), udp_counters(), machine_ticks()
        t0 = time.monotonic()
        self.win_start = time.time_ns()
        if self.engine is not None:
            self.engine.window(self.win_start, self.win_end)
        self.spin(self.seconds)
        self.win_end = time.time_ns()
        if self.engine is not None:
            self.engine.window(self.win_start, self.win_end)
        wall = time.monotonic() - t0
        server1 = cpu_seconds(self.server_pid) if self.server_pid else 0.0
        self1, udp1, machine1 = self_cpu(), udp_counters(), machine_ticks()
        self.streaming = False
        if self.engine is not None:
            self.engine.streaming(False)

        def drained() -> bool:
            sent, received = self.window_counts()
            return received >= sent

        self.spin(DRAIN_S, drained)
        self.spin(0.05)  # duplicates, if any
        up = self.count("up")
        gone = self.count("gone")
        if self.rtpengine:
            self._delete_from_rtpengine()
        elif not self.direct:
            self.bye_queue = [c for c in reversed(self.calls) if c.state == "up"]
            # Every BYE sent within BYE_WITHIN_S of the last packet: a call left silent longer
            # than the server's media timeout (15 s) is ended by the server - rightly - and our
            # late BYE meets a 481 (800 calls, 1,600 BYEs at 100/s took 16 s).
            self.bye_cps = max(self.cps, len(self.bye_queue) / BYE_WITHIN_S)
            self.next_paced_at = time.monotonic_ns()
            self.spin(
                len(self.bye_queue) / self.bye_cps + 10,
                lambda: not self.bye_queue and not self.count("bye"),
            )
        if self.engine is not None:
            self._collect(self.engine)
        sent = sum(c.sent for c in self.calls)
        received = sum(self.calls[c.partner].received for c in self.calls if c.partner < self.n)
        lost = sum(
            max(0, c.sent - self.calls[c.partner].received)
            for c in self.calls
            if c.partner < self.n
        )
        return {
            "calls": self.n,
            "direct": self.direct,
            "generator_engine": self.engine_name,
            "answered": up + gone,
            "failed": self.count("failed"),
            "failed_statuses": self.statuses,
            "ended_by_server": gone,
            "server_requests": self.server_requests,
            "byes_ok": sum(1 for c in self.calls if 200 <= c.bye_status < 300),
            "byes_failed": sum(1 for c in self.calls if c.bye_status >= 300),
            "setup_s": round(setup_wall, 2),
            "window_s": round(wall, 3),
            "packets_sent": sent,
            "packets_received": received,
            "lost": lost,
            "loss_pct": round(lost / sent * 100, 4) if sent else None,
            "silent_streams": sum(
                1 for c in self.calls if c.partner < self.n and self.calls[c.partner].received == 0
            ),
            "seq_gaps": sum(c.seq_gaps for c in self.calls),
            "misrouted": self.misrouted,
            "misrouted_samples": self.misrouted_samples,
            "server_silence_frames": self.server_silence,
            "duplicates": self.duplicates,
            "reordered": self.reordered,
            "stray": self.stray,
            "rtcp_in": sum(c.rtcp_in for c in self.calls),
            "send_errors": self.send_errors,
            "recv_errors": self.recv_errors,
            "latency_ms": dist_ms(self.latency),
            "recv_jitter_ms": dist_ms(self.recv_jitter),
            "send_jitter_ms": dist_ms(self.send_jitter),
            "send_late_ms": dist_ms(self.lateness),
            "server_cpu_s": round(server1 - server0, 3),
            "generator_cpu_s": round(self1 - self0, 3),
            "machine_busy_s": round((machine1[0] - machine0[0]) / TICKS, 3),
            "machine_steal_s": round((machine1[1] - machine0[1]) / TICKS, 3),
            "udp": {
                k: udp1.get(k, 0) - udp0.get(k, 0)
                for k in ("InDatagrams", "RcvbufErrors", "SndbufErrors", "InErrors")
            },
        }

    def _collect(self, engine: rtpgen.Engine) -> None:
        """The C engine's figures into the Python engine's fields."""
        for call in self.calls:
            call.sent = engine.figure(call.idx, rtpgen.SENT)
            call.received = engine.figure(call.idx, rtpgen.RECEIVED)
            call.seq_gaps = engine.figure(call.idx, rtpgen.SEQ_GAPS)
            call.rtcp_in = engine.figure(call.idx, rtpgen.RTCP_IN)
        self.window_sent, self.window_received = self.window_counts()
        self.misrouted = engine.counter("misrouted")
        self.server_silence = engine.counter("server_silence")
        self.duplicates = engine.counter("duplicates")
        self.reordered = engine.counter("reordered")
        self.stray = engine.counter("stray")
        self.send_errors += engine.counter("send_errors")
        self.recv_errors += engine.counter("recv_errors")
        self.latency = engine.series(rtpgen.LATENCY)
        self.recv_jitter = engine.series(rtpgen.RECV_JITTER)
        self.send_jitter = engine.series(rtpgen.SEND_JITTER)
        self.lateness = engine.series(rtpgen.LATENESS)
        self.misrouted_samples = [
            {
                "to_call": to,
                "from_call": src,
                "counter": counter,
                "seq": seq,
                "ms_after_answer": round(after / 1e6, 1),
            }
            for to, src, counter, seq, after in engine.samples()
        ]

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
        for call in self.calls:
            call.close()
        if self.ng is not None:
            self.ng.close()
        self.sip.close()
        self.ep.close()


def generator_main(opts: argparse.Namespace) -> int:
    gc.disable()  # no pauses in the send loop; the run is bounded and makes no cycles to speak of
    gen = Generator(opts)
    try:
        result = gen.run()
    finally:
        gen.close()
    print(json.dumps(result), flush=True)
    return 0


# -- the orchestrator ---------------------------------------------------------------------------


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of `pid` on `cpus` (threads it makes later inherit the mask of their maker)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(task.name), cpus)


def pinned_cpus(args: argparse.Namespace) -> tuple[set[int], set[int]] | None:
    """--pin: the relay (sipbridge or rtpengine) on the last CPU, the generator on the others."""
    cpus = sorted(os.sched_getaffinity(0))
    if not args.pin or len(cpus) < 2:
        return None
    return {cpus[-1]}, set(cpus[:-1])


def run_generator(
    *,
    calls: int,
    seconds: float,
    args: argparse.Namespace,
    step: int,
    server_sip: str = "",
    server_pid: int = 0,
    direct: bool = False,
    rtpengine_ng: int = 0,
) -> dict[str, object]:
    cmd = [
        *(sys.executable, str(Path(__file__).resolve()), "--generator"),
        *("--calls", str(calls), "--seconds", str(seconds), "--warmup", str(args.warmup)),
        *("--cps", str(args.cps), "--slots", str(args.slots), "--step", str(step)),
        *("--server-sip", server_sip, "--server-pid", str(server_pid)),
        *(["--direct"] if direct else []),
        *(["--rtpengine-ng", str(rtpengine_ng)] if rtpengine_ng else []),
        *("--engine", args.engine),
    ]
    limit = calls / args.cps * 2 + seconds + args.warmup + 60
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    cpus = pinned_cpus(args)
    if cpus is not None:
        pin(proc.pid, cpus[1])
    try:
        out, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = out.decode(errors="replace").strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"generator failed ({proc.returncode}): {err.decode()[-2000:]}")
    result: dict[str, object] = json.loads(lines[-1])
    return result


# The server's media counters (/metrics `sipbridge_media`) in a step's "server_metrics": each the
# change from before the step's first call to after its last one ended, summed over every leg
# (a relayed call is two legs). The JSON carries this table as "server_metrics_meaning". Until
# issue 18 the rtp_* totals came out twice the packets: every leg was released twice (the call's
# end and its media's end) and its counters added to the ended legs' totals each time.
SERVER_COUNTERS = {
    "rtp_packets_in": "RTP packets received, on every leg, each datagram once",
    "rtp_forwarded": "of those, packets relayed to the other leg (counted once, on the listener)",
    "rtp_packets_out": "RTP packets sent: the relayed ones and the server's own (silence, tones)",
    "rtp_wrong_source": "RTP packets dropped for coming from another address than the latched",
    "rtp_send_errors": "datagrams a send failed for (a full buffer, an unreachable peer)",
    "rtp_rtcp_out": "RTCP reports sent",
    "clock_skipped": "20 ms media-clock ticks skipped (the event loop over 20 ms late)",
    "clock_idle": "20 ms ticks passed without waking the loop (no room mixed)",
    "media_timeout": "legs ended for hearing nothing",
    "crelay_forwarded": "the part of rtp_forwarded the compiled relay engine relayed",
    "crelay_handed_back": "datagrams the engine handed to the event loop (first packets, DTMF)",
    "crelay_arms": "times a leg was given to the engine as a pure relay",
    "crelay_rounds": "the engine's wake-ups (each serves every socket ready by then)",
    "crelay_recv_calls": "the engine's recvmmsg calls (its io_uring mode: receives submitted)",
    "crelay_send_calls": "the engine's sendmmsg calls (its io_uring mode: sends submitted)",
    "crelay_enters": "the engine's io_uring_enter calls: its system calls besides epoll_wait",
}


def media_deltas(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    prefix = 'sipbridge_media{counter="'
    return {
        n: after.get(f'{prefix}{n}"}}', 0) - before.get(f'{prefix}{n}"}}', 0)
        for n in SERVER_COUNTERS
    }


async def create_rule(url: str) -> str:
    async with api.LiveKitAPI(url=url, api_key=API_KEY, api_secret=API_SECRET) as lk:
        rule = await lk.sip.create_dispatch_rule(
            sip.CreateSIPDispatchRuleRequest(
                dispatch_rule=sip.SIPDispatchRuleInfo(
                    rule=sip.SIPDispatchRule(
                        dispatch_rule_callee=sip.SIPDispatchRuleCallee(room_prefix=RULE_PREFIX)
                    ),
                    name="media bench pairs",
                )
            )
        )
        return str(rule.sip_dispatch_rule_id)


async def participants_left(url: str) -> int:
    """SIP participants still in the bench's rooms, through the official client."""
    async with api.LiveKitAPI(url=url, api_key=API_KEY, api_secret=API_SECRET) as lk:
        rooms = await lk.room.list_rooms(room.ListRoomsRequest())
        return sum(r.num_participants for r in rooms.rooms if r.name.startswith(RULE_PREFIX))


def wait_drained(url: str, timeout: float) -> float:
    """Wait for no active call and no RTP leg on the server; returns what is left."""
    deadline = time.monotonic() + timeout
    left = 0.0
    for _ in range(int(timeout * 5) + 1):
        m = scrape(url)
        left = m.get("sipbridge_calls_active", 0) + m.get('sipbridge_media{counter="legs"}', 0)
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return left


def _added(raw: dict[str, object], base: dict[str, object], p: str) -> float | None:
    r, b = raw.get(p), base.get(p)
    if not isinstance(r, float) or not isinstance(b, float):
        return None
    return round(r - b, 3)


def step_figures(
    n: int,
    gen: dict[str, object],
    baseline: dict[str, object],
    metrics: dict[str, float],
    legs_per_call: int = 1,
) -> dict[str, object]:
    """A step's figures; `n` calls of `legs_per_call` generator streams each (this bench: 2, a
    relayed call; bench/recording.py and bench/cluster.py count streams: 1)."""
    wall = gen["window_s"]
    server_cpu, gen_cpu = gen["server_cpu_s"], gen["generator_cpu_s"]
    assert isinstance(wall, float) and isinstance(server_cpu, float)
    assert isinstance(gen_cpu, float)
    latency, base_latency = gen["latency_ms"], baseline["latency_ms"]
    assert isinstance(latency, dict) and isinstance(base_latency, dict)
    server_pct = server_cpu / wall * 100
    busy = gen["machine_busy_s"]
    assert isinstance(busy, float)
    other_pct = max(0.0, (busy - server_cpu - gen_cpu) / wall * 100)
    loss = gen["loss_pct"]
    legs = legs_per_call * n
    clean = (
        gen["failed"] == 0
        and gen["answered"] == legs
        and gen["byes_ok"] == legs
        and gen["ended_by_server"] == 0
        and gen["misrouted"] == 0
    )
    return {
        "n": n,
        "legs": legs,
        "server_cpu_pct": round(server_pct, 1),
        "server_cpu_pct_machine": round(server_pct / (os.cpu_count() or 1), 1),
        "server_cpu_pct_per_call": round(server_pct / n, 3),
        "server_cpu_pct_per_leg": round(server_pct / legs, 4),
        "generator_cpu_pct": round(gen_cpu / wall * 100, 1),
        "other_cpu_pct": round(other_pct, 1),
        "loss_pct": loss,
        "lost": gen["lost"],
        "calls_ok": clean,
        "latency_ms": latency,
        "added_latency_ms": {p: _added(latency, base_latency, p) for p in ("p50", "p95", "p99")},
        "server_metrics": metrics,
        "generator": gen,
    }


HEADER = (
    f"{'N':>4} {'legs':>4} {'byes':>4} {'srv CPU%':>8} {'%/call':>7} {'gen/other%':>10} "
    f"{'sent':>7} {'lost':>5} {'loss %':>7} {'lat p50/p95/p99 ms':>20} {'added p50/p95':>14} "
    f"{'jit p99 srv/gen ms':>19} {'skip':>4} {'udp drop':>8}"
)


def _slash(*values: object) -> str:
    return "/".join(str(v) for v in values)


def _row(s: dict[str, object]) -> str:
    g = s["generator"]
    lat, added = s["latency_ms"], s["added_latency_ms"]
    assert isinstance(g, dict) and isinstance(lat, dict) and isinstance(added, dict)
    udp, metrics = g["udp"], s["server_metrics"]
    assert isinstance(metrics, dict)
    skipped = int(metrics.get("clock_skipped", 0))
    jitter = _slash(g["recv_jitter_ms"]["p99"], g["send_jitter_ms"]["p99"])
    return (
        f"{s['n']:>4} {g['answered']:>4} {g['byes_ok']:>4} {s['server_cpu_pct']:>8} "
        f"{s['server_cpu_pct_per_call']:>7} "
        f"{_slash(s['generator_cpu_pct'], s['other_cpu_pct']):>10} {g['packets_sent']:>7} "
        f"{g['lost']:>5} {g['loss_pct']:>7} {_slash(lat['p50'], lat['p95'], lat['p99']):>20} "
        f"{_slash(added['p50'], added['p95']):>14} {jitter:>19} {skipped:>4} "
        f"{udp['RcvbufErrors'] + udp['SndbufErrors']:>8}"
    )


def summarise(steps: list[dict[str, object]]) -> dict[str, object]:
    def good(s: dict[str, object]) -> bool:
        return s["calls_ok"] is True and s["lost"] == 0

    def meets(s: dict[str, object]) -> bool:
        g, added = s["generator"], s["added_latency_ms"]
        assert isinstance(g, dict) and isinstance(added, dict)
        p95, jitter = added["p95"], g["recv_jitter_ms"]["p99"]
        return (
            good(s)
            and float(s["server_cpu_pct"]) <= 60  # type: ignore[arg-type]
            and p95 is not None
            and p95 <= 40
            and jitter is not None
            and jitter <= 2
        )

    at = next((s for s in steps if s["n"] == 200), None)
    goal: dict[str, object] = {"measured": at is not None}
    if at is not None:
        g = at["generator"]
        added = at["added_latency_ms"]
        assert isinstance(g, dict) and isinstance(added, dict)
        cpu = at["server_cpu_pct"]
        assert isinstance(cpu, float)
        p95, jitter = added["p95"], g["recv_jitter_ms"]["p99"]
        goal.update(
            {
                "cpu_le_60": cpu <= 60,
                "zero_loss": good(at),
                "added_p95_le_40ms": p95 is not None and p95 <= 40,
                "jitter_p99_le_2ms": jitter is not None and jitter <= 2,
            }
        )
        goal["met"] = all(goal[k] for k in ("cpu_le_60", "zero_loss", "added_p95_le_40ms"))
        goal["met"] = bool(goal["met"] and goal["jitter_p99_le_2ms"])
    return {
        "max_calls_zero_loss": max((s["n"] for s in steps if good(s)), default=0),  # type: ignore[type-var]
        "first_loss_at": next((s["n"] for s in steps if not good(s)), None),
        "max_calls_meeting_every_goal": max((s["n"] for s in steps if meets(s)), default=0),  # type: ignore[type-var]
        "goal_200": goal,
    }


def choose_rtp_range(requested: str) -> str:
    """The server's RTP ports: as asked, else 4,500 port pairs just below the ephemeral range
    the generator binds from (a port both want is skipped by the server, but keep them apart;
    the interop tests use 14000-14999)."""
    if requested:
        return requested
    low, high = ephemeral_range()
    if low >= 24000:
        return f"{low - 9000}-{low - 1}"
    if high <= 56000:
        return f"{high + 1}-{high + 9000}"
    return "40000-49999"


PEERS = ("sipbridge", "rtpengine", "before")


@dataclasses.dataclass
class Peer:
    """One relay the generator drives: a sipbridge (SIP legs in rooms) or rtpengine (ng)."""

    label: str
    pid: int
    sip: str = ""  # sipbridge's SIP address
    url: str = ""  # sipbridge's HTTP address (metrics, rooms)
    ng_port: int = 0  # rtpengine's control port


def rtpengine_range(server_range: str) -> tuple[int, int]:
    """rtpengine's ports: the 4,500 pairs below the server's range, above the interop tests'."""
    low = int(server_range.split("-", maxsplit=1)[0])
    return max(15000, low - 9000), low - 1


def start_sipbridge(
    tmp: Path, label: str, rtp_range: str, src: str = "", env: dict[str, str] | None = None
) -> ServerProcess:
    server = ServerProcess(
        tmp / label,
        *("--sip", f"127.0.0.1:{free_sip_port()}", "--rtp-ports", rtp_range),
        *("--max-calls", "100000", "--sip-rate", "1000000", "--room-join-rate", "0"),
        *("--log-level", "warning"),
    )
    (tmp / label).mkdir()
    changes = dict(env or {})
    if src:  # another build: its own source tree first on the path
        changes["PYTHONPATH"] = src
    saved = {name: os.environ.get(name) for name in changes}
    os.environ.update(changes)
    try:
        server.start()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return server


def sipbridge_sip(server: ServerProcess) -> str:
    args = server.extra
    return args[args.index("--sip") + 1]


def split_range(rtp_range: str, parts: int) -> list[str]:
    low, high = (int(x) for x in rtp_range.split("-"))
    size = (high - low + 1) // max(1, parts)  # no sipbridge peer (--peers rtpengine): none
    return [f"{low + i * size}-{low + (i + 1) * size - 1}" for i in range(parts)]


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    return f"{lo:.3f}" if lo == hi else f"{lo:.3f}-{hi:.3f}"


BEHIND_MS = 20.0  # added latency p95 past this: the relay had a backlog


def kept_up(step: dict[str, object]) -> bool:
    added = step["added_latency_ms"]
    assert isinstance(added, dict)
    p95 = added["p95"]
    return bool(step["calls_ok"] and step["lost"] == 0 and p95 is not None and p95 <= BEHIND_MS)


def compare(steps: list[dict[str, object]], labels: list[str]) -> list[dict[str, object]]:
    """Per call count: each peer's CPU per call (range over the rounds it kept up in), loss,
    added p95, and the ratios of sipbridge to rtpengine and to the build before."""
    rows = []
    for n in sorted({int(s["n"]) for s in steps}):  # type: ignore[call-overload]
        row: dict[str, object] = {"n": n}
        for label in labels:
            every = [s for s in steps if s["n"] == n and s["peer"] == label]
            # A step where the relay fell behind (lost packets, failed calls, a backlog: its
            # added latency p95 past 20 ms) measured a CPU share capped by the machine, not
            # what the calls cost: left out of the ranges, counted apart.
            mine = [s for s in every if kept_up(s)]
            row[label] = {
                "cpu_pct_per_call": [s["server_cpu_pct_per_call"] for s in mine],
                "lost": [s["lost"] for s in mine],
                "added_p95_ms": [s["added_latency_ms"]["p95"] for s in mine],  # type: ignore[index]
                "jitter_p99_ms": [s["generator"]["recv_jitter_ms"]["p99"] for s in mine],  # type: ignore[index]
                "generator_cpu_pct": [s["generator_cpu_pct"] for s in mine],
                "calls_ok": all(s["calls_ok"] for s in every),
                "fell_behind": len(every) - len(mine),
            }
        for other in ("rtpengine", "before"):
            if "sipbridge" in labels and other in labels:
                ours = [  # paired by round, both kept up
                    s for s in steps if s["n"] == n and s["peer"] == "sipbridge" and kept_up(s)
                ]
                theirs = {
                    s["round"]: s
                    for s in steps
                    if s["n"] == n and s["peer"] == other and kept_up(s)
                }
                ratios = [
                    float(s["server_cpu_pct_per_call"])  # type: ignore[arg-type]
                    / float(theirs[s["round"]]["server_cpu_pct_per_call"])  # type: ignore[arg-type]
                    for s in ours
                    if s["round"] in theirs and float(theirs[s["round"]]["server_cpu_pct_per_call"])  # type: ignore[arg-type]
                ]
                row[f"ratio_to_{other}"] = [round(r, 2) for r in ratios]
        rows.append(row)
    return rows


def print_comparison(rows: list[dict[str, object]], labels: list[str]) -> None:
    head = f"{'N':>4} " + " ".join(f"{label + ' %/call':>16}" for label in labels)
    ratios = [o for o in ("rtpengine", "before") if rows and f"ratio_to_{o}" in rows[0]]
    head += "".join(f" {'sipbridge/' + o:>20}" for o in ratios)
    head += " " + " ".join(f"{label + ' lost/p95ms':>22}" for label in labels)
    print(head)
    for row in rows:
        line = f"{row['n']:>4} "
        cells = []
        for label in labels:
            figures = row[label]
            assert isinstance(figures, dict)
            cells.append(f"{_spread(figures['cpu_pct_per_call']):>16}")
        line += " ".join(cells)
        for o in ratios:
            values = row[f"ratio_to_{o}"]
            assert isinstance(values, list)
            line += f" {_spread(values):>20}"
        losses = []
        for label in labels:
            figures = row[label]
            assert isinstance(figures, dict)
            p95 = [v for v in figures["added_p95_ms"] if v is not None]
            behind = f" ({figures['fell_behind']} behind)" if figures["fell_behind"] else ""
            losses.append(f"{max(figures['lost'], default=0)}/{_spread(p95)}{behind}".rjust(22))
        print(line + " " + " ".join(losses))


def issue_goal(rows: list[dict[str, object]]) -> dict[str, object]:
    """Issue 18: CPU per relayed call at most rtpengine's at 50, 200 and 400 calls (every
    round), and 800 calls with 0 loss and added latency p95 <= 2 ms."""
    goal: dict[str, object] = {}
    for row in rows:
        n = row["n"]
        ratios = row.get("ratio_to_rtpengine")
        if n in (50, 200, 400) and isinstance(ratios, list) and ratios:
            goal[f"cpu_le_rtpengine_at_{n}"] = max(ratios) <= 1.0
        ours = row.get("sipbridge")
        if n == 800 and isinstance(ours, dict):
            p95 = [v for v in ours["added_p95_ms"] if v is not None]
            goal["800_no_loss_p95_le_2ms"] = bool(
                ours["calls_ok"]
                and not ours["fell_behind"]
                and p95
                and max(ours["lost"]) == 0
                and max(p95) <= 2.0
            )
    return goal


def orchestrate(args: argparse.Namespace) -> int:
    steps_n = [int(x) for x in args.steps.split(",") if x.strip()][:MAX_STEPS]
    if any(n <= 0 or 2 * n > MAX_CALLS for n in steps_n):
        print(f"--steps: relayed calls, up to {MAX_CALLS // 2}", file=sys.stderr)
        return 2
    if not 0 < args.seconds <= 60 or not 1 <= args.rounds <= 10:
        print("--seconds in (0, 60], --rounds 1-10", file=sys.stderr)
        return 2
    labels = [x.strip() for x in args.peers.split(",") if x.strip()]
    if not labels or any(x not in PEERS for x in labels):
        print(f"--peers: {', '.join(PEERS)}", file=sys.stderr)
        return 2
    if "before" in labels and not args.before_src:
        print("--peers before needs --before-src", file=sys.stderr)
        return 2
    if "rtpengine" in labels and rtpengine.Daemon.available() is None:
        print("rtpengine not installed (apt-get install rtpengine-daemon)", file=sys.stderr)
        return 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):  # children inherit it
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    # SIGTERM (a `timeout`, a kill) unwinds like ^C: the servers and rtpengine are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = Path(tempfile.mkdtemp(prefix="bench-media-"))
    rtp_range = choose_rtp_range(args.rtp_ports)
    sipbridges = [x for x in labels if x != "rtpengine"]
    ranges = dict(zip(sipbridges, split_range(rtp_range, len(sipbridges)), strict=True))
    servers: dict[str, ServerProcess] = {}
    daemon: rtpengine.Daemon | None = None
    peers: list[Peer] = []
    steps: list[dict[str, object]] = []
    baseline: dict[str, object] = {}
    idle: dict[str, float] = {}
    try:
        for label in labels:
            if label == "rtpengine":
                ng_port = free_sip_port()
                daemon = rtpengine.Daemon(
                    tmp / "rtpengine.log",
                    ng_port,
                    rtpengine_range(rtp_range),
                    args.rtpengine_threads,
                )
                daemon.start().close()
                assert daemon.proc is not None
                if (cpus := pinned_cpus(args)) is not None:
                    pin(daemon.proc.pid, cpus[0])
                peers.append(Peer(label, daemon.proc.pid, ng_port=ng_port))
                continue
            src = args.before_src if label == "before" else ""
            server = servers[label] = start_sipbridge(tmp, label, ranges[label], src)
            assert server.proc is not None
            if (cpus := pinned_cpus(args)) is not None:
                pin(server.proc.pid, cpus[0])
            asyncio.run(create_rule(server.url))
            peers.append(Peer(label, server.proc.pid, sip=sipbridge_sip(server), url=server.url))
        pids = [p.pid for p in peers]
        c0, t0 = [cpu_seconds(pid) for pid in pids], time.monotonic()
        time.sleep(2.0)
        for peer, before in zip(peers, c0, strict=True):
            idle[peer.label] = round(
                (cpu_seconds(peer.pid) - before) / (time.monotonic() - t0) * 100, 2
            )
        base_n = max(2, min(2 * max(steps_n), 200))
        baseline = run_generator(calls=base_n, seconds=3.0, args=args, step=0, direct=True)
        lat, jit = baseline["latency_ms"], baseline["recv_jitter_ms"]
        assert isinstance(lat, dict) and isinstance(jit, dict)
        print(
            f"baseline without a relay ({base_n} streams straight to their partners): "
            f"latency p50/p95/p99 {_slash(lat['p50'], lat['p95'], lat['p99'])} ms, pacing "
            f"jitter p99 {jit['p99']} ms; idle CPU % {idle}",
            file=sys.stderr,
            flush=True,
        )
        print(f"{'peer':>9} {'rnd':>3} " + HEADER, file=sys.stderr, flush=True)
        step = 0
        for rnd in range(args.rounds):
            for i, n in enumerate(steps_n):
                # alternate who goes first, so that neither always runs on the warmer machine
                order = peers if (i + rnd) % 2 == 0 else peers[::-1]
                failed = 0
                for peer in order:
                    step += 1
                    quiet = wait_quiet(args.quiet_wait, pids) if args.quiet_wait > 0 else None
                    before = scrape(peer.url) if peer.url else {}
                    gen = run_generator(
                        calls=2 * n,
                        seconds=args.seconds,
                        args=args,
                        step=step % 100,
                        server_sip=peer.sip,
                        server_pid=peer.pid,
                        rtpengine_ng=peer.ng_port,
                    )
                    left = wait_drained(peer.url, 15) if peer.url else 0.0
                    metrics = media_deltas(before, scrape(peer.url)) if peer.url else {}
                    # a relayed call is two legs: two SIP calls in one room, one rtpengine call
                    figures = step_figures(n, gen, baseline, metrics, legs_per_call=2)
                    figures.update(peer=peer.label, round=rnd, left_on_server=left)
                    figures["other_cpu_pct_before"] = quiet
                    if peer.url:
                        figures["participants_left"] = asyncio.run(participants_left(peer.url))
                    steps.append(figures)
                    print(f"{peer.label:>9} {rnd:>3} " + _row(figures), file=sys.stderr, flush=True)
                    failed += not figures["calls_ok"] or figures["lost"] != 0
                if failed == len(peers) and not args.keep_going:
                    break
    finally:
        for server in servers.values():
            if server.proc is not None:
                with contextlib.suppress(Exception):
                    server.stop(timeout=60)
        if daemon is not None:
            daemon.stop()
        if args.keep:
            print(f"kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"{'peer':>9} {'rnd':>3} " + HEADER)
    for s in steps:
        print(f"{s['peer']:>9} {s['round']:>3} " + _row(s))
    rows = compare(steps, labels)
    print()
    print_comparison(rows, labels)
    goal = issue_goal(rows)
    summary = summarise([s for s in steps if s["peer"] == "sipbridge"])
    print(f"issue 18 goal: {json.dumps(goal)}")
    busy = [
        f"{s['peer']} {s['n']} ({s['other_cpu_pct']}%)"
        for s in steps
        if float(s["other_cpu_pct"]) > 15  # type: ignore[arg-type]
    ]
    if busy:
        print(
            "note: other processes used more than 15% of a core during "
            + ", ".join(busy)
            + ": latency and jitter tails are disturbed; compare ratios within the run"
        )
    line = {
        "bench": "media",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "pinned": pinned_cpus(args) is not None,
        "seconds_per_step": args.seconds,
        "slots": args.slots,
        "rounds": args.rounds,
        "peers": labels,
        "rtp_ports": rtp_range,
        "idle_cpu_pct": idle,
        "baseline": baseline,
        "comparison": rows,
        "issue_goal": goal,
        "server_metrics_meaning": SERVER_COUNTERS,
        **summary,
        "steps": steps,
    }
    print_result(line)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--steps", default="50,200,400,800", help="relayed calls (2 legs each)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window per step")
    parser.add_argument("--warmup", type=float, default=1.0, help="after the last answer")
    parser.add_argument("--cps", type=float, default=200.0, help="INVITEs (and BYEs) per second")
    parser.add_argument("--slots", type=int, default=20, help="send phases per 20 ms (1: burst)")
    parser.add_argument("--rtp-ports", default="", help="server's RTP range (LO-HI)")
    parser.add_argument(
        "--quiet-wait", type=float, default=10.0, help="max s to wait for a quiet machine per step"
    )
    parser.add_argument("--keep-going", action="store_true", help="run every step")
    parser.add_argument(
        "--peers",
        default="sipbridge,rtpengine",
        help="what to drive, in one run: sipbridge, rtpengine (Debian's, userspace), before "
        "(sipbridge from --before-src)",
    )
    parser.add_argument(
        "--before-src", default="", help="src/ of another sipbridge build, run as 'before'"
    )
    parser.add_argument("--rounds", type=int, default=1, help="the whole ladder, this many times")
    parser.add_argument("--rtpengine-threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--keep", action="store_true", help="keep the server log")
    parser.add_argument(
        "--pin",
        action="store_true",
        help="each relay (sipbridge, rtpengine) on the last CPU, the generator on the others",
    )
    parser.add_argument(
        "--engine",
        choices=("c", "python"),
        default="c",
        help="the generator's RTP loop: C (bench/_rtpgen.c, built with cc) or Python",
    )
    # the generator child
    parser.add_argument("--generator", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--calls", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--step", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--server-sip", default="", help=argparse.SUPPRESS)
    parser.add_argument("--server-pid", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--direct", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rtpengine-ng", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.slots < 1 or FRAME_NS % args.slots or args.cps <= 0:
        print("--slots must divide 20 ms in whole ns; --cps > 0", file=sys.stderr)
        return 2
    if args.generator:
        if not 0 < args.calls <= MAX_CALLS:
            return 2
        return generator_main(args)
    return orchestrate(args)


if __name__ == "__main__":
    raise SystemExit(main())
