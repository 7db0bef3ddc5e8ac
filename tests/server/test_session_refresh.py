"""Session refreshes we send as refresher=uas (RFC 4028 s7.4, s10), against a raw UDP caller:
UPDATE when the caller allows it, else a re-INVITE (ACKed by us, on every 2xx); 481 or 408 to
a refresh ends the call with BYE."""

from __future__ import annotations

import asyncio
import socket

import pytest

from sipbridge.sip.message import Request, Response, make_response, parse_message
from tests.harness import eventually
from tests.sip_app import AnsweringApp, running_app

SDP = (
    b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


class Caller:
    def __init__(self, server_port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.server = ("127.0.0.1", server_port)

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.server)

    async def receive(self, timeout: float = 2.0) -> Request | Response:
        loop = asyncio.get_running_loop()
        data = await asyncio.wait_for(loop.sock_recv(self.sock, 65535), timeout)
        return parse_message(data)

    async def receive_request(self, method: str, timeout: float = 2.0) -> Request:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            message = await self.receive(max(0.01, deadline - loop.time()))
            if isinstance(message, Request) and message.method == method:
                return message

    def invite(self, allow: str) -> bytes:
        return (
            f"INVITE sip:bob@127.0.0.1:{self.server[1]} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK-inv1\r\n"
            f"From: <sip:alice@127.0.0.1>;tag=a1\r\nTo: <sip:bob@127.0.0.1>\r\n"
            f"Call-ID: refresh-test\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
            f"Contact: <sip:alice@127.0.0.1:{self.port}>\r\nAllow: {allow}\r\n"
            f"Content-Type: application/sdp\r\nContent-Length: {len(SDP)}\r\n\r\n"
        ).encode() + SDP

    def ack(self, response: Response) -> None:
        to = response.headers.get("To")
        self.send(
            (
                f"ACK sip:bob@127.0.0.1:{self.server[1]} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK-ack1\r\n"
                f"From: <sip:alice@127.0.0.1>;tag=a1\r\nTo: {to}\r\n"
                f"Call-ID: refresh-test\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\n"
                f"Content-Length: 0\r\n\r\n"
            ).encode()
        )

    def respond(self, request: Request, status: int) -> None:
        self.send(make_response(request, status).serialize())

    def close(self) -> None:
        self.sock.close()


async def answered_call(app: AnsweringApp, port: int, allow: str) -> Caller:
    caller = Caller(port)
    caller.send(caller.invite(allow))
    while True:
        message = await caller.receive()
        if isinstance(message, Response) and message.status == 200:
            caller.ack(message)
            break

    def confirmed() -> bool:
        return bool(app.calls and app.calls[0].dialog is not None and app.calls[0].dialog.confirmed)

    await eventually(confirmed, "the app's dialog confirmed by the ACK", timeout=1, interval=0.01)
    return caller


@pytest.mark.parametrize("allow", ["INVITE, ACK, BYE, CANCEL, UPDATE", "INVITE, ACK, BYE"])
async def test_refresh_by_update_or_reinvite_and_481_hangs_up(allow: str) -> None:
    app = AnsweringApp()
    async with running_app(app, ("udp",)) as (_, port):
        caller = await answered_call(app, port, allow)
        try:
            call = app.calls[0]
            headers = {"Session-Expires": "90;refresher=uas", "Supported": "timer"}
            call.refresh_session(headers, SDP)
            method = "UPDATE" if "UPDATE" in allow else "INVITE"
            refresh = await caller.receive_request(method)
            assert refresh.headers.get("Session-Expires") == "90;refresher=uas"
            assert refresh.headers.get("Supported") == "timer"
            assert (refresh.body == SDP) == (method == "INVITE")
            assert refresh.cseq.seq == 1 and refresh.cseq.method == method
            caller.respond(refresh, 200)
            if method == "INVITE":
                ack = await caller.receive_request("ACK")
                assert ack.cseq.seq == refresh.cseq.seq
                caller.respond(refresh, 200)  # a retransmitted 2xx is ACKed again
                again = await caller.receive_request("ACK")
                assert again.cseq.seq == refresh.cseq.seq
                assert again.top_via.branch == ack.top_via.branch  # the same ACK (s13.2.2.4)
            assert not call.ended
            call.refresh_session(headers, SDP)
            second = await caller.receive_request(method)
            assert second.cseq.seq == 2
            caller.respond(second, 481)
            bye = await caller.receive_request("BYE")
            assert bye.cseq.seq == 3
            assert call.ended
            assert not call.ua.requests  # nothing kept for an ended call
        finally:
            caller.close()
