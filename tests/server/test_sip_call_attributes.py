"""server/sip/user_agent.py: what a call says of itself is its INVITE session's (compiled by
mypyc too: a descriptor object as a class attribute became every call's own default value
there, so that `call.request` read a descriptor rather than the INVITE)."""

from __future__ import annotations

import socket

from sipbridge.sip.message import Request
from sipbridge.sip.transaction import ServerTransaction
from tests.harness import eventually
from tests.sip_app import AnsweringApp, running_app

INVITE = (
    "INVITE sip:service@127.0.0.1:{port} SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:{ours};branch=z9hG4bK-attributes-1\r\n"
    "From: caller <sip:caller@127.0.0.1:{ours}>;tag=attributes\r\n"
    "To: service <sip:service@127.0.0.1:{port}>\r\n"
    "Call-ID: attributes@127.0.0.1\r\n"
    "CSeq: 1 INVITE\r\n"
    "Contact: <sip:caller@127.0.0.1:{ours}>\r\n"
    "Max-Forwards: 70\r\n"
    "Content-Length: 0\r\n\r\n"
)


async def test_an_incoming_call_reads_its_sessions_attributes() -> None:
    app = AnsweringApp()
    async with running_app(app, transports=("udp",)) as (_, port):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as caller:
            caller.bind(("127.0.0.1", 0))
            ours = caller.getsockname()[1]
            caller.sendto(INVITE.format(port=port, ours=ours).encode(), ("127.0.0.1", port))
            await eventually(lambda: app.calls, "the INVITE to reach the application")
        call = app.calls[0]
        session = call.session
        assert isinstance(call.request, Request) and call.request.method == "INVITE"
        assert call.request is session.request
        assert isinstance(call.transaction, ServerTransaction)
        assert call.transaction is session.server_transaction
        assert call.local_tag == session.local_tag and call.local_tag
        assert call.peer is session.peer and call.peer.port == ours
        assert call.answered and not call.ended
        assert call.dialog is session.dialog and call.dialog is not None
        assert call.retransmitter is session.retransmitter and call.retransmitter is not None
        assert call.remote_allow == session.remote_allow
