"""INVITE flood benchmark (issue 17 s3): what one source's flood of rising rate does to the
calls that are not part of it, against a real `sipbridge serve` with its default limits.

    .venv/bin/python bench/flood.py [--rates 500,1000,2000,5000] [--seconds 4] [--hold-ms 1000]
                                    [--server-args "--sip-rate 1000"]

Per rate step, on a fresh server (tests/flood.py `measure_flood`, the same measurement as
tests/interop/test_flood.py): a trunk and a direct rule into one room through the official
`livekit-api` client; a call in that room between two phones on 127.0.0.2 (hand-driven SIP, a
400 Hz tone as PCMU every 20 ms each way); OPTIONS one after another from 127.0.0.3; then sipp
from 127.0.0.1 sends RATE*SECONDS INVITEs at RATE a second (tests/interop/sipp/uac_flood.xml:
each call its own caller number, not retransmitted; what is answered is held --hold-ms and
hung up). Figures:
- worst audio gap: the longest time either phone received no RTP while the flood ran (receive
  timestamps on the phones' own threads); `late` is the worst lateness of the phones' own
  sending, the noise floor of that figure;
- OPTIONS p50/p99/max: round trips of the pings sent while the flood ran, a lost one as 1 s;
- server CPU: its utime+stime over the flood divided by the flood's wall time (cores);
- RSS before (call up, before the flood) and after (once every flood call has ended, or 30 s
  after the flood if some have not: `gone` says when the last one had, `-` not by then);
- what became of the flood: refused with 503 (`refused_flood`), dropped unread
  (`dropped_flood`), sipp's completed calls (answered and hung up, or refused and ACKed) and
  its run time: sending, then 2 s (-recv_timeout) for the last answers; sipp itself tops out
  near 3,000-3,500 calls/s on these 2 cores, so 20,000 at 5,000/s take it about 6 s.
--server-args adds flags to `serve` (e.g. "--sip-rate 1000", the default before issue 17's
measurements, for comparison).

Every wait is bounded; only 127.0.0.0/8; every process started is stopped. Prints a table and
one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.flood import FloodResult, measure_flood
from tests.harness import sip_server_process

from bench.common import keep_or_remove, print_result, run_info

HEADER = (
    f"{'rate/s':>7} {'sipp s':>7} {'gap ms':>7} {'late':>5} {'OPT p50':>8} {'p99':>7} "
    f"{'max':>7} {'lost':>5} {'CPU':>5} {'RSS MiB':>11} {'refused':>8} {'dropped':>8} "
    f"{'sipp ok':>8} {'gone s':>6}"
)


def row(got: FloodResult) -> str:
    return (
        f"{got.rate:>7} {got.seconds:>7.1f} {got.worst_gap * 1000:>7.0f} "
        f"{got.sent_late * 1000:>5.0f} {got.options_p50 * 1000:>8.1f} "
        f"{got.options_p99 * 1000:>7.1f} {max(got.options, default=0) * 1000:>7.1f} "
        f"{got.options_lost:>5} {got.cpu:>5.2f} "
        f"{f'{got.rss_before / 2**20:.0f} -> {got.rss_after / 2**20:.0f}':>11} "
        f"{got.counted('refused_flood'):>8.0f} {got.counted('dropped_flood'):>8.0f} "
        f"{completed(got):>8.0f} {f'{got.drained:.1f}' if got.drained < 1e9 else '-':>6}"
    )


def completed(got: FloodResult) -> int:
    """sipp's successful calls: answered and hung up, or refused and ACKed (its last screen)."""
    found = re.findall(r"Successful call\s*\|\s*\d+\s*\|\s*(\d+)", got.sipp_out)
    return int(found[-1]) if found else -1


def figures(got: FloodResult) -> dict[str, object]:
    return {
        "rate": got.rate,
        "invites": got.invites,
        "sipp_seconds": round(got.seconds, 2),  # sending, and 2 s for the last answers
        "worst_gap_ms": round(got.worst_gap * 1000, 1),
        "phones_sent_late_ms": round(got.sent_late * 1000, 1),
        "options_p50_ms": round(got.options_p50 * 1000, 2),
        "options_p99_ms": round(got.options_p99 * 1000, 2),
        "options_max_ms": round(max(got.options, default=0) * 1000, 2),
        "options": len(got.options),
        "options_lost": got.options_lost,
        "server_cpu_cores": round(got.cpu, 3),
        "rss_before_mib": round(got.rss_before / 2**20, 1),
        "rss_after_mib": round(got.rss_after / 2**20, 1),
        "flood_calls_gone_after_s": round(got.drained, 2) if got.drained < 1e9 else None,
        "refused_flood": got.counted("refused_flood"),
        "dropped_flood": got.counted("dropped_flood"),
        "sipp_completed": completed(got),
        "sipp_exit": got.sipp_code,
    }


async def step(rate: int, args: argparse.Namespace, work: Path) -> FloodResult:
    server = sip_server_process(work, *shlex.split(args.server_args))
    await asyncio.to_thread(server.start)
    try:
        return await measure_flood(
            server, invites=int(rate * args.seconds), rate=rate, hold_ms=args.hold_ms
        )
    finally:
        await asyncio.to_thread(server.stop, 60)


async def bench(args: argparse.Namespace, tmp: Path) -> list[FloodResult]:
    results = []
    for n, rate in enumerate(int(r) for r in args.rates.split(",")):
        work = tmp / f"step{n}"
        work.mkdir()
        got = await step(rate, args, work)
        print(row(got), file=sys.stderr, flush=True)
        results.append(got)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="500,1000,2000,5000", help="INVITEs a second")
    parser.add_argument("--seconds", type=float, default=4.0, help="flood length per step")
    parser.add_argument("--hold-ms", type=int, default=1000, help="answered flood calls' length")
    parser.add_argument("--server-args", default="", help="extra flags for `serve`")
    parser.add_argument("--keep", action="store_true", help="keep the servers' logs")
    args = parser.parse_args()
    if not (shutil.which("sipp") and shutil.which("timeout")):
        print("sipp is required (Debian package sip-tester)", file=sys.stderr)
        return 2
    if not 0 < args.seconds <= 30:
        print("--seconds in (0, 30]", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="bench-flood-"))
    try:
        print(HEADER, file=sys.stderr, flush=True)
        results = asyncio.run(bench(args, tmp))
    finally:
        keep_or_remove(tmp, args.keep)
    print(HEADER)
    for got in results:
        print(row(got))
    print_result(
        {
            **run_info("flood"),
            "seconds_per_step": args.seconds,
            "hold_ms": args.hold_ms,
            "server_args": args.server_args,
            "steps": [figures(got) for got in results],
        }
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
