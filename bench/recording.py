"""Recording benchmark: what recording every call costs the server, and what it does to the
calls it records - relayed calls with recording off and on, in the same run.

    .venv/bin/python bench/recording.py [--steps 50,200] [--seconds 10] [--format ogg]
                                        [--rounds 1] [--keep]

The calls are bench/media.py's (its load generator, unchanged): N inbound calls with real
RTP both ways (PCMU), bridged in pairs through rooms of a real `sipbridge serve`, each leg's
packets forwarded to the other as they are; latency is measured per packet, generator ->
server -> generator, against the generator's kernel timestamps, and "added" is that minus a
baseline measured once without the server.

For each N, two steps back to back (the machine is shared: compare inside one run): "off",
with a dispatch rule that records nothing, then "on", with the same rule carrying
`room_config.egress.room` - an audio-only room composite to a file (`--format`: ogg = Opus,
wav) - so every room, and so every call, is recorded from its start with no API call
(N/2 recordings, each the mix of its two calls). Per step: the server's CPU over the window
(utime+stime of all its threads, % of one core) and of its recordings' encoder process
(its CPU over the step divided by the recordings' average length), the per-call figures,
loss, latency
percentiles, 20 ms clock ticks skipped; for "on", the recordings made (egress counters from
/metrics: started, complete, failed) and their total size. "CPU per recorded call" =
(server + encoder on - server off) / N, in % of one core.

The recorder decodes what it mixes (each call's PCMU), mixes at their 8 kHz on the room's 20
ms tick and hands the frame to the encoder process, which converts it to 48 kHz, encodes and
writes; the calls themselves stay forwarded (`rtp_forwarded` in the JSON counts it).

Every loop is bounded in count and time; only 127.0.0.1; every process started is stopped.
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from livekit import api
from livekit.protocol import egress, room, sip
from tests.helpers import API_KEY, API_SECRET, ServerProcess, free_sip_port

from bench.common import (
    cpu_seconds,
    keep_or_remove,
    print_result,
    raise_open_files,
    run_info,
    scrape,
    stop_if_running,
    wait_quiet,
)
from bench.media import (
    MAX_CALLS,
    RULE_PREFIX,
    choose_rtp_range,
    media_deltas,
    participants_left,
    run_generator,
    step_figures,
    wait_drained,
)

MAX_STEPS = 6
FORMATS = {"ogg": egress.EncodedFileType.OGG, "wav": egress.EncodedFileType.DEFAULT_FILETYPE}


async def set_rule(url: str, recording: str | None, previous: str) -> str:
    """The bench's one dispatch rule, recording every room to `recording` files (or not)."""
    async with api.LiveKitAPI(url=url, api_key=API_KEY, api_secret=API_SECRET) as lk:
        if previous:
            await lk.sip.delete_dispatch_rule(
                sip.DeleteSIPDispatchRuleRequest(sip_dispatch_rule_id=previous)
            )
        info = sip.SIPDispatchRuleInfo(
            rule=sip.SIPDispatchRule(
                dispatch_rule_callee=sip.SIPDispatchRuleCallee(room_prefix=RULE_PREFIX)
            ),
            name="recording bench pairs",
        )
        info.room_config.departure_timeout = 1  # a room ends (its recording with it) at once
        if recording is not None:
            extension = ".wav" if recording == "wav" else ".ogg"
            composite = egress.RoomCompositeEgressRequest(
                audio_only=True,
                file_outputs=[
                    egress.EncodedFileOutput(
                        file_type=FORMATS[recording], filepath=f"{{room_name}}-{{time}}{extension}"
                    )
                ],
            )
            info.room_config.egress.room.CopyFrom(composite)
        rule = await lk.sip.create_dispatch_rule(
            sip.CreateSIPDispatchRuleRequest(dispatch_rule=info)
        )
        return str(rule.sip_dispatch_rule_id)


async def rooms_left(url: str) -> int:
    async with api.LiveKitAPI(url=url, api_key=API_KEY, api_secret=API_SECRET) as lk:
        rooms = await lk.room.list_rooms(room.ListRoomsRequest())
        return sum(1 for r in rooms.rooms if r.name.startswith(RULE_PREFIX))


def wait_recordings(url: str, timeout: float) -> dict[str, float]:
    """Wait until no bench room is left and no recording is still being written."""
    deadline = time.monotonic() + timeout
    counters: dict[str, float] = {}
    for _ in range(int(timeout * 5) + 1):
        m = scrape(url)
        counters = {
            k.split('"')[1]: v for k, v in m.items() if k.startswith("sipbridge_egress_total{")
        }
        ended = sum(counters.get(k, 0) for k in ("complete", "failed", "aborted"))
        if (
            counters.get("started", 0) <= ended and not asyncio.run(rooms_left(url))
        ) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return counters


def children_cpu(pid: int) -> float:
    """CPU seconds of the server's child processes (the recordings' encoder)."""
    total = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError):
            for child in (task / "children").read_text().split():
                with contextlib.suppress(OSError, ValueError):
                    total += cpu_seconds(int(child))
    return total


async def recorded_seconds(url: str, seen: set[str]) -> float:
    """The total length of the recordings not in `seen` (which they are added to)."""
    async with api.LiveKitAPI(url=url, api_key=API_KEY, api_secret=API_SECRET) as lk:
        items = (await lk.egress.list_egress(egress.ListEgressRequest())).items
    total = 0.0
    for info in items:
        if info.egress_id not in seen:
            seen.add(info.egress_id)
            total += sum(f.duration for f in info.file_results) / 1e9
    return total


def directory_size(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def _row(s: dict[str, object]) -> str:
    lat, added = s["latency_ms"], s["added_latency_ms"]
    assert isinstance(lat, dict) and isinstance(added, dict)
    metrics = s["server_metrics"]
    assert isinstance(metrics, dict)
    rec = s.get("recordings") or {}
    assert isinstance(rec, dict)
    return (
        f"{s['n']:>4} {s['recording']:>4} {s['server_cpu_pct']:>8} "
        f"{s.get('encoder_cpu_pct', '-'):>6} "
        f"{s['server_cpu_pct_per_call']:>7} {s['other_cpu_pct']:>6} {s['lost']:>5} "
        f"{'/'.join(str(lat[p]) for p in ('p50', 'p95', 'p99')):>18} "
        f"{'/'.join(str(added[p]) for p in ('p50', 'p95', 'p99')):>18} "
        f"{int(metrics.get('clock_skipped', 0)):>5} {int(metrics.get('rtp_forwarded', 0)):>8} "
        f"{rec.get('complete', '-'):>5} {rec.get('failed', '-'):>4} {rec.get('mb', '-'):>6}"
    )


HEADER = (
    f"{'N':>4} {'rec':>4} {'srv CPU%':>8} {'enc%':>6} {'%/call':>7} {'other%':>6} {'lost':>5} "
    f"{'lat p50/p95/p99 ms':>18} {'added p50/p95/p99':>18} {'skip':>5} {'forwardd':>8} "
    f"{'files':>5} {'fail':>4} {'MB':>6}"
)


def orchestrate(args: argparse.Namespace) -> int:
    steps_n = [int(x) for x in args.steps.split(",") if x.strip()][:MAX_STEPS]
    if any(n <= 0 or n % 2 or n > MAX_CALLS for n in steps_n) or not 0 < args.seconds <= 60:
        print(f"--steps: even call counts up to {MAX_CALLS}; --seconds in (0, 60]", file=sys.stderr)
        return 2
    if not 1 <= args.rounds <= 3:
        print("--rounds: 1 to 3", file=sys.stderr)
        return 2
    raise_open_files()  # children inherit it
    tmp = Path(tempfile.mkdtemp(prefix="bench-recording-"))
    recordings = tmp / "rec"
    sip_port = free_sip_port()
    rtp_range = choose_rtp_range("")
    server = ServerProcess(
        tmp,
        *("--sip", f"127.0.0.1:{sip_port}", "--rtp-ports", rtp_range),
        *("--max-calls", "100000", "--sip-rate", "1000000", "--room-join-rate", "0"),
        *("--log-level", "warning", "--recordings-dir", str(recordings)),
    )
    steps: list[dict[str, object]] = []
    baseline: dict[str, object] = {}
    rule = ""
    step = 0
    seen: set[str] = set()
    try:
        server.start()
        assert server.proc is not None
        pid = server.proc.pid
        base_n = max(2, min(max(steps_n), 200))
        baseline = run_generator(calls=base_n, seconds=3.0, args=args, step=0, direct=True)
        print(HEADER, file=sys.stderr, flush=True)
        for _ in range(args.rounds):
            for n in steps_n:
                for mode in ("off", args.format):
                    rule = asyncio.run(set_rule(server.url, None if mode == "off" else mode, rule))
                    quiet = wait_quiet(args.quiet_wait, [pid]) if args.quiet_wait > 0 else None
                    files_before = directory_size(recordings) if recordings.exists() else (0, 0)
                    before = scrape(server.url)
                    encoder_before = children_cpu(pid)
                    step += 1
                    gen = run_generator(
                        calls=n,
                        seconds=args.seconds,
                        args=args,
                        step=step,
                        server_sip=f"127.0.0.1:{sip_port}",
                        server_pid=pid,
                    )
                    left = wait_drained(server.url, 15)
                    counters = wait_recordings(server.url, 30)
                    after = scrape(server.url)
                    deltas = media_deltas(before, after)
                    figures = step_figures(n, gen, baseline, deltas)
                    figures.update(recording=mode, left_on_server=left, other_cpu_pct_before=quiet)
                    figures["participants_left"] = asyncio.run(participants_left(server.url))
                    if mode != "off":
                        encoder_s = children_cpu(pid) - encoder_before
                        length = asyncio.run(recorded_seconds(server.url, seen))
                        # the encoder works while the recordings run: its CPU over their
                        # average length, in % of one core
                        recordings_made = max(1, n // 2)
                        encoder_pct = encoder_s / max(length / recordings_made, 1e-3) * 100
                        figures["encoder_cpu_pct"] = round(encoder_pct, 1)
                        total = float(figures["server_cpu_pct"]) + encoder_pct  # type: ignore[arg-type]
                        figures["total_cpu_pct"] = round(total, 1)
                        prefix = 'sipbridge_egress_total{counter="'
                        made = {
                            k: after.get(f'{prefix}{k}"}}', 0) - before.get(f'{prefix}{k}"}}', 0)
                            for k in ("started", "complete", "failed", "aborted")
                        }
                        count, size = directory_size(recordings)
                        made["files"] = count - files_before[0]
                        made["mb"] = round((size - files_before[1]) / 1e6, 1)
                        figures["recordings"] = made
                        figures["egress_counters"] = counters
                    steps.append(figures)
                    print(_row(figures), file=sys.stderr, flush=True)
    finally:
        stop_if_running(server)
        keep_or_remove(tmp, args.keep)
    print(HEADER)
    for s in steps:
        print(_row(s))
    compared = []
    for n in steps_n:
        off = [s for s in steps if s["n"] == n and s["recording"] == "off"]
        on = [s for s in steps if s["n"] == n and s["recording"] != "off"]
        if not off or not on:
            continue

        def mean(rows: list[dict[str, object]], key: str) -> float:
            return sum(float(r[key]) for r in rows) / len(rows)  # type: ignore[arg-type]

        def added(rows: list[dict[str, object]], p: str) -> float | None:
            values = [r["added_latency_ms"][p] for r in rows]  # type: ignore[index]
            return None if None in values else round(sum(values) / len(values), 3)

        cpu_off, cpu_on = mean(off, "server_cpu_pct"), mean(on, "total_cpu_pct")
        loop_on, encoder_on = mean(on, "server_cpu_pct"), mean(on, "encoder_cpu_pct")
        compared.append(
            {
                "n": n,
                "recordings": n // 2,
                "server_cpu_pct_off": round(cpu_off, 1),
                "server_cpu_pct_on": round(cpu_on, 1),
                "server_process_cpu_pct_on": round(loop_on, 1),
                "encoder_cpu_pct_on": round(encoder_on, 1),
                "cpu_pct_per_recorded_call": round((cpu_on - cpu_off) / n, 3),
                "added_latency_ms_off": {p: added(off, p) for p in ("p50", "p95", "p99")},
                "added_latency_ms_on": {p: added(on, p) for p in ("p50", "p95", "p99")},
                "lost_off": sum(int(r["lost"]) for r in off),  # type: ignore[call-overload]
                "lost_on": sum(int(r["lost"]) for r in on),  # type: ignore[call-overload]
            }
        )
    for c in compared:
        print(
            f"{c['n']} calls, {c['recordings']} recordings ({args.format}): server CPU "
            f"{c['server_cpu_pct_off']}% off -> {c['server_cpu_pct_on']}% on "
            f"({c['server_process_cpu_pct_on']}% its event loop's process, "
            f"{c['encoder_cpu_pct_on']}% its encoder), "
            f"{c['cpu_pct_per_recorded_call']}% of a core per recorded call; added latency "
            f"p50/p95/p99 {'/'.join(str(v) for v in c['added_latency_ms_off'].values())} ms off, "  # type: ignore[attr-defined]
            f"{'/'.join(str(v) for v in c['added_latency_ms_on'].values())} ms on; "  # type: ignore[attr-defined]
            f"lost {c['lost_off']} off, {c['lost_on']} on"
        )
    print_result(
        {
            **run_info("recording"),
            "format": args.format,
            "seconds_per_step": args.seconds,
            "baseline": baseline,
            "compared": compared,
            "steps": steps,
        }
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--steps", default="50,200")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window per step")
    parser.add_argument("--format", choices=sorted(FORMATS), default="ogg")
    parser.add_argument("--rounds", type=int, default=1, help="off/on pairs per N (1-3)")
    parser.add_argument("--warmup", type=float, default=1.0, help="after the last answer")
    parser.add_argument("--cps", type=float, default=200.0, help="INVITEs (and BYEs) per second")
    parser.add_argument("--slots", type=int, default=20, help="send phases per 20 ms")
    parser.add_argument(
        "--quiet-wait", type=float, default=5.0, help="max s to wait for a quiet machine per step"
    )
    parser.add_argument("--keep", action="store_true", help="keep the server log and files")
    return orchestrate(parser.parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
