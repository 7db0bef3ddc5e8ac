"""server/api/trace_api.py in process: the trace and pcap GETs, RTP on request, and refusals."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sipbridge.server.api.auth import sign_token
from sipbridge.server.api.trace_api import TraceApi
from sipbridge.sip.trace import CallTraces
from tests.pcap_reader import read_pcap

KEYS = {"key": "secret-long-enough-for-hs256-0123456789abcdef"}


def admin() -> dict[str, str]:
    """An admin's Authorization header, signed now (a token made at import expires before a
    long suite reaches the test)."""
    return {"Authorization": "Bearer " + sign_token("key", KEYS["key"], sip={"admin": True})}


INVITE = (
    b"INVITE sip:100@127.0.0.1 SIP/2.0\r\nCall-ID: a/b@host\r\nCSeq: 1 INVITE\r\n"
    b"Content-Length: 0\r\n\r\n"
)
US, PEER = ("127.0.0.1", 5060), ("127.0.0.1", 5062)


def app_with(traces: CallTraces, live: set[str]) -> web.Application:
    app = web.Application()
    TraceApi(lambda: traces, KEYS, lambda: 100.0, lambda call: call in live).routes(app)
    return app


async def test_trace_pcap_and_rtp_over_http() -> None:
    traces = CallTraces()
    traces.record(INVITE, 99.0, outgoing=False, transport="udp", local=US, remote=PEER)
    traces.name("SCL_1", "a/b@host")
    trace = traces.capture_rtp("SCL_1", 99.0)
    assert trace is not None
    for i in range(600):  # enough to be written off the event loop
        rtp = bytes([0x80, 0]) + i.to_bytes(2, "big") + bytes(8) + bytes(160)
        traces.record_rtp(trace, rtp, 99.0 + i / 50, outgoing=True, local=US, remote=PEER)
    async with TestClient(TestServer(app_with(traces, {"SCL_1"}))) as client:
        response = await client.get("/sipbridge/v1/calls/a%2Fb%40host/trace", headers=admin())
        assert response.status == 200
        data = await response.json()
        assert data["call_id"] == "a/b@host" and data["names"] == ["SCL_1"]
        assert data["rtp_packets"] == 600

        response = await client.get("/sipbridge/v1/calls/SCL_1/pcap", headers=admin())
        assert response.status == 200
        assert response.content_type == "application/vnd.tcpdump.pcap"
        assert response.headers["Content-Disposition"] == 'attachment; filename="a_b_host.pcap"'
        packets = read_pcap(await response.read())
        assert len(packets) == 601 and packets[0].payload == INVITE

        response = await client.post("/sipbridge/v1/calls/SCL_1/rtp", headers=admin())
        assert response.status == 200
        assert await response.json() == {"call_id": "SCL_1", "rtp": "traced"}


async def test_refusals_have_twirp_codes() -> None:
    async with TestClient(TestServer(app_with(CallTraces(), set()))) as client:
        cases = [
            ("get", "/sipbridge/v1/calls/SCL_x/trace", {}, 401, "unauthenticated"),
            (
                "get",
                "/sipbridge/v1/calls/SCL_x/pcap",
                {"Authorization": "Bearer " + sign_token("key", KEYS["key"], sip={"call": True})},
                403,
                "permission_denied",
            ),
            ("get", "/sipbridge/v1/calls/SCL_x/trace", admin(), 404, "not_found"),
            ("get", "/sipbridge/v1/calls/SCL_x/pcap", admin(), 404, "not_found"),
            ("post", "/sipbridge/v1/calls/SCL_x/rtp", admin(), 404, "not_found"),
            (
                "get",
                "/sipbridge/v1/calls/" + "x" * 1100 + "/trace",
                admin(),
                400,
                "invalid_argument",
            ),
        ]
        for method, path, headers, status, code in cases:
            response = await client.request(method, path, headers=headers)
            assert response.status == status, path
            assert (await response.json())["code"] == code


async def test_no_traces_at_all_is_not_found() -> None:
    app = web.Application()
    TraceApi(lambda: None, KEYS, lambda: 0.0).routes(app)
    async with TestClient(TestServer(app)) as client:
        for method, what in (("get", "trace"), ("post", "rtp")):
            response = await client.request(
                method, f"/sipbridge/v1/calls/SCL_x/{what}", headers=admin()
            )
            assert response.status == 404
