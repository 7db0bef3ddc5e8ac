"""API benchmark: requests/s and latency of ListSIPInboundTrunk (1,000 trunks stored) and
ListParticipants, measured through the official `livekit-api` client against a real
`sipbridge serve` process on loopback.

    .venv/bin/python bench/api.py [--trunks 1000] [--participants 20] [--seconds 5]

Prints a table and one JSON line. Every loop is bounded by count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from livekit import api
from livekit.protocol import room, sip
from tests.helpers import API_KEY, API_SECRET, ServerProcess
from tests.signal_client import SignalClient

from bench.common import print_result

MAX_REQUESTS = 200_000


async def measure(
    call: Callable[[], Awaitable[object]], seconds: float, concurrency: int
) -> dict[str, float]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline and len(latencies) < MAX_REQUESTS:
            start = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - start)

    for _ in range(20):  # warm up connections and caches
        await call()
    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "requests": len(latencies),
        "rps": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
    }


async def run(args: argparse.Namespace, server: ServerProcess) -> dict[str, object]:
    results: dict[str, object] = {}
    async with api.LiveKitAPI(url=server.url, api_key=API_KEY, api_secret=API_SECRET) as lk:
        for i in range(args.trunks):
            await lk.sip.create_inbound_trunk(
                sip.CreateSIPInboundTrunkRequest(
                    trunk=sip.SIPInboundTrunkInfo(name=f"t{i}", numbers=[f"+1555{i:07d}"])
                )
            )
        listed = await lk.sip.list_inbound_trunk(sip.ListSIPInboundTrunkRequest())
        assert len(listed.items) == args.trunks

        clients = [SignalClient(server.url, "bench", f"p{i}") for i in range(args.participants)]
        for client in clients:
            await client.connect()
        people = await lk.room.list_participants(room.ListParticipantsRequest(room="bench"))
        assert len(people.participants) == args.participants

        for concurrency in (1, args.concurrency):
            results[f"list_inbound_trunk_c{concurrency}"] = await measure(
                lambda: lk.sip.list_inbound_trunk(sip.ListSIPInboundTrunkRequest()),
                args.seconds,
                concurrency,
            )
            results[f"list_participants_c{concurrency}"] = await measure(
                lambda: lk.room.list_participants(room.ListParticipantsRequest(room="bench")),
                args.seconds,
                concurrency,
            )
        for client in clients:
            await client.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trunks", type=int, default=1000)
    parser.add_argument("--participants", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(Path(tmp))
        server.start()
        try:
            results = asyncio.run(run(args, server))
        finally:
            server.stop()
    print(f"{'case':32} {'requests':>9} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for name, r in results.items():
        assert isinstance(r, dict)
        print(
            f"{name:32} {r['requests']:>9.0f} {r['rps']:>9.0f} {r['p50_ms']:>8.2f} "
            f"{r['p99_ms']:>8.2f}"
        )
    line = {
        "bench": "api",
        "trunks": args.trunks,
        "participants": args.participants,
        "python": platform.python_version(),
        "results": results,
    }
    print_result(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
