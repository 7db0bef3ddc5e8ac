"""Call log benchmark: a SQLite call log of a million calls, pages listed through `CallLog.page`
(what the ListCalls API and `sipbridge call list` run), filtered every way, and the process's
memory while it pages.

    .venv/bin/python bench/call_log.py [--calls 1000000] [--db PATH] [--repeat 50]

The calls (written through `SQLiteStore.put_many`, 10,000 per transaction, as the server's call
log writes its batches): 30 days of calls, one every 2.6 s; 2,000 rooms, 20 trunks, 95%
disconnected, 4% failed, 1% active; 100,000 callers calling 50 numbers. A `--db` that already
holds the calls is reused (the write takes a few minutes).

Per query, `--repeat` times: one page of 100 calls, decoded (`SIPCallInfo`), in ms (p50, p99,
max); the page after 20 pages for a deep page token. Memory: the process's VmRSS after the first
query and after every query of every kind `--repeat` times over (flat: the log is never loaded).
Retention: the oldest day removed with `prune_calls` while a 10 ms ticker runs on the event loop
(its worst lateness: the loop is never blocked by the removal).

Figures on the 2-core development machine are in README.md (Call log).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

from livekit.protocol import sip

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import pct, print_result
from sipbridge.server.state.call_log import CallLog
from sipbridge.store import Record, SQLiteStore
from sipbridge.store.call_query import CallQuery

DAY_MS = 86_400_000
END_MS = 1_765_000_000_000  # the newest call (Dec 2025)
BATCH = 10_000


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def make_call(n: int, total: int, rng: random.Random) -> Record:
    span = 30 * DAY_MS
    created_ms = END_MS - span + n * span // total
    roll = rng.random()
    status = (
        sip.SIPCallStatus.SCS_ACTIVE
        if roll < 0.01
        else sip.SIPCallStatus.SCS_ERROR
        if roll < 0.05
        else sip.SIPCallStatus.SCS_DISCONNECTED
    )
    info = sip.SIPCallInfo(
        call_id=f"SCL_{n:010}",
        trunk_id=f"ST_trunk{n % 20:02}",
        room_name=f"room-{rng.randrange(2000)}",
        participant_identity=f"sip_{n}",
        call_status=status,
        created_at=created_ms // 1000,
        created_at_ns=created_ms * 1_000_000,
        started_at_ns=created_ms * 1_000_000 + 200_000_000,
        ended_at_ns=created_ms * 1_000_000 + 60_000_000_000,
        call_direction=sip.SIPCallDirection.SCD_INBOUND,
    )
    info.from_uri.user = f"+1555{rng.randrange(100_000):07}"
    info.from_uri.host = "carrier.example.com"
    info.to_uri.user = f"+1510555{n % 50:04}"
    info.to_uri.host = "sip.example.com"
    info.sip_call_id = f"{n:x}@carrier.example.com"
    return Record(kind="call", id=info.call_id, data=info.SerializeToString())


async def fill(store: SQLiteStore, total: int) -> float:
    rng = random.Random(1)
    start = time.perf_counter()
    for base in range(0, total, BATCH):
        await store.put_many(
            [make_call(n, total, rng) for n in range(base, min(total, base + BATCH))]
        )
        if base % 100_000 == 0:
            print(f"  written {base:,}", file=sys.stderr, flush=True)
    return time.perf_counter() - start


async def count(store: SQLiteStore) -> int:
    return int(
        await store._run(lambda: store._conn().execute("SELECT count(*) FROM calls").fetchone()[0])
    )


async def time_query(log: CallLog, query: CallQuery, repeat: int) -> tuple[list[float], int]:
    times: list[float] = []
    found = 0
    for _ in range(repeat):
        start = time.perf_counter()
        calls, _ = await log.page(query)
        times.append((time.perf_counter() - start) * 1000)
        found = len(calls)
    return sorted(times), found


async def deep_token(log: CallLog, pages: int) -> str:
    token = ""
    for _ in range(pages):
        _, token = await log.page(CallQuery(page_token=token))
    return token


async def prune_oldest_day(store: SQLiteStore) -> tuple[int, float, float]:
    """Remove the oldest day while a 10 ms ticker runs: (calls removed, seconds, worst lateness
    of the ticker in ms)."""
    worst = 0.0
    stop = False

    async def ticker() -> None:
        nonlocal worst
        loop = asyncio.get_running_loop()
        while not stop:
            due = loop.time() + 0.01
            await asyncio.sleep(0.01)
            worst = max(worst, (loop.time() - due) * 1000)

    task = asyncio.create_task(ticker())
    start = time.perf_counter()
    removed = await store.prune_calls(END_MS - 29 * DAY_MS)
    seconds = time.perf_counter() - start
    stop = True
    await task
    return removed, seconds, worst


async def run(args: argparse.Namespace) -> dict[str, object]:
    path = Path(args.db) if args.db else Path(tempfile.mkdtemp()) / "calls.db"
    store = SQLiteStore(path)
    await store.open()
    fill_s = None
    have = await count(store)
    if have < args.calls:
        print(f"writing {args.calls - have:,} calls to {path}", file=sys.stderr, flush=True)
        fill_s = await fill(store, args.calls)
        await store.optimize()
    total = await count(store)
    log = CallLog(store, time.time, retention_days=0)
    number = "+15105550007"
    caller_rng = random.Random(1)
    caller = make_call(total // 2, total, caller_rng)
    one_caller = sip.SIPCallInfo.FromString(caller.data).from_uri.user
    last_day = END_MS - DAY_MS
    queries = {
        "newest": CallQuery(),
        "room": CallQuery(room="room-77"),
        "trunk": CallQuery(trunk="ST_trunk07"),
        "status active": CallQuery(status="active"),
        "status error, trunk": CallQuery(status="error", trunk="ST_trunk03"),
        "number (called)": CallQuery(number=number),
        "number (one caller)": CallQuery(number=one_caller),
        "since 1 day": CallQuery(since_ms=last_day),
        "window 1 h, 10 days ago": CallQuery(
            since_ms=END_MS - 10 * DAY_MS, until_ms=END_MS - 10 * DAY_MS + 3_600_000
        ),
        "room + since 7 days": CallQuery(room="room-77", since_ms=END_MS - 7 * DAY_MS),
        "number + status": CallQuery(number=number, status="error"),
        "page 21 (token)": CallQuery(page_token=await deep_token(log, 20)),
        "no match": CallQuery(room="nowhere"),
    }
    await log.page(CallQuery())
    rss_first = rss_kib()
    results: dict[str, dict[str, object]] = {}
    for name, query in queries.items():
        times, found = await time_query(log, query, args.repeat)
        results[name] = {
            "p50_ms": round(pct(times, 50) or 0, 2),
            "p99_ms": round(pct(times, 99) or 0, 2),
            "max_ms": round(times[-1], 2),
            "calls": found,
        }
    rss_after = rss_kib()
    db_mib = sum(p.stat().st_size for p in path.parent.glob(path.name + "*")) / 2**20
    pruned = None
    if args.prune:
        removed, seconds, worst = await prune_oldest_day(store)
        pruned = {
            "calls": removed,
            "seconds": round(seconds, 2),
            "loop_late_max_ms": round(worst, 1),
        }
    await store.close()
    return {
        "bench": "call_log",
        "calls": total,
        "db_mib": round(db_mib, 1),
        "fill_s": None if fill_s is None else round(fill_s, 1),
        "repeat": args.repeat,
        "queries": results,
        "worst_p99_ms": max(float(r["p99_ms"]) for r in results.values()),  # type: ignore[arg-type]
        "rss_kib_first_page": rss_first,
        "rss_kib_after_all": rss_after,
        "prune_oldest_day": pruned,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--db", help="SQLite file (reused when it already holds the calls)")
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument(
        "--prune", action="store_true", help="also remove the oldest day (changes --db)"
    )
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print(f"{result['calls']:,} calls, {result['db_mib']} MiB on disk; one page of 100, decoded:")
    print(f"{'query':28} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'calls':>6}")
    for name, r in result["queries"].items():  # type: ignore[attr-defined]
        print(f"{name:28} {r['p50_ms']:8} {r['p99_ms']:8} {r['max_ms']:8} {r['calls']:6}")
    print(
        f"VmRSS: {result['rss_kib_first_page']} KiB after the first page, "
        f"{result['rss_kib_after_all']} KiB after every query"
    )
    if result["prune_oldest_day"]:
        p = result["prune_oldest_day"]
        print(
            f"retention: removed {p['calls']:,} calls (the oldest day) in {p['seconds']} s; "  # type: ignore[index]
            f"the event loop at most {p['loop_late_max_ms']} ms late meanwhile"  # type: ignore[index]
        )
    print_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
