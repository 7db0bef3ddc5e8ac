"""Outbound call benchmark: CreateSIPParticipant through the official `livekit-api` client at
rising rates against a real `sipbridge serve`, every call dialled out to a sipp UAS, until the
first failed call or the server falling behind; then the best rate held for longer than a room
outlives its call.

    .venv/bin/python bench/outbound.py [--rates 10,25,50,100,150,200,300,400] [--seconds 5]
                                       [--sustain-seconds 27] [--hold-ms 1000] [--rtp-echo]
                                       [--wait-answered] [--quiet-wait 10] [--keep-going] [--keep]

The load: this process calls `lk.sip.create_sip_participant` (one `LiveKitAPI`, uvloop) on a
fixed schedule of RATE calls/s for SECONDS, each call not waiting for the one before (at most
MAX_IN_FLIGHT requests open), each to its own room (`out-STEP-I`, as dialling agents do) and its
own number (`+1999` STEP I), through one outbound trunk per step pointing at that step's sipp.
By default `wait_until_answered=False`: the reply comes once the INVITE is out.

The callee: `sipp -sf` with UAS_SCENARIO (written to a temp dir), one per step with `-m CALLS
-buff_size 4194304`, wrapped in `timeout -k 5 -s INT`: 180, 200 with SDP (PCMU) at once, waits
for the ACK, holds --hold-ms, then hangs up itself (BYE; the 200 must come within 5 s); our
late retransmissions (INVITE, ACK) are let pass, as a carrier's would be. It sends
no RTP (as bench/inbound.py's caller; --rtp-echo echoes ours), so the system's UDP drop counter
in the JSON counts our RTP to sipp's unread media socket. The server's part of a call:
participant and track in a new room, INVITE, 180 -> ringing, 200 -> ACK and media (silence to
the phone), BYE -> 200, participant out, call logged; the room closes 20 s later.

Times, on the wire: a child process (this file with --capture) reads the loopback interface
through an AF_PACKET socket with a kernel filter for the UAS's port (root), with the kernel's
receive timestamps (SO_TIMESTAMPNS, CLOCK_REALTIME, ns). The bench takes CLOCK_REALTIME just
before each API call (the client's JWT signing and HTTP included), so:
- API->INVITE: request started -> the INVITE (found by its Request-URI user) on the wire;
- API reply: request -> reply received (monotonic clock);
- 200->ACK: sipp's 200 on the wire -> our ACK on the wire (server-side);
- BYE->200: sipp's BYE -> our 200 (server-side); INVITE retransmissions are counted too;
- the API floor: ListRooms (no room matches) one at a time through the same client, measured
  first: the client's and HTTP's share of every API figure.

CPU over each step (first request to sipp's exit): the server's utime+stime from /proc as % of
one core (its calls run on one event loop; the JSON splits it by thread) and ms per call; this
process (the API client), sipp and the capture apart; "other" = the machine's busy time minus
all of those (a shared machine: before each step the bench waits up to --quiet-wait s for half a
second in which others use under 15% of a core).

A step fails on any failed call: an API error, a call without INVITE, ACK or the 200 to its BYE
on the wire, a failed call in sipp's statistics or its exit status, a participant or call still
on the server 15 s after the step. It is behind when API->INVITE p99 passes 500 ms (T1: our
INVITE retransmissions start, the 180/200 still unread), the server used over 90% of
a core (no headroom left, as bench/media.py), or the requests went out at under 90% of the rate
(then the client is the limit: see its CPU). The steps stop at the first step failed or behind.

Sustained: a room stays 20 s (departure_timeout) after its call, so a 5 s step ends with far
fewer rooms open than a steady rate keeps, and each open room costs the server. The fastest step
kept up that used under 67% of a core runs again for --sustain-seconds (default 27); figures
"from 22 s on" are the steady state (as many rooms closing as opening): there too API->INVITE
p99 under 500 ms and the server under 90% of a core. If it is not kept up, once more at 75% of
the rate, after the server has ended what was left up.

Baseline: then sipp's own UAC (a scenario that takes the callee's BYE) against the same UAS
scenario, at the rate where the steps stopped and twice that, 3 s each: its CPU per call beside
the server's, and every call completed (so the callee side is not what limits).

Call log: after the server stopped, `sipbridge call list` must show every call of every step,
ended (SCS_DISCONNECTED).

Every loop is bounded in count and time; only 127.0.0.1; every process started is stopped.
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import itertools
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from livekit import api
from livekit.protocol import room, sip
from tests.helpers import API_KEY, API_SECRET, ServerProcess, free_sip_port

from bench.common import (
    TICKS,
    children_cpu,
    cpu_seconds,
    ephemeral_range,
    keep_or_remove,
    machine_busy,
    pct,
    print_result,
    raise_open_files,
    run_info,
    scrape,
    self_cpu,
    stop_if_running,
    udp_rcvbuf_errors,
    wait_quiet,
)

T = TypeVar("T")
CALLER = "+15550001"
NUMBER_PREFIX = "+1999"
MAX_STEPS = 20
MAX_CALLS_STEP = 20_000
MAX_IN_FLIGHT = 1000
API_TIMEOUT_S = 10.0
BEHIND_P99_MS = 500.0
CPU_STOP_PCT = 90.0  # of one core: the server's event loop has no headroom left (bench/media.py)
SUSTAIN_FROM_PCT = 67.0  # the sustained phase starts from the fastest step under this
ISSUED_MIN_RATIO = 0.9
BYE_TIMEOUT_MS = 5000
SIPP_BUFFER = 4 * 1024 * 1024
CAPTURE_BUFFER = 32 * 1024 * 1024
MAX_PACKETS = 5_000_000
DRAIN_S = 15.0
MEDIA_TIMEOUT_S = 35.0  # the server hangs up a call whose callee vanished (30 s, no RTP)
DEPARTURE_S = 20  # how long a room stays after its last participant left (LiveKit's default)
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; not exported by Python 3.11
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
ETH_P_IP = 0x0800
SOL_PACKET = getattr(socket, "SOL_PACKET", 263)
PACKET_STATISTICS = 6
TIMESPEC = struct.Struct("@qq")

# The callee: rings and answers at once, holds (-d), hangs up. Its BYE goes to the INVITE's
# Contact, From our To with sipp's tag, To the INVITE's From (tests/interop/sipp has the same).
# A retransmitted INVITE (we were late to read the 200) and a repeated ACK (one per 200 it
# retransmitted: ours carry a new branch each, so sipp does not see retransmissions) are absorbed
# as a carrier's UAS would (RFC 3261 s13.3.1.4), instead of sipp aborting the call and leaving
# it up on our side until its media timeout. The hold: HOLD_MS after the last ACK. A late ACK
# while the BYE waits for its 200 is let pass too.
UAS_SCENARIO = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="bench outbound: ring, answer, hold, the callee's BYE">
  <recv request="INVITE" crlf="true">
    <action>
      <ereg regexp=".*" search_in="hdr" header="From:" check_it="true" assign_to="caller"/>
      <ereg regexp="sips?:[^>;]*" search_in="hdr" header="Contact:" check_it="true"
            assign_to="target"/>
    </action>
  </recv>
  <send>
    <![CDATA[
      SIP/2.0 180 Ringing
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:callee@[local_ip]:[local_port]>
      Content-Length: 0
    ]]>
  </send>
  <send retrans="500">
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:callee@[local_ip]:[local_port]>
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=callee 1 1 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000
    ]]>
  </send>
  <label id="answered"/>
  <recv request="INVITE" optional="true" next="answered"/>
  <recv request="ACK" crlf="true" timeout="10000"/>
  <label id="holding"/>
  <recv request="ACK" timeout="HOLD_MS" ontimeout="hangup" next="holding"/>
  <label id="hangup"/>
  <send retrans="500">
    <![CDATA[
      BYE [$target] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:callee@[local_ip]:[local_port]>;tag=[pid]SIPpTag01[call_number]
      To: [$caller]
      [last_Call-ID:]
      CSeq: 1 BYE
      Contact: <sip:callee@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
  <label id="bye_sent"/>
  <recv request="ACK" optional="true" next="bye_sent"/>
  <recv response="200" timeout="BYE_TIMEOUT_MS"/>
</scenario>
""".replace("BYE_TIMEOUT_MS", str(BYE_TIMEOUT_MS))


def uas_scenario_text(hold_ms: int) -> str:
    """The callee's scenario text for a hold: sipp takes no `-key` value in XML attributes."""
    return UAS_SCENARIO.replace("HOLD_MS", str(max(1, hold_ms)))


# The baseline caller: what our server does on the wire, done by sipp (it takes the callee's BYE).
UAC_SCENARIO = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="bench outbound baseline: INVITE, answer, the callee's BYE">
  <send retrans="500">
    <![CDATA[
      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:CALLER@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:CALLER@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=caller 1 1 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0 101
      a=rtpmap:0 PCMU/8000
      a=rtpmap:101 telephone-event/8000
    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200"/>
  <send>
    <![CDATA[
      ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:CALLER@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
  <recv request="BYE" timeout="30000"/>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0
    ]]>
  </send>
</scenario>
""".replace("CALLER", CALLER)


# -- processes and the system, read from /proc ---------------------------------------------------


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of a process by thread id and name ("tid name")."""
    out: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                text = (task / "stat").read_text()
                name = text.split("(", 1)[1].rsplit(")", 1)[0]
                fields = text.rsplit(")", 1)[1].split()
                out[f"{task.name} {name}"] = (int(fields[11]) + int(fields[12])) / TICKS
    return out


def threads_pct(before: dict[str, float], after: dict[str, float], wall: float) -> dict[str, float]:
    """% of one core per thread name over an interval: the event loop (the main thread) apart
    from worker threads (the call log's SQLite writes, DNS) summed by name."""
    out: dict[str, float] = {}
    for i, (key, cpu) in enumerate(sorted(after.items(), key=lambda kv: int(kv[0].split()[0]))):
        name = "main" if i == 0 else key.split(" ", 1)[1]
        out[name] = out.get(name, 0.0) + (cpu - before.get(key, 0.0)) / wall * 100
    return {k: round(v, 1) for k, v in out.items() if v >= 0.05}


def udp_socket_drops(port: int) -> int:
    """Datagrams dropped on the socket bound to 127.0.0.1:port (/proc/net/udp, last column)."""
    want = f"0100007F:{port:04X}"
    with open("/proc/net/udp") as f:
        for line in itertools.islice(f, 1, 100_000):
            fields = line.split()
            if fields[1] == want:
                return int(fields[-1])
    return 0


def udp_bound(port: int) -> bool:
    """Whether some socket is bound to 127.0.0.1:port over UDP (/proc/net/udp)."""
    want = f"0100007F:{port:04X}"
    with open("/proc/net/udp") as f:
        return any(line.split()[1] == want for line in itertools.islice(f, 1, 100_000))


def rtp_range() -> str:
    """The server's RTP ports: 4,500 pairs just below the ephemeral range (the interop tests use
    14000-14999 and 17000-17999; free_sip_port() picks from the ephemeral range)."""
    low, high = ephemeral_range()
    if low >= 24000:
        return f"{low - 9000}-{low - 1}"
    if high <= 56000:
        return f"{high + 1}-{high + 9000}"
    return "40000-49999"


# -- the wire: kernel timestamps of the UAS's SIP packets (child process) ------------------------


def udp_port_filter(port: int) -> bytes:
    """A classic BPF program (tcpdump's `udp port PORT` on an Ethernet-framed interface, which
    loopback is): IPv4, UDP, not a later fragment, source or destination port = port."""
    ins = [
        (0x28, 0, 0, 12),  # ldh [12]              ethertype
        (0x15, 0, 9, ETH_P_IP),  # jeq IPv4 ? next : drop
        (0x30, 0, 0, 23),  # ldb [23]              IP protocol
        (0x15, 0, 7, 17),  # jeq UDP ? next : drop
        (0x28, 0, 0, 20),  # ldh [20]              flags + fragment offset
        (0x45, 5, 0, 0x1FFF),  # jset offset ? drop : next
        (0xB1, 0, 0, 14),  # ldxb 4*([14]&0xf)     IP header length
        (0x48, 0, 0, 14),  # ldh [x+14]            UDP source port
        (0x15, 3, 0, port),  # jeq port ? keep : next
        (0x48, 0, 0, 16),  # ldh [x+16]            UDP destination port
        (0x15, 1, 0, port),  # jeq port ? keep : drop
        (0x06, 0, 0, 0),  # drop
        (0x06, 0, 0, 0x40000),  # keep (up to 256 KiB)
    ]
    return b"".join(struct.pack("HBBI", *i) for i in ins)


def _sip_fields(payload: bytes) -> tuple[str, str, str]:
    """(first line, Call-ID, CSeq) of a SIP message; compact forms too (RFC 3261 s7.3.3)."""
    head = payload.split(b"\r\n\r\n", 1)[0].decode(errors="replace")
    lines = head.split("\r\n")
    call_id = cseq = ""
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name in ("call-id", "i"):
            call_id = value.strip()
        elif name == "cseq":
            cseq = value.strip()
    return lines[0], call_id, cseq


def capture_main(port: int, out: Path) -> int:
    """Write `ns \\t R|S \\t first line \\t Call-ID \\t CSeq` for every SIP datagram to (R) or
    from (S) `port` on loopback until SIGTERM. R and S are as the UAS sees them."""
    stop = False

    def on_term(_sig: int, _frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
    program = udp_port_filter(port)
    buffer = ctypes.create_string_buffer(program)
    fprog = struct.pack("HL", len(program) // 8, ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, CAPTURE_BUFFER)  # root
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CAPTURE_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.bind(("lo", 0))
    sock.settimeout(0.1)
    anc_size = socket.CMSG_SPACE(TIMESPEC.size)
    print("ready", flush=True)
    with open(out, "w") as f:
        for _ in range(MAX_PACKETS):
            try:
                data, anc, _flags, addr = sock.recvmsg(65535, anc_size)
            except TimeoutError:
                if stop:
                    break
                continue
            except InterruptedError:
                continue
            if addr[2] == socket.PACKET_OUTGOING:  # (only with ETH_P_ALL; never seen twice)
                continue
            ns = 0
            for level, kind, value in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = TIMESPEC.unpack(value[: TIMESPEC.size])
                    ns = sec * 1_000_000_000 + nsec
            ihl = (data[14] & 0x0F) * 4
            _src, dst = struct.unpack_from("!HH", data, 14 + ihl)
            first, call_id, cseq = _sip_fields(data[14 + ihl + 8 :])
            f.write(f"{ns}\t{'R' if dst == port else 'S'}\t{first}\t{call_id}\t{cseq}\n")
    # struct tpacket_stats: packets passed by the filter, dropped for want of buffer (reset)
    packets, dropped = struct.unpack("II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
    print(f"stats {packets} {dropped}", flush=True)
    sock.close()
    return 0


class Capture:
    """The capture child for one port."""

    def __init__(self, port: int, out: Path) -> None:
        self.out = out
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--capture", str(port), "--capture-out", str(out)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # bounded: the child prints or exits
        if b"ready" not in line:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=10)
            raise RuntimeError(f"capture did not start (root needed): {err.decode()[-500:]}")
        self.cpu_at_ready = cpu_seconds(self.proc.pid)  # its start-up (imports) left out
        self.dropped = -1  # unknown until it stopped

    def stop(self) -> float:
        """Stop it; returns its CPU seconds since it was ready. `dropped`: packets the kernel
        could not queue to it (then INVITEs may be missing from its file)."""
        used = cpu_seconds(self.proc.pid) - self.cpu_at_ready
        self.proc.terminate()
        try:
            out, _ = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        for line in out.decode(errors="replace").splitlines():
            if line.startswith("stats "):
                self.dropped = int(line.split()[2])
        return used


@dataclass
class Wire:
    """One call as the UAS's port saw it (ns, CLOCK_REALTIME)."""

    invite: int = 0
    invites: int = 0
    ok: int = 0  # sipp's 200 to the INVITE
    ack: int = 0
    bye: int = 0  # sipp's BYE
    bye_ok: int = 0  # our 200 to it
    other: list[str] = field(default_factory=list)  # anything unexpected from us


def read_wire(path: Path, limit: int) -> dict[str, Wire]:
    """The capture's lines, per called number (the INVITE's Request-URI user)."""
    by_call_id: dict[str, Wire] = {}
    by_number: dict[str, Wire] = {}
    if not path.exists():
        return by_number
    with open(path, errors="replace") as f:
        for line in itertools.islice(f, limit):
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 5 or not parts[0].isdigit():
                continue
            ns, direction, first, call_id, cseq = int(parts[0]), *parts[1:]
            method = first.split(" ", 1)[0]
            if direction == "R" and method == "INVITE":
                uri = first.split(" ")[1] if first.count(" ") >= 2 else ""
                number = uri.split(":", 1)[-1].split("@", 1)[0]
                call = by_call_id.setdefault(call_id, Wire())
                by_number.setdefault(number, call)
                call.invite = call.invite or ns
                call.invites += 1
                continue
            call = by_call_id.setdefault(call_id, Wire())
            if direction == "S" and first.startswith("SIP/2.0 200") and cseq.endswith("INVITE"):
                call.ok = call.ok or ns
            elif direction == "S" and method == "BYE":
                call.bye = call.bye or ns
            elif direction == "R" and method == "ACK":
                call.ack = call.ack or ns
            elif direction == "R" and first.startswith("SIP/2.0 200") and cseq.endswith("BYE"):
                call.bye_ok = call.bye_ok or ns
            elif direction == "R" and len(call.other) < 5:
                call.other.append(first[:80])
    return by_number


# -- sipp ---------------------------------------------------------------------------------------


@dataclass
class SippResult:
    rc: int
    successful: int
    failed: int
    cpu_s: float
    wall_s: float
    errors: list[str]


class Sipp:
    """sipp in the foreground under timeout(1); its screen to a file, its statistics to a CSV."""

    def __init__(self, workdir: Path, name: str, args: list[str], limit_s: float) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.stat = workdir / f"{name}-stat.csv"
        self.err = workdir / f"{name}-errors.log"
        self.screen = workdir / f"{name}-screen.log"
        self.limit_s = limit_s
        self.cmd = [
            "timeout", "-k", "5", "-s", "INT", str(int(limit_s) + 5),
            "sipp", *args, "-i", "127.0.0.1", "-nostdin", "-buff_size", str(SIPP_BUFFER),
            "-trace_stat", "-stf", str(self.stat), "-fd", "1",
            "-trace_err", "-error_file", str(self.err),
            "-timeout", f"{int(limit_s)}s", "-timeout_error",
        ]  # fmt: skip
        self.cwd = workdir
        self.proc: asyncio.subprocess.Process | None = None
        self.began = 0.0
        self.cpu_before = 0.0

    async def start(self) -> None:
        self.cpu_before = children_cpu()
        self.began = time.monotonic()
        out = await asyncio.to_thread(open, self.screen, "wb")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self.cmd, cwd=self.cwd, stdout=out, stderr=asyncio.subprocess.STDOUT
            )
        finally:
            out.close()

    async def finish(self, wait_s: float) -> SippResult:
        """Wait up to `wait_s` for sipp to end by itself, then SIGINT (timeout(1) passes it on),
        then kill."""
        proc = self.proc
        assert proc is not None
        for sig in (None, signal.SIGINT, signal.SIGKILL):
            if sig is not None and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), wait_s if sig is None else 10)
                break
        wall = time.monotonic() - self.began
        successful, failed = self._counts()
        return SippResult(
            rc=proc.returncode if proc.returncode is not None else -1,
            successful=successful,
            failed=failed,
            cpu_s=children_cpu() - self.cpu_before,
            wall_s=wall,
            errors=self._errors(),
        )

    def _counts(self) -> tuple[int, int]:
        if not self.stat.exists():
            return 0, 0
        rows = [r.split(";") for r in self.stat.read_text(errors="replace").splitlines() if r]
        if len(rows) < 2:
            return 0, 0
        names, last = rows[0], rows[-1]
        values = dict(zip(names, last, strict=False))
        return int(values.get("SuccessfulCall(C)", 0)), int(values.get("FailedCall(C)", 0))

    def _errors(self) -> list[str]:
        """The first few events that are failures. Not: "Dead call" (a retransmission answered
        after its call ended) and "jumping to label" (the hold's timeout, by design)."""
        if not self.err.exists():
            return []
        with open(self.err, errors="replace") as f:
            text = f.read(4_000_000)
        events = re.split(r"(?=\d{4}-\d\d-\d\d\t\d\d:)", text)
        return [
            " ".join(e.split())[:300]
            for e in events
            if e[:1].isdigit() and "Dead call" not in e and "jumping to label" not in e
        ][:5]


def uas_args(
    scenario: Path, port: int, media_port: int, calls: int, args: argparse.Namespace
) -> list[str]:
    return [
        *("-sf", str(scenario), "-p", str(port), "-mp", str(media_port)),
        *("-m", str(calls)),
        *(("-rtp_echo",) if args.rtp_echo else ()),
    ]


async def wait_bound(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if udp_bound(port):
            return True
        await asyncio.sleep(0.05)
    return False


# -- the load -----------------------------------------------------------------------------------


@dataclass
class ApiCall:
    number: str
    room: str
    sent_ns: int = 0  # CLOCK_REALTIME just before the request
    reply_ns: int = 0  # CLOCK_REALTIME when the reply was in
    api_ms: float | None = None
    error: str = ""


async def one_call(lk: api.LiveKitAPI, trunk_id: str, call: ApiCall, wait_answered: bool) -> None:
    req = sip.CreateSIPParticipantRequest(
        sip_trunk_id=trunk_id,
        sip_call_to=call.number,
        room_name=call.room,
        wait_until_answered=wait_answered,
    )
    call.sent_ns = time.time_ns()
    began = time.perf_counter_ns()
    try:
        await lk.sip.create_sip_participant(req, timeout=API_TIMEOUT_S)
    except Exception as err:  # any error is a failed call, reported as it came
        call.error = f"{type(err).__name__}: {err}"[:200]
    call.api_ms = (time.perf_counter_ns() - began) / 1e6
    call.reply_ns = time.time_ns()


async def place_calls(
    lk: api.LiveKitAPI, trunk_id: str, *, step: int, rate: int, count: int, wait_answered: bool
) -> tuple[list[ApiCall], float, int]:
    """`count` calls at `rate`/s on a fixed schedule (late ones go at once, in a burst); returns
    the calls, the span from the first to the last request sent (s) and how many were not sent
    because MAX_IN_FLIGHT requests were open."""
    calls: list[ApiCall] = []
    tasks: set[asyncio.Task[None]] = set()
    start = time.monotonic() + 0.02
    first = last = 0.0
    not_sent = 0
    for i in range(count):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(tasks) >= MAX_IN_FLIGHT:
            not_sent = count - i
            break
        call = ApiCall(number=f"{NUMBER_PREFIX}{step:02d}{i:06d}", room=f"out-{step}-{i}")
        calls.append(call)
        last = time.monotonic()
        first = first or last
        task = asyncio.create_task(one_call(lk, trunk_id, call, wait_answered))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(set(tasks), timeout=API_TIMEOUT_S + 30)
    for task in list(tasks):  # bounded: the client's own timeout ends them first
        task.cancel()
    return calls, last - first, not_sent


# -- the server ---------------------------------------------------------------------------------


async def wait_drained(lk: api.LiveKitAPI, url: str, prefix: str, timeout: float) -> dict[str, int]:
    """Wait until the server has no active call or RTP leg and no participant in this step's
    rooms; returns what is left."""
    deadline = time.monotonic() + timeout
    left = {"participants": 0, "calls_active": 0, "media_legs": 0, "rooms": 0}
    for _ in range(int(timeout * 5) + 1):
        listed = await lk.room.list_rooms(room.ListRoomsRequest())
        mine = [r for r in listed.rooms if r.name.startswith(prefix)]
        metrics = await asyncio.to_thread(scrape, url)
        left = {
            "participants": sum(r.num_participants for r in mine),
            "calls_active": int(metrics.get("sipbridge_calls_active", 0)),
            "media_legs": int(metrics.get('sipbridge_media{counter="legs"}', 0)),
            "rooms": len(mine),
        }
        if not (left["participants"] or left["calls_active"] or left["media_legs"]):
            break
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    return left


async def api_floor(lk: api.LiveKitAPI, count: int = 200) -> dict[str, float | int | None]:
    """ListRooms for a name no room has, one at a time: the client's and HTTP's own share."""
    times = []
    for _ in range(count):
        began = time.perf_counter_ns()
        await lk.room.list_rooms(room.ListRoomsRequest(names=["no-such-room"]))
        times.append((time.perf_counter_ns() - began) / 1e6)
    return dist_ms(times)


# -- figures ------------------------------------------------------------------------------------


def dist_ms(values: list[float]) -> dict[str, float | int | None]:
    ordered = sorted(values)

    def r(v: float | None) -> float | None:
        return None if v is None else round(v, 3)

    return {
        "n": len(ordered),
        "p50": r(pct(ordered, 50)),
        "p99": r(pct(ordered, 99)),
        "max": r(ordered[-1]) if ordered else None,
    }


@dataclass
class StepCpu:
    server_s: float
    bench_s: float
    sipp_s: float
    capture_s: float
    machine_s: float
    wall_s: float


def step_figures(
    *,
    rate: int,
    asked: int,
    calls: list[ApiCall],
    span_s: float,
    not_sent: int,
    wire: dict[str, Wire],
    uas: SippResult,
    cpu: StepCpu,
    left: dict[str, int],
    udp_drops: int,
    other_before: float | None,
) -> dict[str, object]:
    api_errors = [c.error for c in calls if c.error]
    to_invite, api_ms, reply_after_invite, ack_ms, bye_ms, setup_ms = [], [], [], [], [], []
    no_invite = no_ack = no_bye_ok = retransmitted = unexpected = completed = 0
    for c in calls:
        if c.api_ms is not None and not c.error:
            api_ms.append(c.api_ms)
        w = wire.get(c.number)
        if w is None or not w.invite:
            no_invite += 1
            continue
        to_invite.append((w.invite - c.sent_ns) / 1e6)
        if c.reply_ns:
            reply_after_invite.append((c.reply_ns - w.invite) / 1e6)
        retransmitted += w.invites > 1
        unexpected += bool(w.other)
        if w.ok and w.ack:
            ack_ms.append((w.ack - w.ok) / 1e6)
            setup_ms.append((w.ack - w.invite) / 1e6)
        else:
            no_ack += 1
        if w.bye and w.bye_ok:
            bye_ms.append((w.bye_ok - w.bye) / 1e6)
            completed += 1 if not c.error else 0
        else:
            no_bye_ok += 1
    failed = asked - completed
    invite = dist_ms(to_invite)
    issued_rate = (len(calls) - 1) / span_s if span_s > 0 else 0.0
    wall = cpu.wall_s or 1.0
    stayed = left["participants"] + left["calls_active"] + left["media_legs"]
    ok = (
        failed == 0
        and not api_errors
        and not not_sent
        and uas.failed == 0
        and uas.rc == 0
        and uas.successful == asked
        and stayed == 0
    )
    p99 = invite["p99"]
    behind = (
        p99 is None
        or float(p99) >= BEHIND_P99_MS
        or (rate > 0 and issued_rate < rate * ISSUED_MIN_RATIO)
        or cpu.server_s / wall * 100 > CPU_STOP_PCT
    )
    own = cpu.server_s + cpu.bench_s + cpu.sipp_s + cpu.capture_s
    return {
        "rate": rate,
        "calls": asked,
        "sent": len(calls),
        "completed": completed,
        "failed": failed,
        "ok": ok,
        "kept_up": ok and not behind,
        "calls_per_s": round(issued_rate, 1),
        "api_errors": len(api_errors),
        "api_error_examples": sorted(set(api_errors))[:3],
        "not_sent_in_flight_cap": not_sent,
        "no_invite": no_invite,
        "no_ack": no_ack,
        "no_200_to_bye": no_bye_ok,
        "invite_retransmitted": retransmitted,
        "unexpected_requests": unexpected,
        "sipp": {"rc": uas.rc, "successful": uas.successful, "failed": uas.failed},
        "sipp_errors": uas.errors,
        "api_to_invite_ms": invite,
        "api_reply_ms": dist_ms(api_ms),
        "invite_to_reply_ms": dist_ms(reply_after_invite),
        "ok_to_ack_ms": dist_ms(ack_ms),
        "invite_to_ack_ms": dist_ms(setup_ms),
        "bye_to_ok_ms": dist_ms(bye_ms),
        "cpu_pct": {
            "server": round(cpu.server_s / wall * 100, 1),
            "bench": round(cpu.bench_s / wall * 100, 1),
            "sipp": round(cpu.sipp_s / wall * 100, 1),
            "capture": round(cpu.capture_s / wall * 100, 1),
            "other": round(max(0.0, cpu.machine_s - own) / wall * 100, 1),
        },
        "other_cpu_pct_before": other_before,
        "server_cpu_ms_per_call": round(cpu.server_s / completed * 1000, 2) if completed else None,
        "bench_cpu_ms_per_call": round(cpu.bench_s / len(calls) * 1000, 2) if calls else None,
        "wall_s": round(cpu.wall_s, 2),
        "left_after_drain": left,
        "udp_rcvbuf_drops_system": udp_drops,
    }


# -- the run ------------------------------------------------------------------------------------


async def sample_cpu(pid: int, timeline: list[tuple[float, float]], limit_s: float) -> None:
    """(seconds since the start, server CPU seconds so far) every 0.5 s until cancelled."""
    began = time.monotonic()
    for _ in range(int(limit_s * 2) + 1):
        timeline.append((time.monotonic() - began, cpu_seconds(pid)))
        await asyncio.sleep(0.5)


def window_cpu_pct(timeline: list[tuple[float, float]], start: float, end: float) -> float | None:
    """The server's CPU over [start, end] (s since the start) from the samples inside it."""
    inside = [(t, c) for t, c in timeline if start <= t <= end]
    if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
        return None
    return round((inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0]) * 100, 1)


async def run_step(
    lk: api.LiveKitAPI,
    server: ServerProcess,
    work: Path,
    scenario: Path,
    *,
    step: int,
    rate: int,
    args: argparse.Namespace,
    steady_after_s: float | None = None,
) -> dict[str, object]:
    assert server.proc is not None
    pid = server.proc.pid
    asked = min(MAX_CALLS_STEP, max(1, int(rate * args.seconds)))
    other = None
    if args.quiet_wait:
        other = await asyncio.to_thread(wait_quiet, args.quiet_wait, [pid], 0.5)
    port, media_port = free_sip_port(), free_sip_port()
    trunk = await lk.sip.create_outbound_trunk(
        sip.CreateSIPOutboundTrunkRequest(
            trunk=sip.SIPOutboundTrunkInfo(
                name=f"bench step {step}", address=f"127.0.0.1:{port}", numbers=[CALLER]
            )
        )
    )
    stepdir = work / f"step{step}"
    stepdir.mkdir(parents=True, exist_ok=True)
    capture = await asyncio.to_thread(Capture, port, stepdir / "wire.tsv")
    hold_s = args.hold_ms / 1000
    limit = asked / rate + hold_s + 40
    uas = Sipp(stepdir, "uas", uas_args(scenario, port, media_port, asked, args), limit)
    try:
        await uas.start()
        if not await wait_bound(port, 5):
            raise RuntimeError(f"sipp did not bind {port}: {uas.screen.read_text()[-500:]}")
        server0, bench0, busy0 = cpu_seconds(pid), self_cpu(), machine_busy()
        threads0 = thread_cpu(pid)
        drops0, sip_drops0 = udp_rcvbuf_errors(), udp_socket_drops(args.server_sip_port)
        began = time.monotonic()
        timeline: list[tuple[float, float]] = []
        sampler = asyncio.create_task(sample_cpu(pid, timeline, limit + 60))
        calls, span, not_sent = await place_calls(
            lk,
            trunk.sip_trunk_id,
            step=step,
            rate=rate,
            count=asked,
            wait_answered=args.wait_answered,
        )
        result = await uas.finish(hold_s + BYE_TIMEOUT_MS / 1000 + 10)
        wall = time.monotonic() - began
        server_s, bench_s, busy_s = cpu_seconds(pid) - server0, self_cpu() - bench0, machine_busy()
        threads = threads_pct(threads0, thread_cpu(pid), wall)
        sampler.cancel()
        rooms_alive = len((await lk.room.list_rooms(room.ListRoomsRequest())).rooms)
    finally:
        if uas.proc is not None and uas.proc.returncode is None:
            await uas.finish(0.1)
        capture_s = await asyncio.to_thread(capture.stop)
    drops = udp_rcvbuf_errors() - drops0
    sip_drops = udp_socket_drops(args.server_sip_port) - sip_drops0
    left = await wait_drained(lk, server.url, f"out-{step}-", DRAIN_S)
    wire = await asyncio.to_thread(read_wire, capture.out, asked * 20 + 1000)
    figures = step_figures(
        rate=rate,
        asked=asked,
        calls=calls,
        span_s=span,
        not_sent=not_sent,
        wire=wire,
        uas=result,
        cpu=StepCpu(
            server_s=server_s,
            bench_s=bench_s,
            sipp_s=result.cpu_s,
            capture_s=capture_s,
            machine_s=busy_s - busy0,
            wall_s=wall,
        ),
        left=left,
        udp_drops=drops,
        other_before=other,
    )
    figures["step"] = step
    figures["server_sip_socket_drops"] = sip_drops
    figures["capture_drops"] = capture.dropped
    figures["server_threads_cpu_pct"] = threads
    figures["rooms_on_server_at_end"] = rooms_alive
    if steady_after_s is not None:
        steady = steady_figures(calls, wire, timeline, steady_after_s, span)
        figures["steady"] = steady
        invite = steady.get("api_to_invite_ms")
        p99 = invite.get("p99") if isinstance(invite, dict) else None
        busy = steady.get("server_cpu_pct")
        if not isinstance(p99, float) or p99 >= BEHIND_P99_MS:
            figures["kept_up"] = False
        if not isinstance(busy, float) or busy > CPU_STOP_PCT:
            figures["kept_up"] = False
    return figures


def steady_figures(
    calls: list[ApiCall],
    wire: dict[str, Wire],
    timeline: list[tuple[float, float]],
    after_s: float,
    span_s: float,
) -> dict[str, object]:
    """The calls sent from `after_s` on (rooms of earlier calls closing as fast as new ones
    open), and the server's CPU from then to the last request."""
    if not calls:
        return {}
    start = min(c.sent_ns for c in calls) + int(after_s * 1e9)
    late = [c for c in calls if c.sent_ns >= start]
    to_invite = [
        (wire[c.number].invite - c.sent_ns) / 1e6
        for c in late
        if c.number in wire and wire[c.number].invite
    ]
    server_pct = window_cpu_pct(timeline, after_s, span_s)
    rate = len(late) / (span_s - after_s) if span_s > after_s else 0.0
    return {
        "from_s": after_s,
        "calls": len(late),
        "api_to_invite_ms": dist_ms(to_invite),
        "api_reply_ms": dist_ms([c.api_ms for c in late if c.api_ms is not None]),
        "server_cpu_pct": server_pct,
        "server_cpu_ms_per_call": (
            round(server_pct / rate * 10, 2) if server_pct is not None and rate else None
        ),
        "server_cpu_timeline": [
            round((c1 - c0) / (t1 - t0) * 100, 1)
            for (t0, c0), (t1, c1) in itertools.pairwise(timeline)
            if t1 > t0
        ][:400],
    }


async def baseline_step(
    work: Path, uas_scenario: Path, uac_scenario: Path, rate: int, args: argparse.Namespace
) -> dict[str, object]:
    """sipp's UAC -> the same sipp UAS scenario at `rate`: completed calls and each side's CPU."""
    calls = min(MAX_CALLS_STEP * 2, max(1, int(rate * args.seconds)))
    hold_s = args.hold_ms / 1000
    limit = calls / rate + hold_s + 40
    port, media_port = free_sip_port(), free_sip_port()
    stepdir = work / f"baseline-{rate}"
    uas = Sipp(stepdir, "uas", uas_args(uas_scenario, port, media_port, calls, args), limit)
    await uas.start()
    try:
        if not await wait_bound(port, 5):
            raise RuntimeError(f"sipp did not bind {port}")
        uac = Sipp(
            stepdir,
            "uac",
            [
                f"127.0.0.1:{port}",
                *("-sf", str(uac_scenario), "-p", str(free_sip_port())),
                *("-mp", str(free_sip_port()), "-s", f"{NUMBER_PREFIX}99"),
                *("-m", str(calls), "-r", str(rate)),
            ],
            limit,
        )
        await uac.start()
        uac_done = await uac.finish(limit + 5)
    finally:
        uas_done = await uas.finish(hold_s + BYE_TIMEOUT_MS / 1000 + 10)
    ok = uac_done.rc == 0 and uac_done.failed == 0 and uac_done.successful == calls
    ok = ok and uas_done.failed == 0
    sending_s = max(1e-9, uac_done.wall_s - hold_s)  # the hold of the last call is no sending
    return {
        "rate": rate,
        "calls": calls,
        "ok": ok,
        "uac": {"rc": uac_done.rc, "successful": uac_done.successful, "failed": uac_done.failed},
        "uas": {"rc": uas_done.rc, "successful": uas_done.successful, "failed": uas_done.failed},
        "calls_per_s": round(min(rate, calls / sending_s), 1),
        # each sipp's CPU lands in children_cpu() when it is reaped: the UAC's alone here
        "uac_cpu_ms_per_call": round(uac_done.cpu_s / calls * 1000, 3),
        "uac_cpu_pct": round(uac_done.cpu_s / uac_done.wall_s * 100, 1),
        "errors": uac_done.errors[:3] + uas_done.errors[:3],
    }


async def rooms_open(lk: api.LiveKitAPI) -> int:
    listed = await lk.room.list_rooms(room.ListRoomsRequest())
    return len(listed.rooms)


async def run_baseline(
    work: Path, uas_scenario: Path, uac_scenario: Path, rate: int, args: argparse.Namespace
) -> list[dict[str, object]]:
    """sipp against itself at the rate where we stopped, and twice that, 3 s each at most."""
    baseline: list[dict[str, object]] = []
    short = _with(args, seconds=min(args.seconds, 3.0))
    for asked in (rate, rate * 2):
        result = await baseline_step(work, uas_scenario, uac_scenario, asked, short)
        baseline.append(result)
        print(f"baseline sipp UAC -> sipp UAS: {json.dumps(result)}", file=sys.stderr, flush=True)
        if not result["ok"]:
            break
    return baseline


async def bench(
    args: argparse.Namespace, server: ServerProcess, work: Path
) -> tuple[dict[str, object], list[dict[str, object]], list[dict[str, object]], dict[str, object]]:
    rates = [int(r) for r in args.rates.split(",") if r.strip()][:MAX_STEPS]
    uas_scenario, uac_scenario = work / "uas_bench.xml", work / "uac_bench.xml"
    uas_scenario.write_text(uas_scenario_text(args.hold_ms))
    uac_scenario.write_text(UAC_SCENARIO)
    steps: list[dict[str, object]] = []
    sustained: list[dict[str, object]] = []
    async with api.LiveKitAPI(
        url=server.url, api_key=API_KEY, api_secret=API_SECRET, failover=False
    ) as lk:
        floor = await api_floor(lk)
        print(
            f"API floor (ListRooms, one at a time, same client): p50/p99 "
            f"{floor['p50']}/{floor['p99']} ms",
            file=sys.stderr,
            flush=True,
        )
        # A warm-up step, not counted: first-call imports and allocations on the server.
        await run_step(lk, server, work, uas_scenario, step=0, rate=10, args=_warmup(args))
        print(HEADER, file=sys.stderr, flush=True)
        for i, rate in enumerate(rates, start=1):
            figures = await run_step(lk, server, work, uas_scenario, step=i, rate=rate, args=args)
            steps.append(figures)
            print(_row(figures), file=sys.stderr, flush=True)
            if not figures["kept_up"] and not args.keep_going:
                break
        stopped = next((s["rate"] for s in steps if not s["kept_up"]), rates[-1] if rates else 100)
        assert isinstance(stopped, int)
        # A rate for longer than a room outlives its call (departure_timeout): the server then
        # holds as many rooms as it would at that rate for ever, and each costs it (more CPU per
        # call than in a short step). From the fastest step that left a third of a core free;
        # once more at 75% if not kept up, after what was left up has ended.
        roomy = [s for s in steps if s["kept_up"] and _server_pct(s) <= SUSTAIN_FROM_PCT]
        best = max((int(_num(s["rate"])) for s in roomy), default=0)
        sustain = _with(args, seconds=args.sustain_seconds)
        steady_after = args.hold_ms / 1000 + DEPARTURE_S + 1
        for attempt in range(2 if args.sustain_seconds and best else 0):
            left = await rooms_open(lk)
            figures = await run_step(
                lk,
                server,
                work,
                uas_scenario,
                step=90 + attempt,
                rate=best,
                args=sustain,
                steady_after_s=steady_after,
            )
            figures["rooms_open_before"] = left
            sustained.append(figures)
            print(f"sustained {args.sustain_seconds:.0f} s:", file=sys.stderr)
            print(_row(figures), file=sys.stderr, flush=True)
            if figures["kept_up"] or best <= 1:
                break
            best = max(1, int(best * 0.75))
            await wait_drained(lk, server.url, "out-", MEDIA_TIMEOUT_S)
    baseline = await run_baseline(work, uas_scenario, uac_scenario, stopped, args)
    return {"api_floor_ms": floor}, steps, sustained, {"steps": baseline}


def _num(value: object) -> float:
    assert isinstance(value, int | float)
    return float(value)


def _server_pct(step: dict[str, object]) -> float:
    cpu = step["cpu_pct"]
    assert isinstance(cpu, dict)
    return _num(cpu["server"])


def _with(args: argparse.Namespace, **changes: object) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), **changes})


def _warmup(args: argparse.Namespace) -> argparse.Namespace:
    return _with(args, seconds=2.0, quiet_wait=0.0)


def call_log_audit(db: Path, steps: list[dict[str, object]]) -> dict[str, dict[str, int]]:
    """After the server stopped: every call of each step in `sipbridge call list`, ended."""
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "sipbridge", "call", "list"),
            *("--db", str(db), "--json", "--limit", "500000"),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    audit: dict[str, dict[str, int]] = {}
    for entry in json.loads(proc.stdout):
        name = str(entry.get("room_name", ""))
        if not name.startswith("out-") or entry.get("call_direction") != "SCD_OUTBOUND":
            continue
        step = name.split("-")[1]
        row = audit.setdefault(step, {"logged": 0, "disconnected": 0})
        row["logged"] += 1
        row["disconnected"] += entry.get("call_status") == "SCS_DISCONNECTED"
    for s in steps:
        row = audit.setdefault(str(s["step"]), {"logged": 0, "disconnected": 0})
        s["call_log"] = row
        s["call_log_complete"] = row["logged"] == row["disconnected"] == s["calls"]
    return audit


HEADER = (
    f"{'rate':>5} {'calls':>6} {'fail':>4} {'sent/s':>7} {'kept up':>7} "
    f"{'API->INVITE p50/p99':>20} {'API reply p50/p99':>18} {'200->ACK p50/p99':>17} "
    f"{'BYE->200 p50/p99':>17} {'server CPU':>10} {'ms/call':>7} "
    f"{'bench/sipp/other %':>18}"
)


def _pair(d: object) -> str:
    assert isinstance(d, dict)
    if d["p50"] is None:
        return "-"
    return f"{d['p50']:.2f}/{d['p99']:.2f}"


def _row(s: dict[str, object]) -> str:
    cpu = s["cpu_pct"]
    assert isinstance(cpu, dict)
    return (
        f"{s['rate']:>5} {s['calls']:>6} {s['failed']:>4} {s['calls_per_s']:>7} "
        f"{'yes' if s['kept_up'] else 'no':>7} {_pair(s['api_to_invite_ms']):>20} "
        f"{_pair(s['api_reply_ms']):>18} {_pair(s['ok_to_ack_ms']):>17} "
        f"{_pair(s['bye_to_ok_ms']):>17} {str(cpu['server']) + '%':>10} "
        f"{s['server_cpu_ms_per_call'] or '-':>7} "
        f"{str(cpu['bench']) + '/' + str(cpu['sipp']) + '/' + str(cpu['other']):>18}"
    )


def summarise(
    steps: list[dict[str, object]], sustained: list[dict[str, object]], baseline: dict[str, object]
) -> dict[str, object]:
    def good(s: dict[str, object]) -> bool:
        return bool(s["kept_up"]) and bool(s.get("call_log_complete", True))

    best = max((_num(s["calls_per_s"]) for s in steps if good(s)), default=0.0)
    at_best = next((s for s in steps if good(s) and _num(s["calls_per_s"]) == best), None)
    held = next((s for s in sustained if good(s)), None)
    base_steps = baseline["steps"]
    assert isinstance(base_steps, list)
    sipp_best = max((_num(b["calls_per_s"]) for b in base_steps if b["ok"]), default=0.0)
    headline = _num(held["calls_per_s"]) if held else 0.0
    return {
        "max_calls_per_s_steps": best,
        "max_calls_per_s_sustained": headline,
        "sustained_rates_tried": [s["rate"] for s in sustained],
        "first_failed_rate": next((s["rate"] for s in steps if not s["ok"]), None),
        "first_behind_rate": next((s["rate"] for s in steps if not s["kept_up"]), None),
        "api_to_invite_ms_at_max": at_best["api_to_invite_ms"] if at_best else None,
        "server_cpu_ms_per_call_at_max": at_best["server_cpu_ms_per_call"] if at_best else None,
        "sustained_steady": held.get("steady") if held else None,
        "sipp_uac_max_calls_per_s_tried": sipp_best,
        "ratio_to_sipp_uac": round(headline / sipp_best, 3) if sipp_best and headline else None,
    }


def _run(coro: Coroutine[object, object, T]) -> T:
    try:
        import uvloop  # noqa: PLC0415 - the lighter loop for the client when installed

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rates", default="10,25,50,100,150,200,300,400")
    parser.add_argument("--seconds", type=float, default=5.0, help="of calls per rate step")
    parser.add_argument(
        "--sustain-seconds", type=float, default=27.0, help="at the best step's rate (0: skip)"
    )
    parser.add_argument("--hold-ms", type=int, default=1000, help="answer -> the callee's BYE")
    parser.add_argument("--wait-answered", action="store_true", help="wait_until_answered=True")
    parser.add_argument(
        "--rtp-echo", action="store_true", help="the callee echoes our RTP (default: silent)"
    )
    parser.add_argument("--quiet-wait", type=float, default=10.0, help="max s per step")
    parser.add_argument("--keep-going", action="store_true", help="run every step")
    parser.add_argument("--keep", action="store_true", help="keep traces and the server log")
    parser.add_argument("--capture", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--capture-out", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.capture:
        return capture_main(args.capture, Path(args.capture_out))
    if not shutil.which("sipp"):
        print("sipp is required (Debian package sip-tester)", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("run as root: the wire capture reads loopback through AF_PACKET", file=sys.stderr)
        return 2
    if (
        not 0 < args.seconds <= 60
        or not 0 <= args.sustain_seconds <= 120
        or not 0 <= args.hold_ms <= 60_000
    ):
        print("--seconds in (0, 60], --sustain-seconds in [0, 120], --hold-ms in [0, 60000]")
        return 2
    raise_open_files()  # sipp and the server inherit it
    tmp = Path(tempfile.mkdtemp(prefix="bench-outbound-"))
    args.server_sip_port = free_sip_port()
    server = ServerProcess(
        tmp,
        *("--sip", f"127.0.0.1:{args.server_sip_port}", "--rtp-ports", rtp_range()),
        *("--max-calls", "100000"),
    )
    try:
        server.start()
        extra, steps, sustained, baseline = _run(bench(args, server, tmp))
        server.stop(timeout=60)
        audit = call_log_audit(server.db, steps + sustained)
    finally:
        stop_if_running(server)
        keep_or_remove(tmp, args.keep)
    summary = summarise(steps, sustained, baseline)
    print(HEADER)
    for s in steps:
        print(_row(s))
    for s in sustained:
        print(f"sustained for {args.sustain_seconds:.0f} s ({s['rooms_open_before']} rooms open):")
        print(_row(s))
        steady = s["steady"]
        assert isinstance(steady, dict)
        print(
            f"  from {steady['from_s']:.0f} s on (rooms opening and closing at the same rate, "
            f"{s['rooms_on_server_at_end']} at the end): {steady['calls']} calls, API->INVITE "
            f"{_pair(steady['api_to_invite_ms'])} ms, server CPU {steady['server_cpu_pct']}% = "
            f"{steady['server_cpu_ms_per_call']} ms per call"
        )
    floor = extra["api_floor_ms"]
    print(
        f"API floor (ListRooms through the same client, one at a time): {_pair(floor)} ms. "
        f"Call log (logged/ended per step): "
        + ", ".join(f"{s['rate']}/s {_slash(s['call_log'])}" for s in steps + sustained)
    )
    base_steps = baseline["steps"]
    assert isinstance(base_steps, list)
    for b in base_steps:
        print(
            f"sipp's UAC -> the same sipp UAS at {b['rate']}/s: "
            f"{'every call completed' if b['ok'] else 'FAILED ' + json.dumps(b['uac'])}, "
            f"sipp UAC CPU {b['uac_cpu_ms_per_call']} ms per call ({b['uac_cpu_pct']}%)"
        )
    print(
        f"max calls/s with every call completed and the server keeping up: "
        f"{summary['max_calls_per_s_sustained']} sustained for {args.sustain_seconds:.0f} s "
        f"(tried {summary['sustained_rates_tried']}); {summary['max_calls_per_s_steps']} in "
        f"{args.seconds:.0f} s steps (first failed step at {summary['first_failed_rate']}/s, "
        f"first step failed or behind at {summary['first_behind_rate']}/s); sipp's own UAC "
        f"against the same UAS: every call completed up to "
        f"{summary['sipp_uac_max_calls_per_s_tried']}/s, the most tried (ratio "
        f"{summary['ratio_to_sipp_uac']} or less)"
    )
    line = {
        **run_info("outbound"),
        "seconds_per_step": args.seconds,
        "hold_ms": args.hold_ms,
        "wait_until_answered": args.wait_answered,
        **summary,
        **extra,
        "call_log": audit,
        "baseline_sipp_uac": baseline,
        "sustain_seconds": args.sustain_seconds,
        "steps": steps,
        "sustained": sustained,
    }
    print_result(line)
    return 0


def _slash(row: object) -> str:
    assert isinstance(row, dict)
    return f"{row['logged']}/{row['disconnected']}"


if __name__ == "__main__":
    raise SystemExit(main())
