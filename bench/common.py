"""What every benchmark here measures the same way: CPU accounting from /proc, the machine's UDP
counters, the server's /metrics, percentiles, the INVITE a load generator sends, and the JSON
line that ends each run. Linux only (/proc), as the benchmarks are."""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import platform
import resource
import shutil
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

TICKS = os.sysconf("SC_CLK_TCK")
PCMU_PT = 0
EVENT_PT = 101


# -- CPU -----------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def thread_cpu(pid: int, tid: int) -> float:
    """utime+stime of one thread, seconds (0 once it is gone); the main thread's tid is the pid
    (a server's event loop)."""
    try:
        text = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def self_cpu() -> float:
    """CPU seconds of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def children_cpu() -> float:
    """CPU seconds of the children reaped so far (sipp, captures)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def machine_ticks() -> tuple[int, int]:
    """(busy, steal) clock ticks of all CPUs (/proc/stat): user nice system irq softirq steal."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return user + nice + system + irq + softirq + steal, steal


def machine_busy() -> float:
    """Busy seconds of all CPUs so far."""
    return machine_ticks()[0] / TICKS


def raise_open_files(want: int = 65536) -> None:
    """This process's soft limit of open files up to `want` (within the hard limit): sockets of
    thousands of calls; sipp and the server, started after, inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, want)), hard))


def wait_quiet(seconds: float, pids: list[int], window: float = 1.0) -> float:
    """Wait up to `seconds` for a `window` in which processes other than `pids` use under 15% of
    a core (this machine is shared); returns their share in the last window measured, in %."""
    deadline = time.monotonic() + seconds
    other = 0.0
    for _ in range(int(seconds / window) + 1):  # bounded: one window a turn
        busy0, own0, t0 = machine_busy(), sum(map(cpu_seconds, pids)), time.monotonic()
        time.sleep(window)  # the measurement window itself
        wall = time.monotonic() - t0
        own = sum(map(cpu_seconds, pids)) - own0
        other = (machine_busy() - busy0 - own) / wall * 100
        if other < 15 or time.monotonic() >= deadline:
            break
    return round(max(0.0, other), 1)


# -- the network ---------------------------------------------------------------------------------


def udp_counters() -> dict[str, int]:
    """The system's UDP counters (/proc/net/snmp): buffer drops among them."""
    rows = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines()]
    for names, values in itertools.pairwise(rows):
        if names[0] == "Udp:" and values[0] == "Udp:":
            return {n: int(v) for n, v in zip(names[1:], values[1:], strict=False)}
    return {}


def udp_rcvbuf_errors() -> int:
    """The system's UDP datagrams dropped on a full receive buffer."""
    return udp_counters().get("RcvbufErrors", 0)


def ephemeral_range() -> tuple[int, int]:
    """The ports the kernel picks from for outgoing sockets."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


# -- the server ----------------------------------------------------------------------------------


def scrape(url: str) -> dict[str, float]:
    """The server's /metrics, name{labels} -> value."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name and not line.startswith("#"):
            with contextlib.suppress(ValueError):
                out[name] = float(value)
    return out


def stop_if_running(server: Any) -> None:
    """A run's `ServerProcess` stopped after the run if it still runs (the run ended early);
    an error stopping it is not the run's result."""
    if server.proc is not None:
        with contextlib.suppress(Exception):
            server.stop(timeout=60)


def keep_or_remove(tmp: Path, keep: bool) -> None:
    """A run's scratch directory (server logs, recordings) after it: kept, and where it is said
    on stderr, with --keep; removed otherwise."""
    if keep:
        print(f"kept in {tmp}", file=sys.stderr)
    else:
        shutil.rmtree(tmp, ignore_errors=True)


# -- figures -------------------------------------------------------------------------------------


def pct(ordered: list[float] | list[int], p: float) -> float | None:
    """The p-th percentile (nearest rank) of sorted values; None for none."""
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def run_info(bench: str) -> dict[str, Any]:
    """What starts every benchmark's JSON line: its name, the Python and the CPUs it ran on."""
    return {"bench": bench, "python": platform.python_version(), "cpus": os.cpu_count()}


def print_result(line: dict[str, object]) -> None:
    """The JSON line that ends every benchmark's output (after its table)."""
    print(json.dumps(line, sort_keys=True), flush=True)


# -- SIP -----------------------------------------------------------------------------------------


def invite(
    *,
    number: str,
    server: tuple[str, int],
    via: str,
    from_hdr: str,
    call_id: str,
    contact: str,
    origin: str,
    session: int,
    rtp_port: int,
    rtcp_port: int,
) -> bytes:
    """A load generator's INVITE to `number` at `server`, offering PCMU and RFC 4733 events."""
    body = (
        f"v=0\r\no={origin} {session} 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {rtp_port} RTP/AVP {PCMU_PT} {EVENT_PT}\r\na=rtpmap:0 PCMU/8000\r\n"
        f"a=rtpmap:{EVENT_PT} telephone-event/8000\r\na=fmtp:{EVENT_PT} 0-16\r\n"
        f"a=rtcp:{rtcp_port}\r\na=ptime:20\r\na=sendrecv\r\n"
    ).encode()
    head = (
        f"INVITE sip:{number}@{server[0]}:{server[1]} SIP/2.0\r\n"
        f"{via}\r\nMax-Forwards: 70\r\n{from_hdr}\r\n"
        f"To: <sip:{number}@{server[0]}>\r\nCall-ID: {call_id}\r\n"
        f"CSeq: 1 INVITE\r\nContact: <{contact}>\r\n"
        f"Content-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body
