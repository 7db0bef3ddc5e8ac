"""server/sip/udp_thread.py and `_csipthr.c`: the SIP UDP socket read on a C thread that answers
a new INVITE's 100 Trying itself. Its 100 is byte for byte the Python stack's, on every
datagram it answers (crafted, the fuzz corpora, seeded mutations); a fresh INVITE gets exactly
one 100 and its retransmission the transaction's last response; a source the admission control
refuses is not answered from the thread; hostile datagrams are counted, never crash; the thread
and its descriptors are gone once the service closes; without it, the datagram endpoint."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import random
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipbridge.server.sip import udp_thread
from sipbridge.server.sip.transport import Listen, SipService
from sipbridge.server.sip.udp_thread import ThreadedUdp, trying
from sipbridge.server.sip.user_agent import IncomingCall, SipUserAgent
from sipbridge.sip.admission import Admission
from sipbridge.sip.endpoint import EndpointSettings, Peer, RequestReceived, SipEndpoint
from sipbridge.sip.message import Response, parse_message
from tests.harness import eventually, sipp
from tests.sip_app import AnsweringApp, running_app

pytestmark = pytest.mark.skipif(not udp_thread.built(), reason="the reader thread is not built")

FUZZ = Path(__file__).resolve().parents[2] / "fuzz" / "corpus"
SERVER = EndpointSettings().user_agent


def invite(n: int, port: int, *, branch: str | None = None, extra: str = "") -> bytes:
    return (
        f"INVITE sip:service@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch={branch or f'z9hG4bK-thr-{n}'};rport\r\n"
        f"Max-Forwards: 70\r\n"
        f"From: <sip:tester@127.0.0.1>;tag=t{n}\r\n"
        f"To: <sip:service@127.0.0.1>\r\n"
        f"Call-ID: thr-{n}@127.0.0.1\r\n"
        f"CSeq: 1 INVITE\r\n"
        f"Contact: <sip:tester@127.0.0.1:{port}>\r\n"
        f"{extra}"
        f"Content-Length: 0\r\n\r\n"
    ).encode()


def python_trying(data: bytes, host: str, port: int) -> bytes | None:
    """The 100 the Python stack sends for `data` when the application is not at once."""
    endpoint = SipEndpoint(EndpointSettings())
    endpoint.receive(data, Peer("udp", host, port), 0.0)
    event = endpoint.next_event()
    if not isinstance(event, RequestReceived) or event.request.method != "INVITE":
        return None
    endpoint.send_trying(event.transaction, 0.0)
    out = endpoint.outgoing()
    return out[0][0] if out else None


def variants() -> Iterator[bytes]:
    base = invite(1, 5070)
    yield base
    yield base.replace(b";rport", b"")  # the same host: the Via copied as it came
    yield base.replace(b"127.0.0.1:5070;", b"10.1.2.3:5070;")  # received= added
    yield base.replace(b"Via: ", b"v: ").replace(b"From: ", b"f: ").replace(b"To: ", b"t: ")
    yield base.replace(b"Call-ID: ", b"i: ").replace(b"Content-Length: 0", b"l: 0")
    yield base.replace(b"Via: SIP", b"VIA:   SIP").replace(b"CSeq: 1 ", b"CSeq:  7   ")
    vias = "".join(f"Via: SIP/2.0/UDP 10.0.0.{i};branch=z9hG4bK{i}\r\n" for i in range(9))
    yield base.replace(b"Max-Forwards", (vias + "Max-Forwards").encode())  # 10 Via
    yield base.replace(b";rport", b";rport=1;received=1.2.3.4;x;y=z")
    yield base.replace(b"branch=z9hG4bK-thr-1", b"BRANCH=z9hG4bK-up")
    yield base.replace(b"Content-Length: 0\r\n\r\n", b"Content-Length: 4\r\n\r\nv=0\n")
    yield base.replace(b"127.0.0.1:5070", b"[::1]:5070")
    yield base.replace(b"To: <sip:service@127.0.0.1>", b'To: "A b" <sip:service@127.0.0.1>;x=y')


def corpus() -> Iterator[bytes]:
    for target in ("sip_message", "endpoint", "user_agent"):
        for path in sorted((FUZZ / target).iterdir()):
            yield from path.read_bytes().split(b"\x00\x00\x00\x00")


def mutations(count: int) -> Iterator[bytes]:
    rng = random.Random(18)
    seeds = list(variants())
    pieces = [b"\r\n", b" ", b"\t", b",", b";", b":", b"tag=", b"\x00", b"\xc2\xa0", b"=", b"\r"]
    for _ in range(count):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(data))
            kind = rng.randrange(3)
            if kind == 0:
                del data[at : at + rng.randint(1, 8)]
            elif kind == 1:
                data[at:at] = rng.choice(pieces)
            else:
                data[at] = rng.randrange(256)
        yield bytes(data)


def test_the_threads_100_is_the_python_stacks_byte_for_byte() -> None:
    answered = 0
    for host in ("127.0.0.1", "10.9.8.7", "::1"):
        for data in variants():
            ours = trying(data, host, 5999, SERVER)
            assert ours is not None, data
            assert ours == python_trying(data, host, 5999), data
            answered += 1
    assert answered == 36


def test_every_datagram_the_thread_answers_python_answers_the_same() -> None:
    answered = left = 0
    for data in [*corpus(), *mutations(3000)]:
        ours = trying(data, "127.0.0.1", 5070, SERVER)
        if ours is None:
            left += 1
            continue
        answered += 1
        assert ours == python_trying(data, "127.0.0.1", 5070), data
        assert isinstance(parse_message(ours), Response)
    assert answered > 300 and left > 300  # both kinds seen, not a test of nothing


def test_what_the_thread_leaves_to_python() -> None:
    base = invite(2, 5070)
    left = [
        base.replace(b"To: <sip:service@127.0.0.1>", b"To: <sip:service@127.0.0.1>;tag=1"),
        base.replace(b"INVITE sip", b"OPTIONS sip").replace(b"1 INVITE", b"1 OPTIONS"),
        base.replace(b"z9hG4bK-thr-2", b"old-branch"),  # RFC 2543
        base.replace(b";rport", b";rport,SIP/2.0/UDP 1.2.3.4"),  # a comma list
        base.replace(b"Max-Forwards: 70", b"Max-Forwards: 0"),
        base.replace(b"Max-Forwards: 70", b"Timestamp: 54"),
        base.replace(b"Max-Forwards: 70", b"Require: foo"),
        base.replace(b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\r\n folded\r\n"),
        base.replace(b"\r\n", b"\n"),
        base.replace(b"Call-ID", b"Call-ID: again\r\nCall-ID"),
        base.replace(b"Content-Length: 0", b"Content-Length: 40"),
        base.replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP"),
        base[:120],
        b"INVITE " + os.urandom(2000),
    ]
    for data in left:
        assert trying(data, "127.0.0.1", 5070, SERVER) is None, data


@pytest.fixture
def client() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    yield sock
    sock.close()


def drain(sock: socket.socket, into: list[bytes]) -> int:
    while True:
        try:
            into.append(sock.recv(65535))
        except BlockingIOError:
            return len(into)


def statuses(datagrams: list[bytes]) -> list[int]:
    out = []
    for data in datagrams:
        message = parse_message(data)
        assert isinstance(message, Response)
        out.append(message.status)
    return out


class SilentApp(AnsweringApp):
    """Keeps every INVITE unanswered: only the 100 goes out."""

    def _answer(self, call: object) -> None:
        return


async def test_a_fresh_invite_gets_one_100_from_the_thread_and_its_retransmission_the_same(
    client: socket.socket,
) -> None:
    app = SilentApp(deferred=True)
    async with running_app(app, ("udp",), threaded_udp=True, early_trying=True) as (service, port):
        assert isinstance(next(iter(service._udp.values())), ThreadedUdp)
        cport = client.getsockname()[1]
        data = invite(3, cport)
        client.sendto(data, ("127.0.0.1", port))
        got: list[bytes] = []
        await eventually(lambda: drain(client, got) >= 1, "the 100")
        await eventually(lambda: len(app.calls) == 1, "the call")
        assert got[0] == python_trying(data, "127.0.0.1", cport)
        await eventually(lambda: service.endpoint.stats["trying_early"] == 1, "it counted")
        await asyncio.sleep(0)  # (a turn of the loop: any second 100 would be sent now)
        client.sendto(data, ("127.0.0.1", port))  # the retransmission: the last response
        await eventually(lambda: drain(client, got) >= 2, "the retransmitted 100")
        await eventually(lambda: service.endpoint.stats["retransmissions"] == 1, "handled")
        drain(client, got)
        assert got == [got[0], got[0]]
        assert service.endpoint.stats["trying_early"] == 1


@pytest.mark.parametrize("send", ["batch", "thread", "each"])
async def test_an_invite_answered_at_once_gets_the_threads_100_then_180_and_200(
    send: str, client: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whichever way the loop's datagrams go out (udp_thread.SEND_ENV)."""
    monkeypatch.setenv(udp_thread.SEND_ENV, send)
    app = AnsweringApp()
    async with running_app(app, ("udp",), threaded_udp=True, early_trying=True) as (service, port):
        udp = next(iter(service._udp.values()))
        assert isinstance(udp, ThreadedUdp) and udp.send_mode == send
        for n in range(40):  # more than one drain
            client.sendto(invite(100 + n, client.getsockname()[1]), ("127.0.0.1", port))
        got: list[bytes] = []
        await eventually(lambda: drain(client, got) >= 120, "40 calls' 100, 180 and 200")
        codes = statuses(got)
        assert sorted(codes) == [100] * 40 + [180] * 40 + [200] * 40
        assert service.endpoint.stats["trying_early"] == 40


async def test_an_invite_answered_100_from_the_thread_is_never_dropped_for_a_full_queue(
    client: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst while the loop is busy fills the thread's queue: what does not fit is dropped
    and counted, and gets no 100 from the thread (a UAC stops retransmitting an INVITE once it
    has a 100, so one answered and then lost would wait for its Timer B: failed calls under
    load). Every 100 the caller gets is for an INVITE the application saw."""
    monkeypatch.setattr(udp_thread, "QUEUE", 64)  # (4096 in service: the same, smaller)
    app = SilentApp(deferred=True)
    async with running_app(app, ("udp",), threaded_udp=True, early_trying=True) as (service, port):
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        cport = client.getsockname()[1]
        stats = service.endpoint.stats
        sent = 400
        for n in range(sent):  # (the loop does not run meanwhile: the queue fills up)
            client.sendto(invite(700 + n, cport), ("127.0.0.1", port))
        await eventually(
            lambda: stats["received"] + stats["udp_queue_full"] == sent, "every INVITE read"
        )
        got: list[bytes] = []
        await eventually(lambda: drain(client, got) >= stats["received"], "a 100 each")
        await asyncio.sleep(0)  # (a turn of the loop: any other 100 would be sent now)
        drain(client, got)
        assert statuses(got) == [100] * len(got)
        answered = {message.call_id for message in map(parse_message, got)}
        assert len(answered) == len(got) == stats["received"] == len(app.calls)
        assert answered == {call.request.call_id for call in app.calls}
        assert stats["udp_queue_full"] > 0 and stats["trying_early"] > 0  # (both seen)


async def test_a_burst_of_invites_leaves_the_queue_room_for_the_rest(
    client: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """New INVITEs fill only half of the thread's queue: requests that complete calls under
    way (here OPTIONS, as ACK and BYE would) sent after a burst of them still reach the loop."""
    monkeypatch.setattr(udp_thread, "QUEUE", 64)
    app = SilentApp(deferred=True)
    async with running_app(app, ("udp",), threaded_udp=True) as (service, port):
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        cport = client.getsockname()[1]
        stats = service.endpoint.stats
        for n in range(300):  # (the loop does not run meanwhile: the queue fills up)
            client.sendto(invite(800 + n, cport), ("127.0.0.1", port))
        for n in range(20):
            client.sendto(
                invite(900 + n, cport)
                .replace(b"INVITE sip", b"OPTIONS sip")
                .replace(b"1 INVITE", b"1 OPTIONS"),
                ("127.0.0.1", port),
            )
        await eventually(
            lambda: stats["received"] + stats["udp_queue_full"] == 320, "every datagram read"
        )
        got: list[bytes] = []
        await eventually(lambda: drain(client, got) >= stats["received"], "every one answered")
        answered = {m.call_id for m in map(parse_message, got) if m.cseq.method == "OPTIONS"}
        assert answered == {f"thr-{900 + n}@127.0.0.1" for n in range(20)}
        assert stats["udp_queue_full"] > 0 and len(app.calls) < 300  # (it was full)


async def test_a_drain_rearms_the_timers_and_hands_its_sends_over_once(
    client: socket.socket,
) -> None:
    """What the loop takes from the thread's queue at once (up to DRAIN datagrams) is handled
    as one batch: the timers re-armed and the sends handed to the thread once at its end
    (`SipService.on_flushed`), not once a datagram; every datagram still answered."""
    app = SilentApp(deferred=True)
    async with running_app(app, ("udp",), threaded_udp=True) as (service, port):
        flushes: list[int] = []
        service.on_flushed.append(lambda: flushes.append(1))
        cport = client.getsockname()[1]
        stats = service.endpoint.stats
        sent = 64
        for n in range(sent):  # (the loop does not run meanwhile: all queued)
            client.sendto(
                invite(950 + n, cport)
                .replace(b"INVITE sip", b"OPTIONS sip")
                .replace(b"1 INVITE", b"1 OPTIONS"),
                ("127.0.0.1", port),
            )
        await eventually(lambda: stats["received"] == sent, "every datagram handled")
        got: list[bytes] = []
        await eventually(lambda: drain(client, got) >= sent, "every one answered")
        assert statuses(got) == [200] * sent
        assert 1 <= len(flushes) <= sent // 4  # (one a drain: 2 when all were queued)


async def test_a_source_the_admission_refuses_gets_no_100_from_the_thread(
    client: socket.socket,
) -> None:
    app = SilentApp(deferred=True)
    ua = SipUserAgent("127.0.0.1", 0, on_invite=app.on_invite)
    service = SipService(ua, admission=Admission(rate=0.001, burst=2, drop_after=40))
    service.threaded_udp = True
    service.early_trying = True
    ua.attach(service)
    bound = await service.listen(Listen("udp", "127.0.0.1", 0))
    try:
        cport = client.getsockname()[1]
        got: list[bytes] = []
        # The first INVITE: not known to pass yet, Python's own lazy 100 (none from the thread).
        client.sendto(invite(200, cport), ("127.0.0.1", bound.port))
        await eventually(lambda: drain(client, got) >= 1, "the first 100")
        assert service.endpoint.stats["trying_early"] == 0
        # Admitted: the next one from the thread.
        client.sendto(invite(201, cport), ("127.0.0.1", bound.port))
        await eventually(lambda: drain(client, got) >= 2, "the second 100")
        await eventually(lambda: service.endpoint.stats["trying_early"] == 1, "it counted")
        # Now over its burst: refused 503, then in debt dropped unanswered. The thread answers
        # no INVITE that Python drops: each of its 100s is for one Python admitted or refused.
        for n in range(120):
            client.sendto(invite(300 + n, cport), ("127.0.0.1", bound.port))
        await eventually(
            lambda: service.endpoint.stats["dropped_flood"] >= 60, "the flood to be dropped"
        )
        await eventually(lambda: service.endpoint.stats["received"] == 122, "all handled")
        drain(client, got)
        by_status: dict[int, set[str]] = {}
        for data in got:
            message = parse_message(data)
            assert isinstance(message, Response)
            by_status.setdefault(message.status, set()).add(message.call_id)
        refused = by_status[503]
        assert len(refused) == service.endpoint.stats["refused_flood"] >= 30
        assert by_status[100] <= refused | {"thr-200@127.0.0.1", "thr-201@127.0.0.1"}
        assert len(by_status[100]) == 1 + service.endpoint.stats["trying_early"] >= 3
        assert service.endpoint.stats["trying_early"] <= 1 + 40  # (drop_after)
    finally:
        await service.close()


async def test_hostile_datagrams_are_counted_and_the_next_invite_answered(
    client: socket.socket,
) -> None:
    app = AnsweringApp()
    async with running_app(app, ("udp",), threaded_udp=True, early_trying=True) as (service, port):
        cport = client.getsockname()[1]
        client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        vias = "".join(f"Via: SIP/2.0/UDP 10.0.0.{i};branch=z9hG4bK{i}\r\n" for i in range(10))
        hostile = [
            b"INVITE " + b"\xff" * 65000,  # huge and binary
            os.urandom(1400),
            invite(400, cport)[:90],  # truncated headers
            invite(401, cport).replace(b"Max-Forwards", (vias + "Max-Forwards").encode()),
            b"INVITE sip:x SIP/2.0\r\n" + b"Via: x\r\n" * 200 + b"\r\n",
            b"\r\n\r\n",
            b"",
        ]
        for data in hostile:
            client.sendto(data, ("127.0.0.1", port))
        client.sendto(invite(402, cport), ("127.0.0.1", port))
        await eventually(
            lambda: service.endpoint.stats["received"] >= len(hostile) + 1, "every datagram"
        )
        await eventually(lambda: len(app.calls) == 2, "the 10-Via INVITE and the last answered")
        assert service.endpoint.stats["malformed"] >= 3


class FailingApp(AnsweringApp):
    """Fails on one call (a bug in the application, raised out of the INVITE's handling)."""

    def on_invite(self, call: IncomingCall) -> None:
        if call.request.call_id.startswith("thr-1002@"):
            raise RuntimeError("a bug")
        super().on_invite(call)


async def test_a_datagram_whose_handling_fails_leaves_the_others_handled(
    client: socket.socket,
) -> None:
    """An application failing on one call leaves the rest of that drain, and the drains after
    it, handled (the thread wakes the loop only once it emptied the queue: a drain cut short
    that did not ask for the next would stop the socket for good). (The stack catches the
    application's error itself; `ThreadedUdp._readable` also guards against one below it.)"""
    app = FailingApp()
    async with running_app(app, ("udp",), threaded_udp=True) as (_, port):
        cport = client.getsockname()[1]
        for n in range(100):  # (the loop does not run meanwhile: several drains' worth)
            client.sendto(invite(1000 + n, cport), ("127.0.0.1", port))
        got: list[bytes] = []
        await eventually(lambda: drain(client, got) >= 99 * 2, "99 calls' 180 and 200")
        assert len(app.calls) == 99


def tasks_and_fds() -> tuple[int, int]:
    return len(os.listdir("/proc/self/task")), len(os.listdir("/proc/self/fd"))


async def test_the_thread_and_its_descriptors_go_when_the_service_closes() -> None:
    before = tasks_and_fds()
    for _ in range(3):
        async with running_app(AnsweringApp(), ("udp",), threaded_udp=True) as (_, _port):
            assert tasks_and_fds()[0] == before[0] + 1
            assert tasks_and_fds()[1] >= before[1] + 4  # the socket, three eventfds
    await eventually(lambda: tasks_and_fds() == before, "the thread and fds gone", timeout=3)


async def test_the_thread_by_default_unless_the_endpoint_is_asked_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(udp_thread.ENV, raising=False)
    monkeypatch.delenv(udp_thread.SEND_ENV, raising=False)
    assert SipService(lambda service, event: None).threaded_udp
    async with running_app(AnsweringApp(), ("udp",)) as (service, _port):
        udp = next(iter(service._udp.values()))
        assert isinstance(udp, ThreadedUdp) and udp.send_mode == "thread"  # (sends: the thread's)
    monkeypatch.setenv(udp_thread.ENV, "thread")
    assert SipService(lambda service, event: None).threaded_udp
    for other in ("endpoint", "batched"):
        monkeypatch.setenv(udp_thread.ENV, other)
        assert not SipService(lambda service, event: None).threaded_udp
    monkeypatch.setenv(udp_thread.ENV, "endpoint")
    async with running_app(AnsweringApp(), ("udp",)) as (service, _port):
        assert not isinstance(next(iter(service._udp.values())), ThreadedUdp)
    async with running_app(AnsweringApp(), ("udp",), threaded_udp=False) as (service, _port):
        assert not isinstance(next(iter(service._udp.values())), ThreadedUdp)


async def test_an_app_that_answers_at_once_gets_no_100_from_the_thread(
    client: socket.socket,
) -> None:
    """Without `early_trying` the thread only reads and sends: an INVITE answered within its
    handling gets 180 and 200 alone (the endpoint's lazy 100 superseded), one left unanswered
    the loop's 100, byte for byte the same."""
    app = AnsweringApp()
    async with running_app(app, ("udp",), threaded_udp=True) as (service, port):
        udp = next(iter(service._udp.values()))
        assert isinstance(udp, ThreadedUdp) and not udp.early_trying
        cport = client.getsockname()[1]
        for n in range(40):  # more than one drain
            client.sendto(invite(500 + n, cport), ("127.0.0.1", port))
        got: list[bytes] = []
        await eventually(lambda: drain(client, got) >= 80, "40 calls' 180 and 200")
        await eventually(lambda: service.endpoint.stats["received"] == 40, "all handled")
        drain(client, got)
        assert sorted(statuses(got)) == [180] * 40 + [200] * 40
        assert service.endpoint.stats["trying_early"] == 0
        assert service.endpoint.stats["trying_superseded"] == 40
    silent = SilentApp(deferred=True)
    async with running_app(silent, ("udp",), threaded_udp=True) as (service, port):
        data = invite(600, cport)
        client.sendto(data, ("127.0.0.1", port))
        got = []
        await eventually(lambda: drain(client, got) >= 1, "the loop's 100")
        assert got == [python_trying(data, "127.0.0.1", cport)]
        assert service.endpoint.stats["trying_early"] == 0


async def test_sipp_gets_the_threads_100_then_the_call_answered_later() -> None:
    """sipp's scenario expects the 100 first and fails on a missing or a second one."""
    app = AnsweringApp(deferred=True)
    async with running_app(app, ("udp",), threaded_udp=True, early_trying=True) as (service, port):
        done = await sipp("uac_trying.xml", port, calls=20, rate=50)
        await eventually(lambda: len(app.ended) >= 20, "the app to end the 20 calls", timeout=5)
    assert done.code == 0, done.out
    assert service.endpoint.stats["trying_early"] >= 19  # (the first may find it not admitted)


def test_the_allowance_the_admission_control_gives_the_thread() -> None:
    """At least as many requests as it then judges before it drops one unanswered."""
    admission = Admission(rate=1.0, burst=3, drop_after=5)
    assert admission.allowance("192.0.2.1", 0.0) == 3 + 5 - 1
    judged = 0
    while admission.admit("192.0.2.1", "INVITE", 0.0).name != "DROP":
        judged += 1
    assert judged >= 3 + 5 - 1 and admission.allowance("192.0.2.1", 0.0) == 0
    assert admission.allowance("192.0.2.1", 2.0) == 1  # (-5 tokens, 2 refilled, +5 -1)
    only = Admission(allow_from=[ipaddress.ip_network("10.0.0.0/8")])
    assert only.allowance("192.0.2.1", 0.0) == 0


async def test_a_node_refusing_new_calls_gets_no_100_from_the_thread(
    client: socket.socket,
) -> None:
    """A draining node 503s new INVITEs at once (`Server.start_draining`): the thread must not
    have sent a 100 before it. Here the app keeps INVITEs unanswered, so Python's own 100 shows
    which INVITEs reached it and `trying_early` which were answered from the thread."""
    app = SilentApp(deferred=True)
    async with running_app(app, ("udp",), threaded_udp=True, early_trying=True) as (service, port):
        cport = client.getsockname()[1]
        early = service.endpoint.stats

        async def call(n: int, *, calls: int) -> None:
            client.sendto(invite(n, cport), ("127.0.0.1", port))
            await eventually(lambda: len(app.calls) == calls, f"INVITE {n} handled")

        await call(400, calls=1)
        await eventually(lambda: early["trying_early"] == 1, "the thread's 100")
        service.refuse_new()
        await call(401, calls=2)
        await call(402, calls=3)
        assert early["trying_early"] == 1  # neither answered from the thread
        service.refuse_new(False)
        await call(403, calls=4)
        await eventually(lambda: early["trying_early"] == 2, "the thread answering again")
        got: list[bytes] = []
        await eventually(lambda: drain(client, got) >= 4, "a 100 for each INVITE")
        assert statuses(got) == [100] * 4
