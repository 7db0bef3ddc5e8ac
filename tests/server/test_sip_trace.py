"""The transport records every SIP message of a call with both addresses (server/sip/transport.py
and sip/trace.py): a raw caller over UDP and one over TCP against our stack on loopback; the
trace's pcap reads back with each message where it went."""

from __future__ import annotations

import asyncio
import socket

from sipbridge.sip.trace import pcap_of
from tests.harness import eventually
from tests.pcap_reader import read_pcap
from tests.sip_app import AnsweringApp, running_app


def invite(transport: str, port: int, local_port: int, call_id: str) -> bytes:
    return (
        f"INVITE sip:bob@127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} 127.0.0.1:{local_port};branch=z9hG4bK-{call_id}\r\n"
        f"From: <sip:alice@127.0.0.1>;tag=a1\r\nTo: <sip:bob@127.0.0.1>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
        f"Contact: <sip:alice@127.0.0.1:{local_port};transport={transport.lower()}>\r\n"
        f"Content-Length: 0\r\n\r\n"
    ).encode()


async def test_udp_and_tcp_messages_are_traced_with_both_addresses() -> None:
    # (answered on a later turn: the 100 Trying goes out first, RFC 3261 s17.2.1)
    async with running_app(AnsweringApp(deferred=True), ("udp", "tcp")) as (service, port):
        assert service.traces is not None
        traces = service.traces

        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        udp.setblocking(False)
        udp_port = udp.getsockname()[1]
        udp.sendto(invite("UDP", port, udp_port, "traced-udp"), ("127.0.0.1", port))
        options = (
            f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{udp_port};branch=z9hG4bK-ping\r\n"
            f"From: <sip:a@127.0.0.1>;tag=p\r\nTo: <sip:b@127.0.0.1>\r\nCall-ID: ping\r\n"
            f"CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        udp.sendto(options, ("127.0.0.1", port))

        _, writer = await asyncio.open_connection("127.0.0.1", port)
        tcp_port = writer.get_extra_info("sockname")[1]
        writer.write(invite("TCP", port, tcp_port, "traced-tcp"))
        await writer.drain()

        def answered(call_id: str) -> bool:
            trace = traces.get(call_id, service.wall_clock())
            return trace is not None and any(
                m.first_line == "SIP/2.0 200 OK" for m in trace.messages()
            )

        await eventually(lambda: answered("traced-udp") and answered("traced-tcp"), "two 200s")
        for call_id, transport, remote_port in (
            ("traced-udp", "udp", udp_port),
            ("traced-tcp", "tcp", tcp_port),
        ):
            trace = traces.get(call_id, service.wall_clock())
            assert trace is not None
            messages = trace.messages()
            assert [m.first_line.split(" sip:")[0] for m in messages] == [
                "INVITE",
                "SIP/2.0 100 Trying",
                "SIP/2.0 180 Ringing",
                "SIP/2.0 200 OK",
            ]
            assert [m.outgoing for m in messages] == [False, True, True, True]
            assert {(m.transport, m.local, m.remote) for m in messages} == {
                (transport, ("127.0.0.1", port), ("127.0.0.1", remote_port))
            }
            packets = read_pcap(pcap_of(trace))
            assert [p.payload for p in packets] == [m.data for m in messages]
            assert packets[0].protocol == packets[1].protocol == transport
            assert packets[0].source == packets[1].destination == ("127.0.0.1", remote_port)
            assert packets[0].destination == packets[1].source == ("127.0.0.1", port)
        assert traces.get("ping", service.wall_clock()) is None  # no call, no trace
        assert len(traces) == 2
        writer.close()
        await writer.wait_closed()
        udp.close()
