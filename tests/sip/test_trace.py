"""sip/trace.py: per-call traces by Call-ID, bounded per call and in total, and the ladder."""

from __future__ import annotations

from sipbridge.sip.trace import (
    CallTraces,
    Gap,
    TracedMessage,
    entries_from_json,
    ladder,
    pcap_of,
    rtp_header,
    trace_as_json,
)
from tests.pcap_reader import read_pcap

US = ("127.0.0.1", 5060)
PEER = ("127.0.0.1", 5062)


def request(
    method: str, call_id: str = "c1@host", *, header: str = "Call-ID", cseq: int = 1
) -> bytes:
    return (
        f"{method} sip:100@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK-{cseq}\r\n"
        f"{header}: {call_id}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def response(status: str, call_id: str = "c1@host", cseq: int = 1) -> bytes:
    return (
        f"SIP/2.0 {status}\r\nVia: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK-{cseq}\r\n"
        f"Call-ID: {call_id}\r\nCSeq: {cseq} INVITE\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def feed(traces: CallTraces, data: bytes, now: float, *, outgoing: bool = False) -> None:
    traces.record(data, now, outgoing=outgoing, transport="udp", local=US, remote=PEER)


def test_a_call_is_kept_in_order_from_its_invite() -> None:
    traces = CallTraces()
    flow = [
        (request("INVITE"), False),
        (response("100 Trying"), True),
        (response("180 Ringing"), True),
        (response("200 OK"), True),
        (request("ACK"), False),
        (request("BYE", cseq=2), False),
        (response("200 OK", cseq=2), True),
    ]
    for i, (data, outgoing) in enumerate(flow):
        feed(traces, data, 100.0 + i / 10, outgoing=outgoing)
    trace = traces.get("c1@host", 101.0)
    assert trace is not None
    assert [(m.data, m.outgoing) for m in trace.messages()] == flow
    assert [m.first_line for m in trace.messages()][:2] == [
        "INVITE sip:100@127.0.0.1 SIP/2.0",
        "SIP/2.0 100 Trying",
    ]
    assert trace.messages()[0].remote == PEER and trace.messages()[0].local == US


def test_only_an_invite_opens_a_trace() -> None:
    traces = CallTraces()
    feed(traces, request("OPTIONS", "ping@host"), 1.0)
    feed(traces, request("BYE", "gone@host"), 1.0)
    feed(traces, response("200 OK", "gone@host"), 1.0)
    feed(traces, b"INVITE sip:x SIP/2.0\r\nCSeq: 1 INVITE\r\n\r\n", 1.0)  # no Call-ID at all
    feed(traces, request("INVITE", ""), 1.0)  # an empty one
    assert len(traces) == 0
    assert traces.get("ping@host", 1.0) is None


def test_call_id_in_any_case_and_compact_form_not_in_the_body() -> None:
    traces = CallTraces()
    feed(traces, request("INVITE", "a@h", header="call-id"), 1.0)
    feed(traces, request("ACK", "a@h", header="i"), 1.0)
    feed(traces, request("BYE", "a@h", header="CALL-ID \t"), 1.0)
    # a NOTIFY whose sipfrag body names the call, its own header another
    body = b"Call-ID: a@h\r\n"
    notify = request("NOTIFY", "other@h").replace(b"Content-Length: 0\r\n\r\n", b"\r\n") + body
    feed(traces, notify, 1.0)
    # the canonical spelling only in the body, the compact one in the headers
    compact = request("INFO", "other@h", header="i").replace(b"Content-Length: 0\r\n\r\n", b"\r\n")
    feed(traces, compact + body, 1.0)
    # ... and further into the body
    feed(traces, compact + b"SIP/2.0 200 OK\r\n" + body, 1.0)
    trace = traces.get("a@h", 1.0)
    assert trace is not None
    assert len(trace.messages()) == 3


def test_our_call_id_finds_the_trace() -> None:
    traces = CallTraces()
    feed(traces, request("INVITE"), 1.0)
    traces.name("SCL_abc", "c1@host")
    traces.name("SCL_unknown", "nothing@host")  # no trace: nothing to name
    trace = traces.get("SCL_abc", 1.0)
    assert trace is not None and trace.call_id == "c1@host"
    assert trace_as_json(trace)["names"] == ["SCL_abc"]
    assert traces.get("SCL_unknown", 1.0) is None


def test_ten_thousand_reinvites_keep_head_and_tail_within_bounds() -> None:
    traces = CallTraces(head_messages=150, tail_messages=50)
    feed(traces, request("INVITE"), 0.0)
    for i in range(2, 10_002):
        feed(traces, request("INVITE", cseq=i), float(i))
    feed(traces, request("BYE", cseq=99_999), 20_000.0)
    trace = traces.get("c1@host", 20_000.0)
    assert trace is not None
    assert len(trace.head) == 150 and len(trace.tail) == 50
    assert trace.dropped == 10_002 - 200  # the INVITE, 10,000 re-INVITEs, the BYE
    entries = list(trace.entries())
    assert isinstance(entries[150], Gap) and entries[150].messages == trace.dropped
    last = entries[-1]
    assert isinstance(last, TracedMessage) and last.first_line.startswith("BYE ")
    assert trace.kept_bytes <= 192 * 1024 + 64 * 1024
    assert traces.bytes == trace.size


def test_the_byte_bounds_hold_for_large_messages() -> None:
    traces = CallTraces(head_bytes=4000, tail_bytes=2000)
    big = request("INVITE") + b"x" * 1500
    for i in range(20):
        feed(traces, big, float(i))
    huge = request("INFO") + b"y" * 3000  # larger than the whole tail: not kept, counted
    feed(traces, huge, 30.0)
    trace = traces.get("c1@host", 30.0)
    assert trace is not None
    assert trace.kept_head_bytes <= 4000 and trace.kept_tail_bytes <= 2000
    assert len(trace.head) == 2 and len(trace.tail) == 1
    assert trace.dropped == 21 - 3
    assert trace.dropped_bytes == 17 * len(big) + len(huge)


def test_least_recently_active_call_goes_first() -> None:
    traces = CallTraces(max_calls=3)
    for n in range(3):
        feed(traces, request("INVITE", f"c{n}"), float(n))
    feed(traces, request("BYE", "c0"), 5.0)  # c0 is active again: c1 is now the oldest
    feed(traces, request("INVITE", "c3"), 6.0)
    assert len(traces) == 3
    assert traces.get("c1", 6.0) is None
    assert all(traces.get(c, 6.0) is not None for c in ("c0", "c2", "c3"))
    assert traces.evicted == 1


def test_total_bytes_bound_evicts_and_accounting_stays_exact() -> None:
    traces = CallTraces(max_bytes=20_000)
    for n in range(100):
        traces.name(f"SCL_{n}", f"c{n}")  # before the trace: ignored
        feed(traces, request("INVITE", f"c{n}") + b"z" * 900, float(n))
        traces.name(f"SCL_{n}", f"c{n}")
        assert traces.bytes <= 20_000
    kept = [traces.get(f"c{n}", 100.0) for n in range(100)]
    alive = [t for t in kept if t is not None]
    assert 0 < len(alive) < 100
    assert traces.bytes == sum(t.size for t in alive)
    assert traces.get("SCL_0", 100.0) is None  # its name went with it
    assert traces.get("SCL_99", 100.0) is not None


def test_one_call_larger_than_the_total_budget_is_still_kept_while_written() -> None:
    traces = CallTraces(max_bytes=500)
    feed(traces, request("INVITE", "a") + b"x" * 1000, 1.0)
    assert traces.get("a", 1.0) is not None
    feed(traces, request("INVITE", "b"), 2.0)
    assert traces.get("a", 2.0) is None and traces.get("b", 2.0) is not None


def test_traces_expire() -> None:
    traces = CallTraces(max_age=60.0)
    feed(traces, request("INVITE", "old"), 0.0)
    feed(traces, request("INVITE", "older"), 0.0)
    feed(traces, request("INVITE", "new"), 100.0)  # opening a trace expires the old ones
    assert len(traces) == 1
    assert traces.get("new", 150.0) is not None
    assert traces.get("new", 161.0) is None  # expired when asked for
    assert len(traces) == 0


def test_json_round_trip_and_ladder() -> None:
    traces = CallTraces(head_messages=3, tail_messages=2)
    feed(traces, request("INVITE"), 1000.0)
    feed(traces, response("100 Trying"), 1000.001, outgoing=True)
    feed(traces, response("180 Ringing"), 1000.002, outgoing=True)
    for i in range(5):
        feed(traces, request("INFO", cseq=10 + i), 1001.0 + i)
    traces.record(
        request("BYE", cseq=20), 1010.5, outgoing=True, transport="tcp", local=US,
        remote=("2001:db8::9", 5060),
    )  # fmt: skip
    trace = traces.get("c1@host", 1011.0)
    assert trace is not None
    data = trace_as_json(trace)
    assert data["dropped"] == 4
    entries = entries_from_json(data)
    assert entries == list(trace.entries())
    text = ladder(entries)
    lines = text.splitlines()
    assert lines[0].split() == ["127.0.0.1:5060", "127.0.0.1:5062", "(udp)"]
    bars = [i for i, c in enumerate(lines[1]) if c == "|"]
    assert lines[0].index("127.0.0.1:5060") == bars[0]
    assert lines[0].index("127.0.0.1:5062") + len("127.0.0.1:5062") == bars[1] + 1
    assert lines[1].startswith("   +0.000s |<") and "INVITE sip:100@127.0.0.1 --|" in lines[1]
    assert "SIP/2.0" not in lines[1]
    assert lines[2].startswith("   +0.001s |-- 100 Trying -") and lines[2].endswith(">|")
    assert "4 messages" in lines[4]
    assert lines[-1].startswith("  +10.500s |-- BYE")
    assert lines[-1].endswith("([2001:db8::9]:5060 tcp)")
    assert len({len(line.split("|")[1]) for line in lines[1:] if "|" in line}) == 1
    assert ladder([]) == "(no messages)"


def test_a_message_cut_short_still_finds_its_call() -> None:
    traces = CallTraces()
    feed(traces, b"INVITE sip:x SIP/2.0\r\nCall-ID: cut@h", 1.0)  # no blank line, no CRLF
    feed(traces, b"ACK sip:x SIP/2.0\r\ni: cut@h\r\n", 2.0)
    trace = traces.get("cut@h", 2.0)
    assert trace is not None and len(trace.messages()) == 2


def test_a_name_moved_to_another_call_stays_with_it() -> None:
    traces = CallTraces(max_calls=2)
    feed(traces, request("INVITE", "first"), 1.0)
    feed(traces, request("INVITE", "second"), 2.0)
    traces.name("SCL_x", "first")
    traces.name("SCL_x", "second")  # the same id for another call (a retried call, say)
    feed(traces, request("INVITE", "third"), 3.0)  # evicts the first, not the name
    trace = traces.get("SCL_x", 3.0)
    assert trace is not None and trace.call_id == "second"
    feed(traces, request("INVITE", "fourth"), 4.0)  # evicts the second, and the name
    assert traces.get("SCL_x", 4.0) is None


def test_pcap_of_a_trace_puts_each_message_where_it_went() -> None:
    traces = CallTraces()
    feed(traces, request("INVITE"), 1.5)
    feed(traces, response("200 OK"), 1.75, outgoing=True)
    trace = traces.get("c1@host", 2.0)
    assert trace is not None
    packets = read_pcap(pcap_of(trace))
    assert [(p.source, p.destination, p.time) for p in packets] == [
        (PEER, US, 1.5),
        (US, PEER, 1.75),
    ]


RTP = bytes.fromhex("80000001000000a0deadbeef") + b"\xff" * 160  # PCMU, seq 1, 20 ms


def test_rtp_is_kept_only_when_asked_and_only_its_headers() -> None:
    traces = CallTraces(rtp_packets=3)
    feed(traces, request("INVITE"), 1.0)
    trace = traces.get("c1@host", 1.0)
    assert trace is not None
    media = ("127.0.0.1", 10000), ("127.0.0.1", 40000)
    traces.record_rtp(trace, RTP, 1.01, outgoing=False, local=media[0], remote=media[1])
    assert trace.rtp is None  # not asked for
    assert traces.capture_rtp("nothing", 1.0) is None
    before = traces.bytes
    assert traces.capture_rtp("c1@host", 1.0) is trace
    for i in range(5):
        traces.record_rtp(
            trace, RTP, 1.02 + i, outgoing=i % 2 == 0, local=media[0], remote=media[1]
        )
    assert trace.rtp is not None and len(trace.rtp) == 3 and trace.rtp_dropped == 2
    assert trace.rtp[0] == (1.02, True, media[0], media[1], RTP[:12], len(RTP))
    assert traces.bytes == before + 3 * (12 + 120) == trace.size
    data = trace_as_json(trace)
    assert (data["rtp_packets"], data["rtp_dropped"]) == (3, 2)

    feed(traces, response("200 OK"), 2.5, outgoing=True)  # between the RTP packets in time
    packets = read_pcap(pcap_of(trace))
    assert [(p.time, len(p.payload), p.original_length) for p in packets] == [
        (1.0, len(request("INVITE")), 0),
        (1.02, 12, len(RTP)),
        (2.02, 12, len(RTP)),
        (2.5, len(response("200 OK")), 0),
        (3.02, 12, len(RTP)),
    ]
    assert packets[1].source == media[0] and packets[2].source == media[1]


def test_rtp_of_an_evicted_call_is_not_counted() -> None:
    traces = CallTraces(max_calls=1)
    feed(traces, request("INVITE", "a"), 1.0)
    trace = traces.capture_rtp("a", 1.0)
    assert trace is not None
    feed(traces, request("INVITE", "b"), 2.0)  # evicts a
    bytes_before = traces.bytes
    traces.record_rtp(trace, RTP, 2.0, outgoing=True, local=US, remote=PEER)
    assert traces.bytes == bytes_before and trace.rtp == []


def test_rtp_counts_in_the_total_budget() -> None:
    traces = CallTraces(max_bytes=3000)
    feed(traces, request("INVITE", "a"), 1.0)
    feed(traces, request("INVITE", "b"), 1.0)
    trace = traces.capture_rtp("b", 1.0)
    assert trace is not None
    for i in range(30):
        traces.record_rtp(trace, RTP, 1.0 + i, outgoing=True, local=US, remote=PEER)
    assert traces.get("a", 40.0) is None  # made room for b's RTP
    assert traces.get("b", 40.0) is trace


def test_rtp_header_takes_csrcs_and_extension() -> None:
    assert rtp_header(b"\x80\x00") == b"\x80\x00"  # too short to be RTP: kept as it is
    two_csrcs = bytes([0x82]) + bytes(11) + bytes(8) + b"payload"
    assert rtp_header(two_csrcs) == two_csrcs[:20]
    extension = bytes([0x90]) + bytes(11) + b"\xbe\xde\x00\x02" + bytes(8) + b"payload"
    assert rtp_header(extension) == extension[:24]
    cut = bytes([0x90]) + bytes(11) + b"\xbe\xde"  # extension bit, no room for its header
    assert rtp_header(cut) == cut[:12]


def test_rtp_capture_can_open_the_trace_before_the_invite() -> None:
    traces = CallTraces()
    assert traces.capture_rtp("", 1.0, opening=True) is None
    trace = traces.capture_rtp("out@us", 1.0, opening=True)
    assert trace is not None and trace.rtp == []
    feed(traces, request("INVITE", "out@us"), 1.1, outgoing=True)
    assert traces.get("out@us", 1.2) is trace and len(trace.messages()) == 1


def test_a_canonical_call_id_with_blanks_around_it_finds_its_call() -> None:
    # the canonical spelling with more blanks (tab, space, a stray CR) than the one after the
    # colon: stripped as any spelling is, so the INVITE's trace takes the BYE
    traces = CallTraces()
    feed(traces, request("INVITE", "b@h"), 1.0)
    feed(traces, request("ACK", " \tb@h"), 1.0)
    feed(traces, request("BYE", "b@h \t\r", cseq=2), 1.0)
    feed(traces, request("INFO", "b@h ", cseq=3), 1.0)
    trace = traces.get("b@h", 1.0)
    assert trace is not None and len(trace.messages()) == 4
    assert len(traces) == 1
