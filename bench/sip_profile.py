"""The bare UAS of bench/sip.py in one process, without sockets: where its CPU per call goes.

    .venv/bin/python bench/sip_profile.py [--calls 18000] [--no-gc] [--no-trace] [--profile]
                                          [--survivors]

Each call is what `sipp -sn uac` sends (INVITE, ACK, BYE, each different) handed to the real
`SipService` + `SipUserAgent` + `tests/sip_app.py` answering app (traces on, the collector tuned
as `sipbridge serve` tunes it) through the UDP protocol's `datagram_received`; what the service
sends goes to a list instead of a socket, so the figure is the stack's Python work alone (no
system calls, no event loop turns). Prints the best CPU microseconds per call of 6 batches, the
mean of all 6 (with the rare costs the best batch escapes: counting or sweeping what the calls
left frozen) and the garbage collector's share; `--profile` prints cProfile's top functions
instead (which inflates call-heavy code: use it for counts, py-spy for shares); `--survivors`
what a call leaves for the cyclic collector to walk (up to 3,000 calls, the collector off
meanwhile). Compare two trees in one session (the machine is shared): `PYTHONPATH=<tree>/src`.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pstats
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.sip_app import AnsweringApp

from sipbridge.server.collector import tune_collector
from sipbridge.server.sip.transport import Listen, SipService, _Udp
from sipbridge.server.sip.user_agent import SipUserAgent

_HEAD = (
    "SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-{n}-{b}-0\r\n"
    "From: sipp <sip:sipp@127.0.0.1:5061>;tag={n}SIPpTag001\r\n"
    "To: service <sip:service@127.0.0.1:5060>{to}\r\n"
    "Call-ID: {n}-1234@127.0.0.1\r\n"
    "CSeq: {cseq}\r\n"
    "Contact: sip:sipp@127.0.0.1:5061\r\n"
    "Max-Forwards: 70\r\n"
    "Subject: Performance Test\r\n"
)
SDP = (
    "v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
    "t=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


def _message(
    method: str, n: int, branch: int, cseq: str, *, to_tag: str = "", sdp: str = ""
) -> bytes:
    head = _HEAD.format(n=n, b=branch, to=f";tag={to_tag}" if to_tag else "", cseq=cseq)
    kind = "Content-Type: application/sdp\r\n" if sdp else ""
    text = f"{method} sip:service@127.0.0.1:5060 {head}{kind}"
    text += f"Content-Length: {len(sdp)}\r\n\r\n{sdp}"
    return text.encode()


class _Sent:
    """Stands in for the UDP socket: what would be sent."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def sendto(self, data: bytes, addr: Any = None) -> None:
        self.sent.append(data)

    def close(self) -> None:
        pass


def _to_tag(response: bytes) -> str:
    start = response.find(b"\r\nTo:")
    line = response[start : response.find(b"\r\n", start + 2)]
    return line.split(b";tag=")[1].decode()


async def run(
    calls: int, *, collect: bool, trace: bool, profile: bool, survivors: bool = False
) -> None:
    app = AnsweringApp(keep_calls=False)
    ua = SipUserAgent("127.0.0.1", 5060, on_invite=app.on_invite)
    service = SipService(ua)
    ua.attach(service)
    if not trace:
        service.traces = None
    service._loop = asyncio.get_running_loop()
    socket = _Sent()
    service._udp[("127.0.0.1", 5060)] = socket  # type: ignore[assignment]
    service._local_udp = ("127.0.0.1", 5060)
    service.bound.append(Listen("udp", "127.0.0.1", 5060))
    protocol = _Udp(service)
    source = ("127.0.0.1", 5061)

    def call(n: int) -> None:
        socket.sent.clear()
        protocol.datagram_received(_message("INVITE", n, 1, "1 INVITE", sdp=SDP), source)
        tag = _to_tag(socket.sent[-1])
        protocol.datagram_received(_message("ACK", n, 5, "1 ACK", to_tag=tag), source)
        protocol.datagram_received(_message("BYE", n, 7, "2 BYE", to_tag=tag), source)
        # 180 and 200 to the INVITE (answered at once: no 100, RFC 3261 s17.2.1), 200 to BYE
        assert len(socket.sent) == 3, socket.sent

    for n in range(2_000):  # warm the caches
        call(n)
    if survivors:
        count_survivors(call, 2_000, min(calls, 3_000))
        return
    tune_collector()
    if not collect:
        gc.disable()
    spent = [0.0, 0]
    began = [0.0]

    def watch(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            began[0] = time.perf_counter()
        else:
            spent[0] += time.perf_counter() - began[0]
            spent[1] += 1

    gc.callbacks.append(watch)
    first = 2_000
    if profile:
        profiler = cProfile.Profile()
        profiler.enable()
        for n in range(first, first + calls):
            call(n)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(40)
        return
    best = float("inf")
    total = 0.0
    batch = max(1, calls // 6)
    for _ in range(6):
        start = time.process_time()
        for n in range(first, first + batch):
            call(n)
        first += batch
        spent_batch = time.process_time() - start
        total += spent_batch
        best = min(best, spent_batch / batch)
    gc.callbacks.remove(watch)
    print(
        f"{best * 1e6:.1f} us CPU per call (best of 6 batches of {batch}; "
        f"mean {total / (6 * batch) * 1e6:.1f}); "
        f"garbage collector {spent[0] / (6 * batch) * 1e6:.1f} us per call "
        f"({spent[1]} collections)"
    )


def count_survivors(call: Callable[[int], None], first: int, calls: int) -> None:
    """What `calls` calls leave tracked by the cyclic collector (the young generation after
    them, everything before frozen): what each young collection walks once, a call at a time,
    while the calls' transactions linger; by type, and how long one collection of it takes."""
    gc.collect()
    gc.freeze()
    gc.disable()
    for n in range(first, first + calls):
        call(n)
    young = gc.get_objects(0)
    kinds = Counter(type(o).__name__ for o in young)
    start = time.perf_counter()
    del young
    gc.collect(0)
    took = time.perf_counter() - start
    gc.unfreeze()
    gc.enable()
    total = sum(kinds.values())
    by_kind = ", ".join(f"{kind} {count / calls:.1f}" for kind, count in kinds.most_common(8))
    print(
        f"objects a call leaves to the collector: {total / calls:.1f} ({by_kind}); "
        f"one young collection of {calls} calls' worth: {took * 1e3:.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=18_000)
    parser.add_argument("--no-gc", action="store_true")
    parser.add_argument("--no-trace", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--survivors", action="store_true")
    args = parser.parse_args()
    calls = min(max(args.calls, 6), 200_000)  # bounded
    coroutine = run(
        calls,
        collect=not args.no_gc,
        trace=not args.no_trace,
        profile=args.profile,
        survivors=args.survivors,
    )
    try:
        import uvloop  # noqa: PLC0415

        uvloop.run(coroutine)
    except ImportError:
        asyncio.run(coroutine)


if __name__ == "__main__":
    main()
