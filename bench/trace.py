"""SIP trace benchmark: what recording every SIP message per call costs at the transport
boundary (`SipService.receive` / `_transmit`, issue 14 item 2), per message.

    .venv/bin/python bench/trace.py [--calls 20000]

Three figures in microseconds per message, each the best of 9 runs (the machines are shared:
the best run is the cost, the others include other processes' load):
- `record, call`: `CallTraces.record` for the 7 messages of a call (INVITE with SDP, 100, 180,
  200 with SDP, ACK, BYE, 200), every call a new Call-ID, the store at its 10,000-call bound so
  every new call evicts one (the steady state of a busy server);
- `record, no call`: an OPTIONS ping with a new Call-ID: not kept, the cost every non-call
  message pays;
- `receive overhead`: `SipService.receive` with the trace on minus with it off, the endpoint
  stubbed out: what the boundary adds per message, wall clock and address look-up included.
For scale, the parse+serialise of the same INVITE (bench/sip.py's first figure). Prints a table
and one JSON line.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.sip import INVITE
from sipbridge.server.sip.transport import SipService
from sipbridge.sip.endpoint import Peer
from sipbridge.sip.message import parse_message
from sipbridge.sip.trace import CallTraces

RUNS = 9
US = ("127.0.0.1", 5060)
PEER = ("192.0.2.10", 5060)


def call_flow(i: int) -> list[tuple[bytes, bool]]:
    call_id = b"%08x-9d3c2b1a@192.0.2.10" % i
    invite = INVITE.replace(b"8a2c1f56e9b04f0a9d3c2b1a@192.0.2.10", call_id)
    head = invite.split(b"\r\n\r\n")[0]
    via, from_, to = (
        next(line for line in head.split(b"\r\n") if line.startswith(name))
        for name in (b"Via:", b"From:", b"To:")
    )

    def response(status: bytes, body: bytes = b"") -> bytes:
        return (
            b"SIP/2.0 " + status + b"\r\n" + via + b"\r\n" + from_ + b"\r\n" + to
            + b";tag=ours\r\nCall-ID: " + call_id + b"\r\nCSeq: 1 INVITE\r\n"
            + b"Content-Length: %d\r\n\r\n" % len(body) + body
        )  # fmt: skip

    def request(method: bytes, cseq: int) -> bytes:
        return (
            method + b" sip:127.0.0.1:5060 SIP/2.0\r\n" + via + b"\r\n" + from_ + b"\r\n" + to
            + b";tag=ours\r\nCall-ID: " + call_id + b"\r\nCSeq: %d " % cseq + method
            + b"\r\nContent-Length: 0\r\n\r\n"
        )  # fmt: skip

    sdp = invite.split(b"\r\n\r\n", 1)[1]
    return [
        (invite, False),
        (response(b"100 Trying"), True),
        (response(b"180 Ringing"), True),
        (response(b"200 OK", sdp), True),
        (request(b"ACK", 1), False),
        (request(b"BYE", 2), False),
        (response(b"200 OK"), True),
    ]


def best_us(run: object, runs: int = RUNS) -> float:
    """The best of `runs` timings of `run()` (which returns its message count), us/message."""
    best = float("inf")
    for _ in range(runs):
        gc.collect()
        began = time.perf_counter()
        count = run()  # type: ignore[operator]
        best = min(best, (time.perf_counter() - began) / count * 1e6)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args()
    calls = [call_flow(i) for i in range(args.calls)]
    flat = [m for flow in calls for m in flow]
    options = [
        b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bK-%d\r\n"
        b"Call-ID: ping-%d@192.0.2.10\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n" % (i, i)
        for i in range(len(flat))
    ]

    def record_calls() -> int:
        traces = CallTraces()
        record = traces.record
        for data, outgoing in flat:
            record(data, 1.0, outgoing=outgoing, transport="udp", local=US, remote=PEER)
        assert len(traces) == min(args.calls, 10_000)
        return len(flat)

    def record_no_call() -> int:
        traces = CallTraces()
        for data in options:
            traces.record(data, 1.0, outgoing=False, transport="udp", local=US, remote=PEER)
        return len(options)

    service = SipService(lambda _s, _e: None, clock=lambda: 0.0)
    service.endpoint.receive = lambda *_: None  # type: ignore[method-assign]
    service._flush = lambda: None  # type: ignore[method-assign]
    peer = Peer("udp", *PEER)
    incoming = [data for data, _ in flat]

    def receive(traces: CallTraces | None) -> float:
        service.traces = traces
        gc.collect()
        began = time.perf_counter()
        for data in incoming:
            service.receive(data, peer)
        return (time.perf_counter() - began) / len(incoming) * 1e6

    with_trace = without = float("inf")
    for _ in range(RUNS):  # alternating, so that both see the same load
        with_trace = min(with_trace, receive(CallTraces()))
        without = min(without, receive(None))
    parse = best_us(lambda: [parse_message(INVITE).serialize() for _ in range(2000)] and 2000)
    results = {
        "record_call_us": best_us(record_calls),
        "record_no_call_us": best_us(record_no_call),
        "receive_overhead_us": with_trace - without,
        "receive_with_trace_us": with_trace,
        "receive_without_trace_us": without,
        "parse_serialise_invite_us": parse,
    }
    print(f"{'per SIP message':40} {'us':>8}")
    for name, value in results.items():
        print(f"{name:40} {value:8.2f}")
    print(json.dumps({"bench": "trace", "python": platform.python_version(), "calls": args.calls,
                      **results}, sort_keys=True))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
