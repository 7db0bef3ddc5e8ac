"""server/sip/udp.py: the SIP UDP socket read with recvmmsg and written with sendmmsg
(`_csipudp.c`) and the event loop's datagram endpoint it falls back to, side by side: the same
answers to the same datagrams, bursts longer than one batch, hostile datagrams counted."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from sipbridge.server.sip import udp, udp_thread
from sipbridge.server.sip.transport import SipService
from sipbridge.sip.endpoint import Peer
from sipbridge.sip.message import Request, parse_message
from tests.harness import eventually, sipp
from tests.sip_app import AnsweringApp, running_app

BATCHED = pytest.mark.skipif(not udp.built(), reason="batched UDP is not built")
BOTH = [
    pytest.param(True, id="batched", marks=BATCHED),
    pytest.param(False, id="datagram-endpoint"),
]


def first_udp(service: SipService) -> object:
    return next(iter(service._udp.values()))


def options(n: int, port: int) -> bytes:
    return (
        f"OPTIONS sip:service@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-burst-{n}\r\n"
        f"From: <sip:tester@127.0.0.1>;tag=t{n}\r\n"
        f"To: <sip:service@127.0.0.1>\r\n"
        f"Call-ID: burst-{n}@127.0.0.1\r\n"
        f"CSeq: 1 OPTIONS\r\n"
        f"Max-Forwards: 70\r\n"
        f"Content-Length: 0\r\n\r\n"
    ).encode()


@pytest.fixture
def clients() -> Iterator[list[socket.socket]]:
    socks = []
    for _ in range(3):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.setblocking(False)
        socks.append(sock)
    yield socks
    for sock in socks:
        sock.close()


def received(sock: socket.socket, into: list[bytes]) -> int:
    while True:
        try:
            into.append(sock.recv(65535))
        except BlockingIOError:
            return len(into)


def call_ids(datagrams: list[bytes]) -> set[str]:
    ids = set()
    for data in datagrams:
        message = parse_message(data)
        assert not isinstance(message, Request) and message.status == 200
        ids.add(message.call_id)
    return ids


@pytest.mark.parametrize("batched", BOTH)
async def test_a_burst_longer_than_a_batch_from_three_sources_is_answered_each_to_its_source(
    batched: bool, clients: list[socket.socket]
) -> None:
    async with running_app(AnsweringApp(), ("udp",), batched_udp=batched) as (service, port):
        assert isinstance(first_udp(service), udp.BatchedUdp) is batched
        sent: dict[int, set[str]] = {}
        for i, sock in enumerate(clients):
            own = sock.getsockname()[1]
            for n in range(i * 1000, i * 1000 + 70):  # > 2 recvmmsg batches of 32 each
                sock.sendto(options(n, own), ("127.0.0.1", port))
                sent.setdefault(i, set()).add(f"burst-{n}@127.0.0.1")
        got: list[list[bytes]] = [[] for _ in clients]
        await eventually(
            lambda: all(received(s, got[i]) >= 70 for i, s in enumerate(clients)),
            "every OPTIONS answered",
        )
        for i in range(len(clients)):
            assert call_ids(got[i]) == sent[i]
        assert service.endpoint.stats["received"] == 210


@pytest.mark.parametrize("batched", BOTH)
async def test_the_largest_datagram_of_garbage_is_counted_and_the_next_request_answered(
    batched: bool, clients: list[socket.socket]
) -> None:
    async with running_app(AnsweringApp(), ("udp",), batched_udp=batched) as (service, port):
        sock = clients[0]
        sock.sendto(b"\xff" * 65507, ("127.0.0.1", port))  # a UDP/IPv4 datagram's largest
        sock.sendto(options(1, sock.getsockname()[1]), ("127.0.0.1", port))
        got: list[bytes] = []
        await eventually(lambda: received(sock, got) >= 1, "the OPTIONS answered")
        assert call_ids(got) == {"burst-1@127.0.0.1"}
        assert service.endpoint.stats["malformed"] == 1


@BATCHED
async def test_a_datagram_longer_than_the_read_size_is_dropped_and_counted(
    clients: list[socket.socket],
) -> None:
    async with running_app(AnsweringApp(), ("udp",), batched_udp=True) as (service, port):
        reader = first_udp(service)
        assert isinstance(reader, udp.BatchedUdp)
        reader.read_size = 1000
        sock = clients[0]
        own = sock.getsockname()[1]
        long_options = options(2, own).replace(
            b"Max-Forwards", b"X-Pad: " + b"x" * 1200 + b"\r\nMax-Forwards"
        )
        sock.sendto(long_options, ("127.0.0.1", port))
        sock.sendto(options(3, own), ("127.0.0.1", port))
        got: list[bytes] = []
        await eventually(lambda: received(sock, got) >= 1, "the short OPTIONS answered")
        assert call_ids(got) == {"burst-3@127.0.0.1"}  # never the long one, cut short
        assert service.endpoint.stats["udp_oversized"] == 1
        assert service.endpoint.stats["received"] == 1


@pytest.mark.parametrize("batched", BOTH)
async def test_a_send_that_fails_is_counted_and_the_socket_goes_on(
    batched: bool, clients: list[socket.socket]
) -> None:
    async with running_app(AnsweringApp(), ("udp",), batched_udp=batched) as (service, port):
        request = parse_message(options(4, 9))
        assert isinstance(request, Request)
        service.endpoint.send_stateless(request, Peer("udp", "127.0.0.1", 0))  # EINVAL
        service.after_application()
        await eventually(lambda: service.endpoint.stats["udp_error"] >= 1, "the error counted")
        sock = clients[0]
        sock.sendto(options(5, sock.getsockname()[1]), ("127.0.0.1", port))
        got: list[bytes] = []
        await eventually(lambda: received(sock, got) >= 1, "the OPTIONS answered")
        assert call_ids(got) == {"burst-5@127.0.0.1"}


async def test_the_datagram_endpoint_unless_batched_is_asked_for_and_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(udp.ENV, raising=False)
    assert not udp.available()  # the default
    assert not SipService(lambda service, event: None).batched_udp
    async with running_app(AnsweringApp(), ("udp",)) as (service, _):
        assert not isinstance(first_udp(service), udp.BatchedUdp)
    monkeypatch.setenv(udp.ENV, "batched")
    assert udp.available() == udp.built()
    assert SipService(lambda service, event: None).batched_udp == udp.built()
    monkeypatch.setattr(udp, "_csipudp", None)  # as when it was not built
    assert not udp.available()


async def test_the_datagram_endpoint_answers_where_the_reader_thread_is_not_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The reader thread is the default only where `_csipthr` is built: without it, the event
    loop's datagram endpoint, answering calls as ever."""
    monkeypatch.delenv(udp.ENV, raising=False)
    monkeypatch.setattr(udp_thread, "_csipthr", None)  # as when it was not built
    assert not udp_thread.available()
    app = AnsweringApp()
    async with running_app(app, ("udp",)) as (service, port):
        assert not service.threaded_udp
        assert not isinstance(first_udp(service), (udp.BatchedUdp, udp_thread.ThreadedUdp))
        done = await sipp("uac_no_trying.xml", port, calls=3, rate=20)
        await eventually(lambda: len(app.ended) >= 3, "the app to end the 3 calls", timeout=3)
    assert done.code == 0, done.out


@BATCHED
async def test_closing_the_service_closes_the_batched_socket() -> None:
    async with running_app(AnsweringApp(), ("udp",), batched_udp=True) as (service, _):
        reader = first_udp(service)
        assert isinstance(reader, udp.BatchedUdp)
    assert reader.sock.fileno() == -1
    assert reader.flush not in service.on_flushed
