"""SIP benchmark: message parse+serialise rate, and calls/s of a bare answering UAS on our stack
side by side with `sipp -sn uas` and with Kamailio as a stateful proxy (tm, record-routing,
every request relayed to a `sipp -sn uas` behind it), all driven by the same `sipp -sn uac` on
loopback in the same run.

    .venv/bin/python bench/sip.py [--seconds 4] [--rates 400,800,...,12800]
                                  [--targets sipbridge,sipp,kamailio] [--rounds 1] [--bisect 3]
                                  [--sip-udp thread|endpoint|batched] [--sip-udp-send batch|...]

For each target the rate steps up until the first step with a failed call, or until the
achieved rate falls below 85% of the asked one twice (the target, or the generator, gives out).
A step is held when every call completed at 85% of the asked rate or more; after the ladder,
up to `--bisect` (3) more steps halve the interval between the highest step held and the lowest
not held, until it is within 10%, so that a maximum is known to about 10% rather than to the
ladder's doubling (12,800 held and 19,200 not: 16,000, then 14,400 or 17,600, then one more).
The figure is the best achieved rate (calls / elapsed) of a step that completed every call, and
the ratio to sipp's own UAS; the table marks bisection steps with `*`. Each step also gives
the target's CPU per call (all its processes; for Kamailio its own, not the sipp behind it)
and the generator's CPU, so that a saturated generator is visible: the machine has 2 cores, and
sipp's uac alone takes most of one near sipp's limit. `--rounds N` alternates the targets N
times (the machine is shared: compare inside one round). Kamailio: Debian's `kamailio` (5.6).
Every loop is bounded in count and time. `--sip-udp` / `--sip-udp-send` pick our UAS's SIP UDP
socket and how it sends (`SIPBRIDGE_SIP_UDP`, `SIPBRIDGE_SIP_UDP_SEND`; the default: the reader
thread where built); the table says which it ran, and each step what the UAS counted on its
socket (datagrams dropped by a full queue, failed sends, retransmissions it received) when not
zero.

Sustained (`--sustain 40`, 0 to skip): a step of 4 s does not show what a UAS holds for longer
than its transactions linger (RFC 3261 Timers J and L, 32 s on UDP): ours refused every call 503
once 100,000 transactions were held, which a steady 1,600 calls/s reached in 32 s while 4 s
steps held 12,000 (issue 18). So each target is then driven for `--sustain` seconds at the
highest rate it held in the ladder, and at 85% of the rate before while that step is not held
(5 tries at most, down to 52% of it); the ratio to sipp is printed for both, burst and
sustained.
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import children_cpu, cpu_seconds
from sipbridge.sip.message import parse_message

KAMAILIO_CFG = """#!KAMAILIO
debug=0
log_stderror=yes
memdbg=5
memlog=5
children={children}
maxbuffer=4194304
auto_aliases=no
listen=udp:127.0.0.1:{port}
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "maxfwd.so"
loadmodule "siputils.so"
loadmodule "textops.so"
loadmodule "pv.so"
request_route {{
    if (!mf_process_maxfwd_header("10")) {{
        sl_send_reply("483", "Too Many Hops");
        exit;
    }}
    if (is_method("OPTIONS")) {{
        sl_send_reply("200", "OK");
        exit;
    }}
    if (is_method("ACK")) {{
        if (t_check_trans()) {{
            t_relay();
            exit;
        }}
        $du = "sip:127.0.0.1:{uas_port}";
        forward();
        exit;
    }}
    if (!has_totag()) {{
        record_route();
    }}
    $du = "sip:127.0.0.1:{uas_port}";
    if (!t_relay()) {{
        sl_reply_error();
    }}
}}
"""

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


# What the UAS counts on its socket, shown per step when not zero.
UAS_COUNTS = ("udp_queue_full", "udp_error", "udp_oversized", "retransmissions", "trying_early")


def socket_mode(service: object) -> str:
    """Which SIP UDP socket the UAS runs (`SIPBRIDGE_SIP_UDP`), and how it sends."""
    from sipbridge.server.sip.udp import BatchedUdp  # noqa: PLC0415
    from sipbridge.server.sip.udp_thread import ThreadedUdp  # noqa: PLC0415

    udp = next(iter(service._udp.values()))  # type: ignore[attr-defined]
    if isinstance(udp, ThreadedUdp):
        return f"thread(send={udp.send_mode})"
    return "batched" if isinstance(udp, BatchedUdp) else "endpoint"


def serve_uas(port: int, trace: bool = True) -> None:
    """The bare answering UAS on our stack (run in its own process); `trace` False turns the
    per-call SIP trace off, to measure what it costs."""
    from tests.sip_app import AnsweringApp, running_app  # noqa: PLC0415

    from sipbridge.server.collector import tune_collector  # noqa: PLC0415

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        app = AnsweringApp(keep_calls=False)
        async with running_app(app, ("udp",), port=port) as (service, _):
            if not trace:
                service.traces = None
            tune_collector()  # as `sipbridge serve` does once started
            print("ready", socket_mode(service), flush=True)
            await stop.wait()
            stats = service.endpoint.stats
            print(json.dumps({name: stats[name] for name in UAS_COUNTS if stats[name]}), flush=True)

    try:
        import uvloop  # noqa: PLC0415

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


class Target:
    """A UAS (or proxy) under load: its processes, for CPU accounting, and how to stop it."""

    def __init__(self, name: str, pids: list[int], stop: list[subprocess.Popen[bytes] | int]):
        self.name = name
        self.pids = pids
        self._stop = stop
        self.tmp: Path | None = None
        self.mode = ""  # our UAS's SIP UDP socket (`socket_mode`)
        self.counts: dict[str, int] = {}  # what our UAS counted (UAS_COUNTS), once stopped

    def cpu(self) -> float:
        """CPU seconds of every process of the target so far (children found now)."""
        return sum(cpu_seconds(pid) for pid in self.pids + _children(self.pids))

    def stop(self) -> None:
        for what in self._stop:
            if isinstance(what, int):
                _stop_pid(what)
            else:
                what.send_signal(signal.SIGTERM)
                try:
                    out, _ = what.communicate(timeout=10)
                except subprocess.TimeoutExpired:
                    what.kill()
                    what.wait(5)
                    continue
                with contextlib.suppress(ValueError, IndexError):
                    self.counts = json.loads((out or b"").splitlines()[-1])
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)


def _children(pids: list[int]) -> list[int]:
    """The processes whose parent is one of `pids` (Kamailio's workers)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid in pids:
            out.append(int(stat.parent.name))
    return out


def _stop_pid(pid: int) -> None:
    """Stop a background sipp (it forks with -bg) by its pid: SIGTERM, then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _sipp_uas(port: int) -> int:
    """A `sipp -sn uas` in the background on `port`; its pid once it has bound the port."""
    proc = subprocess.run(
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
            # (its RTP echo ports, 6000 and 6002 by default, each time its own: a sipp still
            # exiting, or another process, holding 6000 made the UAS exit at start)
            "-mp",
            str(free_port()),
        ],
        capture_output=True,
        timeout=10,
        check=False,
    )
    if b"PID=[" not in proc.stdout:
        raise RuntimeError(f"sipp uas did not start: {proc.stdout[-300:]!r} {proc.stderr[-300:]!r}")
    pid = int(proc.stdout.split(b"PID=[")[1].split(b"]")[0])
    try:
        _wait_port(port)
    except RuntimeError:
        _stop_pid(pid)
        raise
    return pid


def _wait_port(port: int, timeout: float = 5.0) -> None:
    """Until a UDP socket is bound on 127.0.0.1:`port` (sipp answers no OPTIONS)."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.05) + 1):
        if time.monotonic() > deadline:
            break
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing bound 127.0.0.1:{port}")


def _wait_udp(port: int, timeout: float) -> None:
    """Until something answers an OPTIONS on 127.0.0.1:`port` (bounded)."""
    probe = (
        "OPTIONS sip:probe@127.0.0.1:{p} SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:{l};branch=z9hG4bK{b}\r\n"
        "From: <sip:probe@127.0.0.1>;tag=1\r\nTo: <sip:probe@127.0.0.1>\r\n"
        "Call-ID: probe{b}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(0.2)
        local = sock.getsockname()[1]
        deadline = time.monotonic() + timeout
        for n in range(int(timeout / 0.2) + 1):
            sock.sendto(probe.format(p=port, l=local, b=n).encode(), ("127.0.0.1", port))
            try:
                sock.recvfrom(65535)
                return
            except TimeoutError:
                if time.monotonic() > deadline:
                    break
    raise RuntimeError(f"nothing answers on 127.0.0.1:{port}")


def start_target(kind: str, port: int, trace: bool = True) -> Target:
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
        target = Target(kind, [proc.pid], [proc])
        target.mode = line.decode().split()[-1]
        return target
    if kind == "sipp":
        pid = _sipp_uas(port)
        return Target(kind, [pid], [pid])
    if kind == "kamailio":
        for attempt in range(3):  # the port picked may be taken by another process meanwhile
            uas_port = free_port()
            try:
                uas = _sipp_uas(uas_port)
                break
            except RuntimeError:
                if attempt == 2:
                    raise
        tmp = Path(tempfile.mkdtemp(prefix="bench-sip-kamailio-"))
        cfg = tmp / "kamailio.cfg"
        cfg.write_text(KAMAILIO_CFG.format(port=port, uas_port=uas_port, children=1))
        proc = subprocess.Popen(
            [
                "kamailio",
                "-f",
                str(cfg),
                "-DD",
                "-E",
                "-m",
                "512",
                "-M",
                "16",
                "-Y",
                str(tmp),
                "-P",
                str(tmp / "kamailio.pid"),
                "-w",
                str(tmp),
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(tmp / "kamailio.log", "wb"),  # noqa: SIM115 - closed with the process
        )
        target = Target(kind, [proc.pid], [proc, uas])
        target.tmp = tmp
        try:
            _wait_udp(port, 10)
        except RuntimeError:
            target.stop()
            raise
        return target
    raise ValueError(kind)


def drive(port: int, rate: int, seconds: float) -> tuple[bool, int, float, str]:
    """Run sipp's uac at `rate` for about `seconds`: (every call succeeded, calls, elapsed s).
    sipp cannot always keep the asked rate, so the achieved rate is calls / elapsed."""
    calls = max(1, int(rate * seconds))
    for _ in range(3):  # sipp binds ports of its own (-p, -mp and the next ones): one may be taken
        ok, elapsed, tail = _drive_once(port, rate, seconds, calls)
        if ok or "Address already in use" not in tail:
            break
    return ok, calls, elapsed, tail


def _drive_once(port: int, rate: int, seconds: float, calls: int) -> tuple[bool, float, str]:
    cmd = [
        "timeout", "-k", "5", "-s", "INT", str(int(seconds * 3 + 20)),
        "sipp", "-sn", "uac", f"127.0.0.1:{port}", "-i", "127.0.0.1", "-p", str(free_port()),
        "-m", str(calls), "-r", str(rate), "-d", "0", "-nostdin", "-buff_size", "4194304",
        "-timeout", f"{int(seconds * 3 + 10)}s", "-timeout_error",
        "-mp", str(free_port()),
    ]  # fmt: skip
    began = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, timeout=seconds * 3 + 40, check=False)
    tail = (proc.stdout + proc.stderr).decode(errors="replace").strip().splitlines()[-3:]
    return proc.returncode == 0, time.perf_counter() - began, " / ".join(tail)


def _step(kind: str, rate: int, seconds: float, trace: bool) -> tuple[dict[str, object], str]:
    """One step of the ladder: a fresh target driven at `rate`; (the step, the socket mode)."""
    for attempt in range(3):  # the port picked may be taken by another process meanwhile
        port = free_port()
        try:
            target = start_target(kind, port, trace)
            break
        except RuntimeError:
            if attempt == 2:
                raise
    try:
        cpu0, gen0 = target.cpu(), children_cpu()
        ok, calls, elapsed, tail = drive(port, rate, seconds)
        cpu, gen = target.cpu() - cpu0, children_cpu() - gen0
    finally:
        target.stop()
    achieved = calls / elapsed
    step: dict[str, object] = {
        "rate": rate,
        "calls": calls,
        "ok": ok,
        "achieved": round(achieved),
        "cpu_ms_per_call": round(cpu / calls * 1000, 3),
        "target_cpu_pct": round(cpu / elapsed * 100),
        "generator_cpu_pct": round(gen / elapsed * 100),
        **({"uas": target.counts} if target.counts else {}),
        **({} if ok else {"sipp_tail": tail[-300:]}),
    }  # fmt: skip
    return step, target.mode


def _held(step: dict[str, object]) -> bool:
    """Every call completed, at 85% of the asked rate or more."""
    return bool(step["ok"]) and step["achieved"] >= 0.85 * step["rate"]  # type: ignore[operator]


def max_rate(
    kind: str, rates: list[int], seconds: float, trace: bool = True, bisect: int = 3
) -> dict[str, object]:
    """The ladder of `rates`, then up to `bisect` steps between the last step held and the
    first not held (`_held`), halving the interval each time until it is within 10%."""
    mode = ""
    steps: list[dict[str, object]] = []
    short = 0
    held = 0  # the highest rate held, and the lowest not held (0: none yet)
    failed = 0
    for rate in rates:
        step, mode = _step(kind, rate, seconds, trace)
        steps.append(step)
        if _held(step):
            held = rate
        elif not failed:
            failed = rate
        if not step["ok"]:
            break
        short = short + 1 if not _held(step) else 0
        if short >= 2:
            break
    for _ in range(bisect):
        if not held or not failed or failed <= held * 1.1:
            break
        rate = (held + failed) // 2
        step, mode = _step(kind, rate, seconds, trace)
        step["bisect"] = True
        steps.append(step)
        if _held(step):
            held = rate
        else:
            failed = rate
    done = [s for s in steps if s["ok"]]
    best = max((s["achieved"] for s in done), default=0)  # type: ignore[type-var]
    return {
        **({"socket": mode} if mode else {}),
        "max_calls_per_s": best,
        "held_calls_per_s": held,
        "not_held_calls_per_s": failed,
        "cpu_ms_per_call_best_step": next(
            (s["cpu_ms_per_call"] for s in done if s["achieved"] == best), None
        ),
        "steps": steps,
    }


def sustain(
    kind: str, rate: int, seconds: float, trace: bool = True, tries: int = 5
) -> dict[str, object]:
    """Steps of `seconds` from `rate` down by 15% each until one is held (`_held`): the rate
    the target keeps past its transactions' lingers (module docstring)."""
    steps: list[dict[str, object]] = []
    for _ in range(tries):
        if rate <= 0:
            break
        step, _mode = _step(kind, rate, seconds, trace)
        steps.append(step)
        if _held(step):
            return {"sustained_calls_per_s": step["achieved"], "steps": steps}
        rate = int(rate * 0.85)
    return {"sustained_calls_per_s": 0, "steps": steps}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument(
        "--rates", default="400,800,1600,3200,6400,12800,19200,25600,32000,40000,51200"
    )
    parser.add_argument("--targets", default="sipbridge,sipp,kamailio")
    parser.add_argument("--rounds", type=int, default=1, help="alternate the targets N times")
    parser.add_argument(
        "--bisect", type=int, default=3, help="steps between the last held and the first not"
    )
    parser.add_argument(
        "--sustain",
        type=float,
        default=40.0,
        help="seconds at the highest rate held, past the 32 s lingers (0: none)",
    )
    parser.add_argument("--serve-uas", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--no-trace", action="store_true", help="our UAS without the per-call SIP trace"
    )
    parser.add_argument(
        "--sip-udp",
        choices=("thread", "endpoint", "batched"),
        help="our UAS's SIP UDP socket (SIPBRIDGE_SIP_UDP; default: the reader thread where built)",
    )
    parser.add_argument(
        "--sip-udp-send",
        choices=("batch", "thread", "each"),
        help="how the reader thread's socket sends (SIPBRIDGE_SIP_UDP_SEND)",
    )
    args = parser.parse_args()
    if args.sip_udp:
        os.environ["SIPBRIDGE_SIP_UDP"] = args.sip_udp  # (our UAS inherits it)
    if args.sip_udp_send:
        os.environ["SIPBRIDGE_SIP_UDP_SEND"] = args.sip_udp_send
    if args.serve_uas:
        serve_uas(args.serve_uas, trace=not args.no_trace)
        return 0
    targets = args.targets.split(",")
    for tool, package in (("sipp", "sip-tester"), ("kamailio", "kamailio")):
        if (tool == "sipp" or tool in targets) and not shutil.which(tool):
            print(f"{tool} is required (Debian package {package})", file=sys.stderr)
            return 2
    if (
        not 0 < args.seconds <= 30
        or not 1 <= args.rounds <= 5
        or not 0 <= args.bisect <= 5
        or not 0 <= args.sustain <= 120
    ):
        print(
            "--seconds in (0, 30], --rounds in [1, 5], --bisect in [0, 5], --sustain in [0, 120]",
            file=sys.stderr,
        )
        return 2
    rates = [int(r) for r in args.rates.split(",")][:20]
    parsing = parse_rate(min(args.seconds, 3.0))
    rounds: list[dict[str, dict[str, object]]] = []
    for _ in range(args.rounds):
        results = {}
        for kind in targets:
            result = results[kind] = max_rate(
                kind, rates, args.seconds, trace=not args.no_trace, bisect=args.bisect
            )
            held = result["held_calls_per_s"]
            if args.sustain and isinstance(held, int) and held:
                result["sustained"] = sustain(kind, held, args.sustain, not args.no_trace)
            print(_line(kind, result), file=sys.stderr, flush=True)
        rounds.append(results)
    print(f"parse+serialise typical INVITE: {parsing['per_s']:,.0f} msg/s "
          f"({parsing['us_each']:.1f} us each)")  # fmt: skip
    print(f"{'target':10} {'calls/s':>8} {'ms CPU/call':>11}   steps (asked->achieved "
          "calls/s: ok|FAIL, target/generator CPU % of a core)")  # fmt: skip
    ratios = []
    sustained_ratios: list[dict[str, float]] = []
    for n, results in enumerate(rounds):
        for kind, result in results.items():
            print(f"{kind:10} {_line(kind, result)[len(kind) + 1 :]}")
        sipp_best = results.get("sipp", {}).get("max_calls_per_s") or 0
        ratio = {
            kind: round(r["max_calls_per_s"] / sipp_best, 2)  # type: ignore[operator]
            for kind, r in results.items()
            if sipp_best
        }
        ratios.append(ratio)
        print(f"round {n + 1}: calls/s as a ratio of sipp -sn uas: "
              + ", ".join(f"{k} {v:.2f}" for k, v in ratio.items()))  # fmt: skip
        sipp_kept = _sustained(results.get("sipp", {}))
        if sipp_kept:
            kept = {kind: round(_sustained(r) / sipp_kept, 2) for kind, r in results.items()}
            sustained_ratios.append(kept)
            print(f"round {n + 1}: sustained {args.sustain:g} s, as a ratio of sipp -sn uas's: "
                  + ", ".join(f"{k} {v:.2f} ({_sustained(results[k])}/s)"
                              for k, v in kept.items()))  # fmt: skip
    print(json.dumps({
        "bench": "sip",
        "python": platform.python_version(),
        "parse_serialise": parsing,
        "sip_trace": not args.no_trace,
        "rounds": rounds,
        "ratios_to_sipp_uas": ratios,
        "sustain_seconds": args.sustain,
        "sustained_ratios_to_sipp_uas": sustained_ratios,
    }, sort_keys=True))  # fmt: skip
    return 0


def _sustained(result: dict[str, object]) -> int:
    """The sustained calls/s of a target's result (0: none measured or none held)."""
    kept = result.get("sustained")
    return int(kept["sustained_calls_per_s"]) if isinstance(kept, dict) else 0


def _line(kind: str, result: dict[str, object]) -> str:
    steps = ", ".join(
        f"{'*' if s.get('bisect') else ''}{s['rate']}->{s['achieved']}:"  # type: ignore[attr-defined]
        f"{'ok' if s['ok'] else 'FAIL'} "
        f"{s['target_cpu_pct']}/{s['generator_cpu_pct']}%"
        for s in result["steps"]  # type: ignore[attr-defined]
    )
    per_call = result["cpu_ms_per_call_best_step"]
    shown = "-" if per_call is None else per_call
    socket_kind = f"  [{result['socket']}]" if "socket" in result else ""
    counts = "; ".join(
        f"{s['rate']}: " + ", ".join(f"{k} {v}" for k, v in s["uas"].items())  # type: ignore[attr-defined]
        for s in result["steps"]  # type: ignore[attr-defined]
        if s.get("uas")  # type: ignore[attr-defined]
    )
    counted = f"  (UAS counted {counts})" if counts else ""
    kept = result.get("sustained")
    held = ""
    if isinstance(kept, dict):
        held = "; sustained: " + ", ".join(
            f"{s['rate']}->{s['achieved']}:{'ok' if _held(s) else 'FAIL'} "
            f"{s['target_cpu_pct']}/{s['generator_cpu_pct']}%"
            for s in kept["steps"]
        )
    return (
        f"{kind} {result['max_calls_per_s']:>8} {shown:>11}   {steps}{held}{socket_kind}{counted}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
