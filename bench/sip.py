"""SIP benchmark: message parse+serialise rate, and calls/s of a bare answering UAS on our stack
side by side with `sipp -sn uas`, both driven by `sipp -sn uac` on loopback in the same run.

    .venv/bin/python bench/sip.py [--seconds 4] [--rates 100,200,400,800,1200,1600,2400]

For each UAS the rate steps up until the first step with a failed call; the figure is the last
rate that completed every call, and the ratio to sipp's own UAS. Every loop is bounded in count
and time. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sipbridge.sip.message import parse_message

INVITE = (
    b"INVITE sip:+15105550100@127.0.0.1:5060 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-524287-1---a4b39d4e;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b'From: "+14155550123" <sip:+14155550123@192.0.2.10>;tag=3c5b6e1a\r\n'
    b"To: <sip:+15105550100@127.0.0.1>\r\n"
    b"Call-ID: 8a2c1f56e9b04f0a9d3c2b1a@192.0.2.10\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Contact: <sip:+14155550123@192.0.2.10:5060>\r\n"
    b"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, REFER, NOTIFY\r\n"
    b"Supported: replaces, timer\r\n"
    b"X-Twilio-CallSid: CA0123456789abcdef0123456789abcdef\r\n"
    b"User-Agent: Twilio Gateway\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 205\r\n\r\n"
    b"v=0\r\no=root 1 1 IN IP4 192.0.2.10\r\ns=Twilio Media Gateway\r\nc=IN IP4 192.0.2.10\r\n"
    b"t=0 0\r\nm=audio 12000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\n"
)


def parse_rate(seconds: float) -> dict[str, float]:
    """Parse an INVITE, read what a UAS reads, serialise it. Every message differs in its
    branch, tags and Call-ID, as real traffic does, so no parse cache can help."""
    variants = 20_000
    messages = [
        INVITE.replace(b"a4b39d4e", b"%08x" % i)
        .replace(b"3c5b6e1a", b"%08x" % (i * 7))
        .replace(b"8a2c1f56", b"%08x" % (i * 13))
        for i in range(variants)
    ]
    count = 0
    deadline = time.perf_counter() + seconds
    began = time.perf_counter()
    while time.perf_counter() < deadline and count < variants:
        for data in messages[count : count + 100]:
            m = parse_message(data)
            m.call_id, m.cseq, m.from_, m.to, m.top_via  # noqa: B018 - what a UAS reads
            m.serialize()
        count += 100
    elapsed = time.perf_counter() - began
    return {"messages": count, "per_s": count / elapsed, "us_each": elapsed / count * 1e6}


def free_port() -> int:
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, socket.socket() as tcp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            try:
                tcp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def serve_uas(port: int, trace: bool = True) -> None:
    """The bare answering UAS on our stack (run in its own process); `trace` False turns the
    per-call SIP trace off, to measure what it costs."""
    from tests.sip_app import AnsweringApp, running_app  # noqa: PLC0415

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        app = AnsweringApp()
        async with running_app(app, ("udp",), port=port) as (service, _):
            if not trace:
                service.traces = None
            print("ready", flush=True)
            await stop.wait()

    try:
        import uvloop  # noqa: PLC0415

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


def start_target(kind: str, port: int, trace: bool = True) -> subprocess.Popen[bytes]:
    if kind == "sipbridge":
        proc = subprocess.Popen(
            [sys.executable, __file__, "--serve-uas", str(port)]
            + ([] if trace else ["--no-trace"]),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if b"ready" not in line:
            raise RuntimeError("our UAS did not start")
        return proc
    proc = subprocess.Popen(
        [
            "sipp",
            "-sn",
            "uas",
            "-i",
            "127.0.0.1",
            "-p",
            str(port),
            "-bg",
            "-nostdin",
            "-buff_size",
            "4194304",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    out, _ = proc.communicate(timeout=10)
    pid = int(out.split(b"PID=[")[1].split(b"]")[0])
    time.sleep(0.3)
    return _Pid(pid)  # type: ignore[return-value]


class _Pid:
    """A background sipp (it forks with -bg) stopped like a Popen."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return 0
            time.sleep(0.05)
        os.kill(self.pid, signal.SIGKILL)
        return -9


def drive(port: int, rate: int, seconds: float) -> tuple[bool, int, float]:
    """Run sipp's uac at `rate` for about `seconds`: (every call succeeded, calls, elapsed s).
    sipp cannot always keep the asked rate, so the achieved rate is calls / elapsed."""
    calls = max(1, int(rate * seconds))
    cmd = [
        "timeout", "-k", "5", "-s", "INT", str(int(seconds * 3 + 20)),
        "sipp", "-sn", "uac", f"127.0.0.1:{port}", "-i", "127.0.0.1", "-p", str(free_port()),
        "-m", str(calls), "-r", str(rate), "-d", "0", "-nostdin", "-buff_size", "4194304",
        "-timeout", f"{int(seconds * 3 + 10)}s", "-timeout_error",
        "-mp", str(free_port()),
    ]  # fmt: skip
    began = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, timeout=seconds * 3 + 40, check=False)
    return proc.returncode == 0, calls, time.perf_counter() - began


def max_rate(kind: str, rates: list[int], seconds: float, trace: bool = True) -> dict[str, object]:
    best = 0.0
    steps = []
    for rate in rates:
        port = free_port()
        target = start_target(kind, port, trace)
        try:
            ok, calls, elapsed = drive(port, rate, seconds)
        finally:
            target.send_signal(signal.SIGTERM)
            target.wait(10)
        achieved = calls / elapsed
        steps.append({"rate": rate, "calls": calls, "ok": ok, "achieved": round(achieved)})
        if not ok:
            break
        best = max(best, achieved)
    return {"max_calls_per_s": round(best), "steps": steps}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rates", default="100,200,400,800,1200,1600,2400,3200")
    parser.add_argument("--serve-uas", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--no-trace", action="store_true", help="our UAS without the per-call SIP trace"
    )
    args = parser.parse_args()
    if args.serve_uas:
        serve_uas(args.serve_uas, trace=not args.no_trace)
        return 0
    if not shutil.which("sipp"):
        print("sipp is required (Debian package sip-tester)", file=sys.stderr)
        return 2
    rates = [int(r) for r in args.rates.split(",")]
    parsing = parse_rate(min(args.seconds, 3.0))
    ours = max_rate("sipbridge", rates, args.seconds, trace=not args.no_trace)
    theirs = max_rate("sipp", rates, args.seconds)
    ratio = (
        (ours["max_calls_per_s"] / theirs["max_calls_per_s"]) if theirs["max_calls_per_s"] else 0
    )  # type: ignore[operator]
    print(f"parse+serialise typical INVITE: {parsing['per_s']:,.0f} msg/s "
          f"({parsing['us_each']:.1f} us each)")  # fmt: skip
    print(f"{'UAS':12} {'max calls/s':>12}   steps (asked rate->achieved: outcome)")
    for name, result in (("sipbridge", ours), ("sipp uas", theirs)):
        steps = ", ".join(
            f"{s['rate']}->{s['achieved']}:{'ok' if s['ok'] else 'FAIL'}"
            for s in result["steps"]  # type: ignore[attr-defined]
        )
        print(f"{name:12} {result['max_calls_per_s']:>12}   {steps}")
    print(f"ratio sipbridge / sipp uas: {ratio:.2f}")
    print(json.dumps({
        "bench": "sip",
        "python": platform.python_version(),
        "parse_serialise": parsing,
        "sipbridge_uas": ours,
        "sip_trace": not args.no_trace,
        "sipp_uas": theirs,
        "ratio": ratio,
    }, sort_keys=True))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
