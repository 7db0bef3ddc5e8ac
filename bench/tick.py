"""The shared 20 ms clock's tick in a mixing room, alone: what one tick costs the event loop with N
real RTP legs on loopback (issue 18: bench/inbound.py's shared room, every caller silent, every
leg sent a frame of silence every 20 ms).

N legs are negotiated, started and put in one room by a real `MediaService` (their sockets bound
from a port range, the relay engine adopting them when built), all sending to one sink socket on
127.0.0.1. The clock's own timer is stopped; the tick is run `--ticks` times back to back through
`MediaClock.advance` (the scheduled time moved 20 ms each time, the sink drained between ticks,
untimed) and timed: wall time and the loop thread's CPU per tick (what an INVITE waits behind),
and the process's CPU (the engine's threads included), as ms per tick and us per leg, median and
p99. `SIPBRIDGE_NO_CRELAY=1` measures the pure-Python path.

    python -m bench.tick --legs 100,250,500 --ticks 300 [--room-size K]

`--room-size K` puts the legs in rooms of K instead of one shared room: 1 is a caller alone in
its room (a room each, nobody else listening: it mixes silence for itself), 2 two callers in a
room (they forward each other's packets: nothing on the clock, so a tick costs nothing).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import time
from typing import Any

from sipbridge import sdp
from sipbridge.server.media import crelay
from sipbridge.server.media.service import MediaService
from sipbridge.telephony.media import MediaPolicy

HOST = "127.0.0.1"


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _drain(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            sock.recv(2048)
        except BlockingIOError:
            return count
        count += 1


async def measure(legs: int, ticks: int, low_port: int, room_size: int = 0) -> dict[str, Any]:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sink.bind((HOST, 0))
    sink.setblocking(False)
    svc = MediaService(HOST, (low_port, low_port + 2 * legs + 40))
    try:
        offer = sdp.serialize_sdp(
            sdp.make_offer(
                (sdp.PCMU, sdp.TELEPHONE_EVENT),
                address=HOST,
                port=sink.getsockname()[1],
                session_id=1,
                session_version=1,
                ptime=20,
            )
        )
        for n in range(legs):
            _, leg = svc.negotiate(offer, MediaPolicy())
            svc.start(leg, timeout=60.0, on_timeout=lambda: None)
            svc.attach(leg, f"room{n // room_size}" if room_size else "shared")
        clock = svc.clock
        clock.stop()  # ticked here, not by its timer
        mixing = sum(len(room.mixers) for room in svc.rooms.values())
        assert mixing == (0 if room_size == 2 else legs), "who mixes"
        loop = asyncio.get_running_loop()
        wall: list[float] = []
        thread: list[float] = []
        process: list[float] = []
        received = 0
        scheduled = loop.time()
        for index in range(ticks + 20):
            scheduled += 0.02
            clock._next = scheduled
            w0, t0, p0 = time.perf_counter(), time.thread_time(), time.process_time()
            clock.advance(scheduled)
            w1, t1 = time.perf_counter(), time.thread_time()
            await asyncio.sleep(0.002)  # a sender thread, if any, finishes off the loop's clock
            p1 = time.process_time()
            received += _drain(sink)
            if index >= 20:  # warm-up: encoders, caches
                wall.append(w1 - w0)
                thread.append(t1 - t0)
                process.append(p1 - p0)
        await asyncio.sleep(0.05)
        received += _drain(sink)
        expected = mixing * (ticks + 20)
        out: dict[str, Any] = {"legs": legs, "room_size": room_size or legs, "ticks": ticks}
        out["received"] = received
        out["lost"] = expected - received
        for name, values in (("wall", wall), ("loop_cpu", thread), ("process_cpu", process)):
            median = statistics.median(values)
            out[f"{name}_ms"] = round(median * 1e3, 3)
            out[f"{name}_p99_ms"] = round(_percentile(values, 0.99) * 1e3, 3)
            out[f"{name}_us_per_leg"] = round(median * 1e6 / legs, 3)
        return out
    finally:
        svc.close()
        sink.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--legs", default="100,250,500")
    parser.add_argument("--ticks", type=int, default=300)
    parser.add_argument("--low-port", type=int, default=42000)
    parser.add_argument("--room-size", type=int, default=0, help="0: one room of every leg")
    args = parser.parse_args()
    print(json.dumps({"crelay": crelay.available()}))
    for legs in [int(x) for x in args.legs.split(",")]:
        print(
            json.dumps(asyncio.run(measure(legs, args.ticks, args.low_port, args.room_size))),
            flush=True,
        )


if __name__ == "__main__":
    main()
