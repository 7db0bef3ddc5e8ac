"""Agent call benchmark: N concurrent phone calls into a real `sipbridge serve`, each answered by
an official `livekit` SDK client (a voice agent's side), N rising step by step until loss.

    .venv/bin/python bench/agent_call.py [--steps 1,2,4,8,12,16,24,32] [--seconds 8]
                                         [--warmup 2] [--cps 10] [--queue-ms 20]
                                         [--period-ms 500] [--invite-delay 0]
                                         [--speak-from answer|connect] [--keep-going] [--keep]

Needs root. The SDK (libwebrtc) ignores loopback, so the agent runs inside a network namespace
joined to the host by a veth pair (tests/netns.py, WIRE.md s6); the server listens for HTTP and
WebRTC on the host end (`--rtc-ip`), for SIP and RTP on 127.0.0.1, where the phones are. Rooms:
one dispatch rule made through the official `livekit-api` client,
`SIPDispatchRuleCallee(room_prefix="call")`: call i of step s dials `<ss><iiii>` and lands in
room `call_<ss><iiii>`, one call per room.

Per step, a fresh set of both sides:
- the agent: ONE process in the namespace (bench/agent_peer.py) holding N `rtc.Room`s, one per
  call, each connected and its microphone track published BEFORE any INVITE (then
  --invite-delay s), so the figures leave out the SDK's own start. It subscribes to the
  caller's track (auto-subscribe: that is what answers the call), reads it with
  `rtc.AudioStream` (48 kHz mono) and speaks through an `rtc.AudioSource(48000, 1,
  queue_size_ms=--queue-ms)` in 10 ms frames on its own clock, from its call's answer (or from
  its connect: --speak-from connect);
- the phones: N SIP UACs on one epoll loop in this process, bench/media.py's `Generator` with
  one room per call instead of pairs: INVITE paced at --cps (PCMU + telephone-event), ACK,
  PCMU paced at 20 ms from one shared schedule, BYE at the end (each 200 checked).

What is measured, all on CLOCK_MONOTONIC, which every network namespace shares:
- INVITE->200: the first INVITE sent to its 200 received, per call; with the steps in between
  as the agent saw them (the caller joined, its track published, in the JSON). "Answer
  overhead" = the 200 received minus the agent's `track_subscribed` event: the server answers
  when it hands the track to the SDK (its SDP answer), so this is negative when the SDK fires
  its event after the 200 is out;
- latency, with 1 kHz tone bursts (-6 dBFS) every --period-ms each way, silence otherwise. A
  burst lasts 20, 40 or 60 ms in turn (its class), so a burst is never matched to a neighbour's
  onset: a burst takes the first onset of its class within three periods after it, none is
  "missing", an unmatched onset "spurious". An onset is the first sample beyond -18 dBFS after
  200 ms without one; the length (which gives the class) is counted in samples (RTP
  timestamps at the phone), so delivery jitter does not change it. Every received frame counts
  as played from the moment it arrived (onset time = arrival + its offset in the frame / rate):
  frame alignment adds nothing. Phone->agent: from the phone's sendto of the packet the burst
  starts (sample 0) to that onset in the agent's AudioStream frames (stamped when the iterator
  hands them over). Agent->phone: from the agent's `capture_frame` of the burst's first frame
  to its onset in the PCMU the phone received, by the kernel's receive timestamp
  (CLOCK_REALTIME, converted);
- what the SDK itself adds is in these end-to-end figures: on receive its NetEq jitter buffer,
  a 10 ms pull and the hop to Python; on send its capture queue, 20 ms Opus packetisation and
  pacer. There is no SDK-free path to compare with (the SDK needs the server, and an SDK-to-SDK
  path through the server has the server's WebRTC side twice), so "added" is an estimate:
  phone->agent minus the call's mean NetEq delay over the window (the SDK's getStats:
  jitterBufferDelay / jitterBufferEmittedCount, whole 10 ms steps per packet: +-10 ms);
  agent->phone minus the source's queued audio when the burst was captured
  (`queued_duration`). The packetisation, the pull and the hop to Python stay in "added",
  and the agent's own lag grows with its load: read it as an upper bound of the server's share;
- loss: RTP sequence gaps and missing 20 ms packets at the phones; at the agent the SDK's
  inbound packetsLost and concealed samples (getStats, window start to end); bursts missing in
  either direction (with how late the agent captured the ones that went missing); the
  server's /metrics RTP and WebRTC audio counters before and after the step;
- CPU over the window: the server's utime+stime (/proc/<pid>/stat, all threads) as % of one
  core (its media path is one event loop) and per call; the agent process's, all threads and
  its Python thread alone; the phones' (this process); "other" = the machine's busy time
  (/proc/stat, less steal) minus all three: kernel networking and any other process.

The window: from --warmup s after the last call was answered, --seconds long; bursts sent in
it count. Stops at the first step with a failed call, a BYE without its 200, loss, a missing
burst, or the agent saturated (its Python thread > 90% of a core, or captures more than 100 ms
behind its real-time schedule); --keep-going runs every step. "Largest N held without loss" is
the largest clean step. Goal (the issue): INVITE->200 p95 <= 300 ms, added latency p95 <= 40 ms
each way.

Every loop is bounded in count and time; SIP/RTP only on 127.0.0.1, WebRTC only on the veth
pair; every process started is stopped (also on Ctrl-C or SIGTERM). Prints a table and one
JSON line; --keep keeps the server's and agent's logs and each step's raw times.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import gc
import json
import os
import secrets
import select
import signal
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from livekit import api
from livekit.protocol import sip
from tests import netns
from tests.helpers import API_KEY, API_SECRET, ServerProcess, free_sip_port

from bench.agent_peer import BURST_MS, CLASSES, LATE_S, QUIET_NS, THRESHOLD, burst, burst_class
from bench.common import (
    PCMU_PT,
    TICKS,
    cpu_seconds,
    invite,
    keep_or_remove,
    machine_ticks,
    print_result,
    raise_open_files,
    run_info,
    scrape,
    self_cpu,
    stop_if_running,
    thread_cpu,
    udp_counters,
    wait_quiet,
)
from bench.media import (
    ANC_SIZE,
    DRAIN_LIMIT,
    FRAME_NS,
    RTP_HEADER,
    SAMPLES,
    SILENCE,
    TIMESPEC,
    Call,
    Generator,
    choose_rtp_range,
    header,
    media_deltas,
    percentile,
    wait_drained,
)
from sipbridge.media.g711 import decode_ulaw_sample, encode_ulaw_sample

PEER = Path(__file__).resolve().parent / "agent_peer.py"
RULE_PREFIX = "call"
RTP_HEAD = struct.Struct("!BBHII")
NS_PER_SAMPLE = 1_000_000_000 // 8000
BURST_PCMU = bytes(encode_ulaw_sample(int(s)) for s in burst(8000, BURST_MS))
BURST_PAYLOAD = BURST_PCMU + SILENCE[len(BURST_PCMU) :]  # 20 whole cycles: repeats seamlessly
# mu-law code -> 1 when its sample is beyond the onset threshold: bytes.translate finds it
LOUD = bytes(int(abs(decode_ulaw_sample(c)) > THRESHOLD) for c in range(256))
EARLY_NS = 2_000_000  # an onset may come this much before its burst (rounding)
DRAIN_S = 1.0  # streaming goes on after the window, for its last bursts
MAX_CALLS = 64
LATE_MS = round(LATE_S * 1000)
LOSS_KEYS = (
    "phone_seq_gaps",
    "phone_late_packets",
    "agent_packets_lost",
    "bursts_missing_phone_to_agent",
    "bursts_missing_agent_to_phone",
)
MAX_STEPS = 16
SATURATED_PCT = 90.0


# -- clocks and /proc ---------------------------------------------------------------------------


def realtime_offset() -> int:
    """CLOCK_REALTIME - CLOCK_MONOTONIC in ns (the tightest of a few readings): kernel receive
    timestamps are REALTIME, the agent's are MONOTONIC."""
    best, offset = 1 << 62, 0
    for _ in range(20):
        m0 = time.monotonic_ns()
        r = time.time_ns()
        m1 = time.monotonic_ns()
        if m1 - m0 < best:
            best, offset = m1 - m0, r - (m0 + m1) // 2
    return offset


def ms(ns_values: list[int], p: float) -> float | None:
    return percentile(sorted(ns_values), p)


def summary_ms(values: list[int]) -> dict[str, float | None]:
    ordered = sorted(values)
    return {
        "p50": percentile(ordered, 50),
        "p95": percentile(ordered, 95),
        "max": round(ordered[-1] / 1e6, 2) if ordered else None,
        "min": round(ordered[0] / 1e6, 2) if ordered else None,
        "count": float(len(ordered)),
    }


# -- the phones ---------------------------------------------------------------------------------


class Phones(Generator):
    """bench/media.py's UAC loop, one call per room: a tone burst every --period-ms in the
    PCMU it sends, onsets found in the PCMU it receives."""

    def __init__(self, n: int, step: int, server_sip: str, args: argparse.Namespace) -> None:
        opts = argparse.Namespace(
            calls=n,
            direct=False,
            cps=args.cps,
            slots=20,
            seconds=args.seconds,
            warmup=args.warmup,
            step=step,
            server_pid=0,
            server_sip=server_sip,
            rtpengine_ng=0,  # the calls go to our server, not to an rtpengine
        )
        super().__init__(opts)
        self.period = max(2, args.period_ms * 1_000_000 // FRAME_NS)  # packets from burst to burst
        self.offset = realtime_offset()
        self.invite_at = [0] * n
        self.packets = [0] * n  # sent since answered: the burst schedule
        # [send time (monotonic ns), class] of each burst; [onset, length (ns)] received
        self.bursts: list[list[list[int]]] = [[] for _ in range(n)]
        self.onsets: list[list[list[int]]] = [[] for _ in range(n)]
        self.onset_pos = [0] * n  # RTP timestamp of the current onset
        self.ts_last = [0] * n
        self.ts_wraps = [0] * n
        self.loud_left = [0] * n  # packets of the current burst still to send
        self.last_loud = [-(1 << 40)] * n  # RTP timestamp of the last loud sample
        self.rx = [0] * n  # packets received in the window
        self.rx_gaps = [0] * n  # sequence gaps in the window
        self.rx_late = [0] * n  # consecutive packets > 60 ms apart in the window
        self.rx_last = [0] * n
        self.rx_seq = [-1] * n
        self.other_pt = 0
        self.win_mono = (1 << 62, 1 << 62)

    def number(self, call: Call) -> str:
        return f"{self.step:02d}{call.idx:04d}"

    def invite(self, call: Call, now: int) -> None:
        i, number = call.idx, self.number(call)
        call.call_id = f"agent-{self.step}-{i}-{secrets.token_hex(6)}"
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
            origin="phone",
            session=i + 1,
            rtp_port=call.rtp.getsockname()[1],
            rtcp_port=call.rtcp.getsockname()[1],
        )
        call.state = "inviting"
        self.by_call_id[call.call_id] = call
        self.invite_at[i] = time.monotonic_ns()
        self._start_tx(call, call.invite, now)

    def _request(self, call: Call, method: str, to: str) -> bytes:
        """CANCEL, or the ACK of a non-2xx: the INVITE's Request-URI, Via branch and CSeq."""
        number = self.number(call)
        return (
            f"{method} sip:{number}@{self.server[0]}:{self.server[1]} SIP/2.0\r\n"
            f"{self._via(call.branch)}\r\nMax-Forwards: 70\r\n{call.from_hdr}\r\n"
            f"To: {to}\r\nCall-ID: {call.call_id}\r\nCSeq: 1 {method}\r\n"
            f"Content-Length: 0\r\n\r\n"
        ).encode()

    def cancel(self, call: Call) -> None:
        self._send_sip(self._request(call, "CANCEL", f"<sip:{self.number(call)}@{self.server[0]}>"))

    def _invite_response(
        self, call: Call, status: int, headers: list[tuple[str, str]], body: bytes
    ) -> None:
        if status < 300:
            super()._invite_response(call, status, headers, body)
            return
        if call.state == "inviting":
            self.pending.discard(call)
            call.state, call.status = "failed", status
            self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1
        self._send_sip(self._request(call, "ACK", header(headers, "to")))

    def send_slot(self, now_mono: int) -> None:
        self.next_slot_at += self.slot_ns
        calls = self.slot_calls[self.slot]
        self.slot = (self.slot + 1) % self.slots
        if not self.streaming or not calls:
            return
        pack, clock = RTP_HEAD.pack, time.monotonic_ns
        for call in calls:
            remote = call.remote
            if remote is None:
                continue
            i = call.idx
            start = (self.packets[i] + 7 * i) % self.period == 0
            self.packets[i] += 1
            if start:
                cls = len(self.bursts[i]) % CLASSES
                self.loud_left[i] = cls + 1
            loud = self.loud_left[i] > 0
            self.loud_left[i] -= loud
            data = pack(0x80, PCMU_PT | call.marker, call.seq, call.ts, call.ssrc) + (
                BURST_PAYLOAD if loud else SILENCE
            )
            call.marker = 0
            call.seq = (call.seq + 1) & 0xFFFF
            call.ts = (call.ts + SAMPLES) & 0xFFFFFFFF
            sent_at = clock()
            try:
                call.rtp.sendto(data, remote)
            except OSError:
                self.send_errors += 1
                continue
            if start:
                self.bursts[i].append([sent_at, cls])

    def read_rtp(self, call: Call) -> None:
        recvmsg, unpack_ts = call.rtp.recvmsg, TIMESPEC.unpack
        i, offset = call.idx, self.offset
        win_start, win_end = self.win_mono
        for _ in range(DRAIN_LIMIT):
            try:
                data, anc, _, _ = recvmsg(2048, ANC_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.recv_errors += 1
                continue
            if anc:
                sec, nsec = unpack_ts(anc[0][2][: TIMESPEC.size])
                arrival = sec * 1_000_000_000 + nsec - offset
            else:
                arrival = time.monotonic_ns()
            if len(data) < RTP_HEADER or data[0] >> 6 != 2:
                self.stray += 1
                continue
            if data[1] & 0x7F != PCMU_PT:
                self.other_pt += 1
                continue
            start = RTP_HEADER + 4 * (data[0] & 0x0F)
            if data[0] & 0x10 and len(data) >= start + 4:  # header extension
                start += 4 + 4 * int.from_bytes(data[start + 2 : start + 4], "big")
            payload = data[start:]
            seq = int.from_bytes(data[2:4], "big")
            if win_start <= arrival < win_end:
                self.rx[i] += 1
                if self.rx_seq[i] >= 0:
                    gap = (seq - self.rx_seq[i] - 1) & 0xFFFF
                    if 0 < gap < 0x8000:
                        self.rx_gaps[i] += gap
                if self.rx_last[i] and arrival - self.rx_last[i] > 60_000_000:
                    self.rx_late[i] += 1
            self.rx_seq[i], self.rx_last[i] = seq, arrival
            marks = payload.translate(LOUD)
            first = marks.find(1)
            # positions by RTP timestamp (unwrapped): arrival jitter changes no length
            ts = int.from_bytes(data[4:8], "big")
            if 0 <= ts - self.ts_last[i] + (1 << 32) < 1 << 31:
                self.ts_wraps[i] += 1 << 32
            self.ts_last[i] = ts
            if first >= 0:
                ts += self.ts_wraps[i]
                if ts + first - self.last_loud[i] >= QUIET_NS // NS_PER_SAMPLE:
                    self.onset_pos[i] = ts + first
                    self.onsets[i].append([arrival + first * NS_PER_SAMPLE, 0])
                self.last_loud[i] = ts + marks.rfind(1)
                if self.onsets[i]:
                    length = self.last_loud[i] - self.onset_pos[i]
                    self.onsets[i][-1][1] = length * NS_PER_SAMPLE

    def run_calls(
        self, mark: Callable[[str], None], watch: Callable[[], dict[str, float]]
    ) -> dict[str, object]:
        """Dial, hold through the warm-up and the window (`mark` at its edges, `watch` for the
        CPU counters), hang up; the phones' figures."""
        self.next_slot_at = time.monotonic_ns() + self.slot_ns
        self.invite_queue = list(reversed(self.calls))
        self.next_paced_at = time.monotonic_ns()
        began = time.monotonic()
        self.spin(
            self.n / self.cps + 15, lambda: not self.invite_queue and not self.count("inviting")
        )
        for call in self.calls:
            if call.state == "inviting":
                self.cancel(call)
                call.state, call.status = "failed", 487
        setup_s = time.monotonic() - began
        self.spin(self.warmup)
        mark("start")
        cpu0, self0 = watch(), self_cpu()
        win_start = time.monotonic_ns()
        self.win_mono = (win_start, 1 << 62)
        self.spin(self.seconds)
        win_end = time.monotonic_ns()
        self.win_mono = (win_start, win_end)
        cpu1, self1 = watch(), self_cpu()
        mark("end")
        self.spin(DRAIN_S)  # the window's last bursts on their way, both directions
        self.streaming = False
        up, gone = self.count("up"), self.count("gone")
        self.bye_queue = [c for c in reversed(self.calls) if c.state == "up"]
        self.next_paced_at = time.monotonic_ns()
        self.spin(
            len(self.bye_queue) / self.cps + 10,
            lambda: not self.bye_queue and not self.count("bye"),
        )
        drift = realtime_offset() - self.offset
        return {
            "answered": up + gone,
            "failed": self.count("failed"),
            "failed_statuses": self.statuses,
            "ended_by_server": gone,
            "byes_ok": sum(1 for c in self.calls if 200 <= c.bye_status < 300),
            "setup_s": round(setup_s, 2),
            "win_start": win_start,
            "win_end": win_end,
            "window_s": round((win_end - win_start) / 1e9, 3),
            "cpu_before": cpu0,
            "cpu_after": cpu1,
            "phone_cpu_s": round(self1 - self0, 3),
            "invite_at": self.invite_at,
            "ok_at": [c.answered_at if c.status == 200 else 0 for c in self.calls],
            "bursts": self.bursts,
            "onsets": self.onsets,
            "rx": self.rx,
            "rx_gaps": self.rx_gaps,
            "rx_late": self.rx_late,
            "other_pt": self.other_pt,
            "stray": self.stray,
            "send_errors": self.send_errors,
            "recv_errors": self.recv_errors,
            "clock_drift_us": round(drift / 1000, 1),
        }


# -- the agent process ----------------------------------------------------------------------


class Agent:
    """bench/agent_peer.py inside the namespace: started, commanded, read, always stopped."""

    def __init__(self, ns: netns.VethNamespace, url: str, rooms: list[str], log: Path) -> None:
        self.ns, self.url, self.rooms, self.log = ns, url, rooms, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.buffer = b""
        self.pid = 0

    def start(self, args: argparse.Namespace, limit: float) -> dict[str, object]:
        env = dict(os.environ, LIVEKIT_API_KEY=API_KEY, LIVEKIT_API_SECRET=API_SECRET)
        cmd = self.ns.exec_args(
            sys.executable,
            str(PEER),
            *("--url", self.url, "--rooms", ",".join(self.rooms)),
            *("--queue-ms", str(args.queue_ms), "--period-ms", str(args.period_ms)),
            *("--speak-from", args.speak_from),
            *("--limit", str(round(limit))),
        )
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=env
            )
        ready = self.read_event("ready", 30 + len(self.rooms))
        self.pid = int(ready.get("pid", 0))  # type: ignore[call-overload]
        return ready

    def read_event(self, name: str, timeout: float) -> dict[str, object]:
        """The next stdout line of event `name` (others are skipped); bounded by `timeout`."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        for _ in range(100_000):
            while b"\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\n", 1)
                with contextlib.suppress(ValueError):
                    event: dict[str, object] = json.loads(line)
                    if event.get("event") == name:
                        return event
                    if event.get("event") == "error":
                        raise RuntimeError(f"agent: {event.get('error')}")
            left = deadline - time.monotonic()
            if left <= 0:
                break
            readable, _, _ = select.select([fd], [], [], left)
            if not readable:
                break
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            self.buffer += chunk
        tail = self.log.read_text(errors="replace")[-1500:] if self.log.exists() else ""
        raise RuntimeError(f"agent: no {name!r} within {timeout:.0f} s; stderr tail:\n{tail}")

    def command(self, line: str) -> None:
        if self.proc is not None and self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.write(line.encode() + b"\n")
                self.proc.stdin.flush()

    def finish(self, timeout: float) -> dict[str, object]:
        self.command("stop")
        try:
            return self.read_event("result", timeout)
        finally:
            self.stop()

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            if proc.stdin is not None:
                proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()


# -- one step -----------------------------------------------------------------------------------


def match(
    sent: list[tuple[int, int]], onsets: list[tuple[int, int]], lo: int, hi: int, window: int
) -> tuple[list[tuple[int, int]], int, int]:
    """([(burst time, latency)] of the bursts sent in [lo, hi), missing bursts, spurious
    onsets). `sent`: (time, class); `onsets`: (onset, length), both in time order. A
    burst takes the first unused onset of its class (its length) from EARLY_NS before it to
    `window` after it; the classes take turns, so an onset of a neighbouring burst never
    matches, and `window` can be nearly three periods."""
    starts = [o for o, _ in onsets]
    used: set[int] = set()
    found: list[tuple[int, int]] = []
    missing = 0
    for s, cls in sent:
        if not lo <= s < hi:
            continue
        k = bisect.bisect_left(starts, s - EARLY_NS)
        hit = -1
        while k < len(onsets) and starts[k] <= s + window:
            if k not in used and burst_class(onsets[k][1]) == cls:
                hit = k
                break
            k += 1
        if hit < 0:
            missing += 1
        else:
            used.add(hit)
            found.append((s, starts[hit] - s))
    spurious = sum(1 for j, o in enumerate(starts) if lo + window <= o < hi and j not in used)
    return found, missing, spurious


def _delta(stats: dict[str, dict[str, float]], key: str) -> float:
    start, end = stats.get("start", {}), stats.get("end", {})
    if key not in start or key not in end:
        return 0.0
    return end[key] - start[key]


def step_figures(
    n: int,
    phone: dict[str, object],
    agent: list[dict[str, object]],
    extra: dict[str, object],
    period_ms: int,
) -> dict[str, object]:
    window = (CLASSES * period_ms - 100) * 1_000_000  # just short of the same class again
    lo, hi = phone["win_start"], phone["win_end"]
    assert isinstance(lo, int) and isinstance(hi, int)
    bursts, onsets = phone["bursts"], phone["onsets"]
    invite_at, ok_at = phone["invite_at"], phone["ok_at"]
    assert isinstance(bursts, list) and isinstance(onsets, list)
    assert isinstance(invite_at, list) and isinstance(ok_at, list)
    p2a: list[int] = []
    p2a_added: list[int] = []
    a2p: list[int] = []
    a2p_added: list[int] = []
    queued: list[int] = []
    jb_means: list[float] = []
    invite_200: list[int] = []
    overhead: list[int] = []
    invite_join: list[int] = []
    invite_published: list[int] = []
    missing_p2a = missing_a2p = spurious = sent_p2a = sent_a2p = 0
    a2p_per_call: list[float | None] = []  # each call's median: a standing queue shows here
    missing_behind: list[float] = []  # how late the agent captured the bursts that went missing
    out_packets = 0.0
    lost = concealed = samples = 0.0
    frames = frame_gaps = late = capture_errors = 0
    errors = [str(a["error"]) for a in agent if a.get("error")]
    for i, a in enumerate(agent):
        stats = a["stats"]
        assert isinstance(stats, dict)
        jb_emitted = _delta(stats, "jb_emitted")
        jb_ms = _delta(stats, "jb_delay_s") / jb_emitted * 1000 if jb_emitted else 0.0
        jb_means.append(jb_ms)
        lost += _delta(stats, "in_lost")
        concealed += _delta(stats, "concealed")
        samples += _delta(stats, "samples")
        a_onsets = a["onsets"]
        assert isinstance(a_onsets, list)
        found, miss, spur = match(
            [(int(t), int(c)) for t, c in bursts[i]],
            [(int(o), int(e)) for o, e in a_onsets],
            lo,
            hi,
            window,
        )
        p2a += [x for _, x in found]
        p2a_added += [x - int(jb_ms * 1e6) for _, x in found]
        missing_p2a += miss
        sent_p2a += sum(1 for t, _ in bursts[i] if lo <= t < hi)
        spurious += spur
        a_bursts = a["bursts"]
        assert isinstance(a_bursts, list)
        queue_at = {int(t): int(float(q) * 1e6) for t, q, _, _ in a_bursts}
        behind_at = {int(t): float(b) for t, _, b, _ in a_bursts}
        classes = [(int(t), int(c)) for t, _, _, c in a_bursts]
        found, miss, spur = match(classes, [(int(o), int(e)) for o, e in onsets[i]], lo, hi, window)
        a2p += [x for _, x in found]
        a2p_per_call.append(ms([x for _, x in found], 50))
        a2p_added += [x - queue_at[t] for t, x in found]
        queued += [queue_at[t] for t, _ in found]
        missing_a2p += miss
        sent_a2p += sum(1 for t, _ in classes if lo <= t < hi)
        matched = {t for t, _ in found}
        missing_behind += [behind_at[t] for t in queue_at if lo <= t < hi and t not in matched]
        out_packets += _delta(stats, "out_packets")
        spurious += spur
        if invite_at[i] and ok_at[i]:
            invite_200.append(ok_at[i] - invite_at[i])
            subscribed = a["subscribed_at"]
            joined = a["joined_at"]
            assert isinstance(subscribed, int) and isinstance(joined, int)
            if subscribed:
                overhead.append(ok_at[i] - subscribed)
            if joined:
                invite_join.append(joined - invite_at[i])
            published = a.get("published_at")
            if isinstance(published, int) and published:
                invite_published.append(published - invite_at[i])
        frames += int(a["frames"])  # type: ignore[call-overload]
        frame_gaps += int(a["frame_gaps"])  # type: ignore[call-overload]
        late += int(a["late"])  # type: ignore[call-overload]
        capture_errors += int(a["capture_errors"])  # type: ignore[call-overload]
    wall = (hi - lo) / 1e9
    cpu0, cpu1 = phone["cpu_before"], phone["cpu_after"]
    assert isinstance(cpu0, dict) and isinstance(cpu1, dict)
    used = {k: cpu1[k] - cpu0[k] for k in cpu0}
    phone_cpu = phone["phone_cpu_s"]
    assert isinstance(phone_cpu, float)
    server_pct = used["server"] / wall * 100
    agent_pct = used["agent"] / wall * 100
    agent_main_pct = used["agent_main"] / wall * 100
    busy = used["machine"] - used["steal"]  # the hypervisor's share is no process's here
    other = max(0.0, busy - used["server"] - used["agent"] - phone_cpu) / wall * 100
    rx, rx_gaps, rx_late = phone["rx"], phone["rx_gaps"], phone["rx_late"]
    assert isinstance(rx, list) and isinstance(rx_gaps, list) and isinstance(rx_late, list)
    expected_rx = n * wall * 1e9 / FRAME_NS
    calls_ok = (
        phone["failed"] == 0
        and phone["answered"] == n
        and phone["byes_ok"] == n
        and phone["ended_by_server"] == 0
        and not errors
    )
    loss = {
        "phone_seq_gaps": sum(rx_gaps),
        "phone_late_packets": sum(rx_late),
        "phone_packets": sum(rx),
        "phone_packets_expected": round(expected_rx),
        "agent_packets_lost": lost,
        "agent_concealed_pct": round(concealed / samples * 100, 3) if samples else None,
        "bursts_sent_phone_to_agent": sent_p2a,
        "bursts_sent_agent_to_phone": sent_a2p,
        "bursts_missing_phone_to_agent": missing_p2a,
        "bursts_missing_agent_to_phone": missing_a2p,
        "missing_bursts_captured_late_ms": sorted(round(b, 1) for b in missing_behind)[:20],
        "agent_packets_sent": out_packets,
        "agent_packets_sent_expected": round(n * wall * 1e9 / FRAME_NS),
        "spurious_onsets": spurious,
    }
    lossless = (
        loss["phone_seq_gaps"] == 0
        and lost == 0
        and missing_p2a == 0
        and missing_a2p == 0
        and sum(rx) >= expected_rx - 2 * n
    )
    saturated = agent_main_pct > SATURATED_PCT or late > 0
    return {
        "n": n,
        "calls_ok": calls_ok,
        "lossless": lossless,
        "agent_saturated": saturated,
        "answered": phone["answered"],
        "byes_ok": phone["byes_ok"],
        "failed_statuses": phone["failed_statuses"],
        "invite_to_200_ms": summary_ms(invite_200),
        "invite_to_agent_sees_caller_ms": summary_ms(invite_join),
        "invite_to_agent_sees_track_ms": summary_ms(invite_published),
        "answer_overhead_ms": summary_ms(overhead),
        "phone_to_agent_ms": summary_ms(p2a),
        "phone_to_agent_added_ms": summary_ms(p2a_added),
        "agent_to_phone_ms": summary_ms(a2p),
        "agent_to_phone_added_ms": summary_ms(a2p_added),
        "agent_to_phone_per_call_p50_ms": a2p_per_call,
        "agent_jitter_buffer_mean_ms": round(sum(jb_means) / len(jb_means), 2)
        if jb_means
        else None,
        "agent_capture_queue_ms": summary_ms(queued),
        "loss": loss,
        "server_cpu_pct": round(server_pct, 1),
        "server_cpu_pct_per_call": round(server_pct / n, 2),
        "agent_cpu_pct": round(agent_pct, 1),
        "agent_python_thread_cpu_pct": round(agent_main_pct, 1),
        "phone_cpu_pct": round(phone_cpu / wall * 100, 1),
        "other_cpu_pct": round(other, 1),
        "machine_busy_pct": round(busy / wall * 100, 1),
        "machine_steal_pct": round(used["steal"] / wall * 100, 1),
        "agent_frames": frames,
        "agent_frame_gaps": frame_gaps,
        "agent_late_captures": late,
        "agent_capture_errors": capture_errors,
        "agent_errors": errors[:5],
        "window_s": round(wall, 3),
        "setup_s": phone["setup_s"],
        "clock_drift_us": phone["clock_drift_us"],
        "phone_other_payload_packets": phone["other_pt"],
        **extra,
    }


def rtc_deltas(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """The server's WebRTC audio counters (to SDK clients) over the step."""
    prefix = 'sipbridge_rtc_audio{counter="'
    names = {k for k in after if k.startswith(prefix)}
    return {k[len(prefix) : -2]: after[k] - before.get(k, 0) for k in sorted(names)}


def run_step(
    n: int,
    step: int,
    *,
    args: argparse.Namespace,
    ns: netns.VethNamespace,
    server: ServerProcess,
    sip_port: int,
    log: Path,
) -> dict[str, object]:
    assert server.proc is not None
    server_pid = server.proc.pid
    rooms = [f"{RULE_PREFIX}_{step:02d}{i:04d}" for i in range(n)]
    limit = n / args.cps + args.warmup + args.seconds + 90
    agent = Agent(ns, f"ws://{ns.host_ip}:{server.port}", rooms, log)
    phones: Phones | None = None
    try:
        ready = agent.start(args, limit)
        if ready.get("connected") != n:
            raise RuntimeError(f"agent connected {ready.get('connected')} of {n}: {ready}")
        before = scrape(server.url)
        udp0 = udp_counters()
        pid = agent.pid

        def watch() -> dict[str, float]:
            return {
                "server": cpu_seconds(server_pid),
                "agent": cpu_seconds(pid),
                "agent_main": thread_cpu(pid, pid),
                "machine": machine_ticks()[0] / TICKS,
                "steal": machine_ticks()[1] / TICKS,
            }

        time.sleep(args.invite_delay)
        phones = Phones(n, step, f"127.0.0.1:{sip_port}", args)
        gc.disable()  # no collector pauses in the send loop; the step is bounded
        try:
            phone = phones.run_calls(lambda label: agent.command(f"mark {label}"), watch)
        finally:
            gc.enable()
        result = agent.finish(30 + n)
    finally:
        agent.stop()
        if phones is not None:
            phones.close()
    if args.keep:  # the raw material, for a second look
        raw = {"phone": phone, "agent": result}
        (log.parent / f"step-{step:02d}-n{n}.json").write_text(json.dumps(raw))
    left = wait_drained(server.url, 15)
    udp1 = udp_counters()
    after = scrape(server.url)
    calls = result["calls"]
    assert isinstance(calls, list)
    extra: dict[str, object] = {
        "agent_connect_s": ready.get("seconds"),
        "server_metrics": media_deltas(before, after),
        "server_rtc_audio": rtc_deltas(before, after),
        "udp_drops": sum(udp1.get(k, 0) - udp0.get(k, 0) for k in ("RcvbufErrors", "SndbufErrors")),
        "left_on_server": left,
    }
    return step_figures(n, phone, calls, extra, args.period_ms)


# -- the table ----------------------------------------------------------------------------------


def _slash(*values: object) -> str:
    def one(v: object) -> str:
        if v is None:
            return "-"
        return f"{v:.1f}" if isinstance(v, float) and not v.is_integer() else str(v)

    return "/".join(one(v) for v in values)


def _pp(d: object, *keys: str) -> str:
    assert isinstance(d, dict)
    return _slash(*(d.get(k) for k in keys))


HEADER = (
    f"{'N':>3} {'up':>3} {'bye':>3} {'INV->200 p50/95':>15} {'ans ovh':>7} "
    f"{'ph->ag p50/95':>13} {'added95':>7} {'ag->ph p50/95':>13} {'added95':>7} "
    f"{'miss p>a/a>p':>12} {'gaps/lost':>9} {'srv CPU%':>8} {'%/call':>6} {'agent% all/py':>13} "
    f"{'ph/oth%':>8}"
)
LEGEND = (
    "ms; ans ovh: 200 received - the agent's track_subscribed, p50; ph->ag, ag->ph: end to end; "
    "added95: p95 less the SDK's jitter buffer (ph->ag) or capture queue (ag->ph) as the SDK "
    "reports them, an upper bound of the server's share; miss: bursts missing; gaps/lost: RTP "
    "sequence gaps at the phones / packets the SDK lost; CPU in % of one core: the server, per "
    "call, the agent process / its Python thread, the phones / the rest of the machine"
)


def _row(s: dict[str, object]) -> str:
    loss = s["loss"]
    assert isinstance(loss, dict)
    return (
        f"{s['n']:>3} {s['answered']:>3} {s['byes_ok']:>3} "
        f"{_pp(s['invite_to_200_ms'], 'p50', 'p95'):>15} "
        f"{_pp(s['answer_overhead_ms'], 'p50'):>7} "
        f"{_pp(s['phone_to_agent_ms'], 'p50', 'p95'):>13} "
        f"{_pp(s['phone_to_agent_added_ms'], 'p95'):>7} "
        f"{_pp(s['agent_to_phone_ms'], 'p50', 'p95'):>13} "
        f"{_pp(s['agent_to_phone_added_ms'], 'p95'):>7} "
        f"{_pp(loss, 'bursts_missing_phone_to_agent', 'bursts_missing_agent_to_phone'):>12} "
        f"{_slash(loss['phone_seq_gaps'], int(loss['agent_packets_lost'])):>9} "
        f"{s['server_cpu_pct']:>8} {s['server_cpu_pct_per_call']:>6} "
        f"{_slash(s['agent_cpu_pct'], s['agent_python_thread_cpu_pct']):>13} "
        f"{_slash(s['phone_cpu_pct'], s['other_cpu_pct']):>8}"
    )


def summarise(steps: list[dict[str, object]]) -> dict[str, object]:
    def clean(s: dict[str, object]) -> bool:
        return s["calls_ok"] is True and s["lossless"] is True

    first_bad = next((s for s in steps if not clean(s)), None)
    saturated = next((s for s in steps if s["agent_saturated"]), None)
    held = [s for s in steps if clean(s)]
    best = max(held, key=lambda s: int(s["n"]), default=None)  # type: ignore[call-overload]
    stopped = next((s for s in steps if not clean(s) or s["agent_saturated"]), None)
    limited_by = "not reached (every step clean)"
    if stopped is not None:
        loss = stopped["loss"]
        assert isinstance(loss, dict)
        reasons = []
        if not stopped["calls_ok"]:
            reasons.append(
                f"calls: {stopped['answered']} answered, {stopped['byes_ok']} BYEs ok, "
                f"failed {json.dumps(stopped['failed_statuses'])}, "
                f"agent errors {stopped['agent_errors']}"
            )
        lossy = {k: v for k, v in loss.items() if k in LOSS_KEYS and v}
        if lossy:
            reasons.append(f"loss {json.dumps(lossy)}")
        if stopped["agent_saturated"]:
            reasons.append(
                f"agent behind its real-time schedule: {stopped['agent_late_captures']} captures "
                f"> {LATE_MS} ms late (process {stopped['agent_cpu_pct']}% of a core, Python "
                f"thread {stopped['agent_python_thread_cpu_pct']}%)"
            )
        reasons.append(
            f"machine {stopped['machine_busy_pct']}% busy of {100 * (os.cpu_count() or 1)}% "
            f"(server {stopped['server_cpu_pct']}%)"
        )
        limited_by = f"N={stopped['n']}: " + "; ".join(reasons)
    # the goal is the server's: judged where the agent kept up (else its lag is in every figure)
    keeping_up = [s for s in held if not s["agent_saturated"]]
    judged = max(keeping_up or held, key=lambda s: int(s["n"]), default=None)  # type: ignore[call-overload]
    goal: dict[str, object] = {
        "at_n": judged["n"] if judged else None,
        "agent_kept_up": bool(keeping_up),
    }
    if judged is not None:
        inv = judged["invite_to_200_ms"]
        p2a, a2p = judged["phone_to_agent_added_ms"], judged["agent_to_phone_added_ms"]
        assert isinstance(inv, dict) and isinstance(p2a, dict) and isinstance(a2p, dict)
        goal["invite_to_200_p95_le_300ms"] = inv["p95"] is not None and inv["p95"] <= 300
        goal["phone_to_agent_added_p95_le_40ms"] = p2a["p95"] is not None and p2a["p95"] <= 40
        goal["agent_to_phone_added_p95_le_40ms"] = a2p["p95"] is not None and a2p["p95"] <= 40
        goal["met"] = all(v for k, v in goal.items() if k.endswith("ms"))
        goal["agent_to_phone_per_call_p50_ms"] = judged["agent_to_phone_per_call_p50_ms"]
    return {
        "max_calls_held_without_loss": best["n"] if best else 0,
        "first_loss_at": first_bad["n"] if first_bad else None,
        "agent_saturated_at": saturated["n"] if saturated else None,
        "limited_by": limited_by,
        "goal": goal,
    }


# -- the run ------------------------------------------------------------------------------------


async def create_rule(url: str) -> str:
    async with api.LiveKitAPI(url=url, api_key=API_KEY, api_secret=API_SECRET) as lk:
        rule = await lk.sip.create_dispatch_rule(
            sip.CreateSIPDispatchRuleRequest(
                dispatch_rule=sip.SIPDispatchRuleInfo(
                    rule=sip.SIPDispatchRule(
                        dispatch_rule_callee=sip.SIPDispatchRuleCallee(room_prefix=RULE_PREFIX)
                    ),
                    name="agent call bench",
                )
            )
        )
        return str(rule.sip_dispatch_rule_id)


@contextlib.contextmanager
def terminate_on_signal() -> Iterator[None]:
    """SIGTERM as KeyboardInterrupt, so the finally blocks stop every process."""

    def raise_interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def orchestrate(args: argparse.Namespace) -> int:
    steps_n = [int(x) for x in args.steps.split(",") if x.strip()][:MAX_STEPS]
    if not steps_n or any(not 0 < n <= MAX_CALLS for n in steps_n):
        print(f"--steps: call counts in 1..{MAX_CALLS}", file=sys.stderr)
        return 2
    if not 0 < args.seconds <= 60 or args.cps <= 0 or not 300 <= args.period_ms <= 5000:
        print("--seconds in (0, 60], --cps > 0, --period-ms in [300, 5000]", file=sys.stderr)
        return 2
    reason = netns.available()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    raise_open_files()
    tmp = Path(tempfile.mkdtemp(prefix="bench-agent-"))
    steps: list[dict[str, object]] = []
    idle_pct = 0.0
    rtp_range = choose_rtp_range(args.rtp_ports)
    began = time.monotonic()
    try:
        with terminate_on_signal(), netns.veth_namespace() as ns:
            sip_port = free_sip_port()
            server = ServerProcess(
                tmp,
                *("--sip", f"127.0.0.1:{sip_port}", "--rtp-ports", rtp_range),
                *("--rtc-ip", ns.host_ip, "--log-level", "warning"),
                http_host=ns.host_ip,
            )
            try:
                server.start()
                assert server.proc is not None
                pid = server.proc.pid
                asyncio.run(create_rule(server.url))
                c0, t0 = cpu_seconds(pid), time.monotonic()
                time.sleep(1.0)
                idle_pct = (cpu_seconds(pid) - c0) / (time.monotonic() - t0) * 100
                print(HEADER, file=sys.stderr, flush=True)
                for i, n in enumerate(steps_n):
                    quiet = wait_quiet(args.quiet_wait, [pid]) if args.quiet_wait > 0 else None
                    try:
                        figures = run_step(
                            n,
                            i + 1,
                            args=args,
                            ns=ns,
                            server=server,
                            sip_port=sip_port,
                            log=tmp / "agent.log",
                        )
                    except (RuntimeError, OSError, urllib.error.URLError) as exc:
                        print(f"step N={n} failed: {exc}", file=sys.stderr, flush=True)
                        figures = {"n": n, "error": str(exc)[-2000:]}
                        steps.append(figures)
                        break
                    figures["other_cpu_pct_before"] = quiet
                    steps.append(figures)
                    print(_row(figures), file=sys.stderr, flush=True)
                    stop = not figures["calls_ok"] or not figures["lossless"]
                    if (stop or figures["agent_saturated"]) and not args.keep_going:
                        break
            finally:
                stop_if_running(server)
    finally:
        keep_or_remove(tmp, args.keep)
    done = [s for s in steps if "error" not in s]
    summary = summarise(done)
    if len(done) < len(steps):
        summary["limited_by"] = f"step N={steps[-1]['n']} could not run: {steps[-1]['error']}"
    print(HEADER)
    for s in done:
        print(_row(s))
    goal = summary["goal"]
    assert isinstance(goal, dict)
    print(
        f"largest N held without loss: {summary['max_calls_held_without_loss']}; limited by: "
        f"{summary['limited_by']}. Goal (INVITE->200 p95 <= 300 ms, added p95 <= 40 ms each "
        f"way) at the largest clean N with the agent keeping up: {json.dumps(goal)}. Server "
        f"idle {idle_pct:.1f}% CPU; "
        f"run {time.monotonic() - began:.0f} s."
    )
    print(LEGEND)
    line = {
        **run_info("agent_call"),
        "seconds_per_step": args.seconds,
        "warmup_s": args.warmup,
        "cps": args.cps,
        "queue_ms": args.queue_ms,
        "period_ms": args.period_ms,
        "rtp_ports": rtp_range,
        "server_idle_cpu_pct": round(idle_pct, 2),
        **summary,
        "steps": steps,
    }
    print_result(line)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--steps", default="1,2,4,8,12,16,24,32")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured window per step")
    parser.add_argument("--warmup", type=float, default=2.0, help="after the last answer")
    parser.add_argument("--cps", type=float, default=10.0, help="INVITEs (and BYEs) per second")
    parser.add_argument("--queue-ms", type=int, default=20, help="the agent's AudioSource queue")
    parser.add_argument("--period-ms", type=int, default=500, help="a tone burst every")
    parser.add_argument(
        "--speak-from",
        choices=("answer", "connect"),
        default="answer",
        help="the agent captures audio from its call's answer (default) or from its connect",
    )
    parser.add_argument(
        "--invite-delay", type=float, default=0.0, help="s from the agent ready to the INVITEs"
    )
    parser.add_argument("--rtp-ports", default="", help="server's RTP range (LO-HI)")
    parser.add_argument(
        "--quiet-wait", type=float, default=5.0, help="max s to wait for a quiet machine per step"
    )
    parser.add_argument("--keep-going", action="store_true", help="run every step")
    parser.add_argument("--keep", action="store_true", help="keep the server and agent logs")
    args = parser.parse_args()
    try:
        return orchestrate(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
