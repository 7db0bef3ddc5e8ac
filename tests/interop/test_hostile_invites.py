"""A SIP port on the internet (issue 17): INVITEs that cannot make a dialog never take a call
slot, one identity never belongs to two live calls, password guessing is blocked, and a scanner
cannot tell which numbers exist.

Against a real `sipbridge serve`: hand-written INVITEs over UDP for the malformed cases (what a
fuzzer or a scanner sends), real `sipp` callers for the duplicate identity, a signalling client
taking a phone's identity, the official `livekit-api` client and `/metrics` to read the result.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import shutil

import pytest
from google.protobuf.duration_pb2 import Duration
from livekit import api
from livekit.protocol import models, room, sip

from tests.helpers import ServerProcess
from tests.interop.test_inbound import CALLED, CALLER, client
from tests.interop.test_inbound_cases import (
    SDP,
    ServerFactory,
    digest_credentials,
    direct,
    dispatch_rule,
    eventually,
    finished,
    header_of,
    inbound_trunk,
    logged_call,
    options,
    ringing,
    serve,  # noqa: F401 - the fixture
    shared_server,  # noqa: F401 - the fixture: this module's server for tests without flags
    sip_participants,
    sipp_task,
    status_of,
    subscribe,
    udp_caller,
)
from tests.interop.test_inbound_cases import invite as numbered_invite
from tests.signal_client import SignalClient

pytestmark = pytest.mark.skipif(
    not (shutil.which("sipp") and shutil.which("timeout")), reason="sipp comes with `make test`"
)

DUPLICATE = models.DisconnectReason.DUPLICATE_IDENTITY


def raw_invite(port: int, *, drop: tuple[str, ...] = (), extra: tuple[str, ...] = ()) -> bytes:
    """An INVITE as a caller would send it, less the headers named in `drop` (lowercase) and
    with the lines of `extra` added: the way each malformed case below is made."""
    call_id = f"hostile-{secrets.token_hex(6)}@127.0.0.1"
    lines = {
        "via": f"Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK{secrets.token_hex(6)};rport",
        "from": f"From: <sip:{CALLER}@127.0.0.1>;tag=h{secrets.token_hex(4)}",
        "to": f"To: <sip:{CALLED}@127.0.0.1>",
        "call-id": f"Call-ID: {call_id}",
        "cseq": "CSeq: 1 INVITE",
        "contact": "Contact: <sip:caller@127.0.0.1:5999>",
        "max-forwards": "Max-Forwards: 70",
    }
    head = [f"INVITE sip:{CALLED}@127.0.0.1:{port} SIP/2.0"]
    head += [line for name, line in lines.items() if name not in drop]
    head += [*extra, "Content-Type: application/sdp", f"Content-Length: {len(SDP)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + SDP


# case -> (headers dropped, lines added): each cannot make a dialog (RFC 3261 s12.1.1)
MALFORMED: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "no Contact": (("contact",), ()),
    "Contact: *": (("contact",), ("Contact: *",)),
    "malformed Contact": (("contact",), ("Contact: <sip:caller@127.0.0.1:5999",)),
    "Contact with no SIP URI": (("contact",), ("Contact: <tel:+15550001>",)),
    "two Contacts": (("contact",), ("Contact: <sip:a@127.0.0.1>", "Contact: <sip:b@127.0.0.1>")),
    "From without a tag": (("from",), (f"From: <sip:{CALLER}@127.0.0.1>",)),
    "From with an empty tag": (("from",), (f"From: <sip:{CALLER}@127.0.0.1>;tag=",)),
    "malformed Record-Route": ((), ("Record-Route: <sip:proxy.example;lr",)),
    "Record-Route with no SIP URI": ((), ("Record-Route: <tel:+15550002>",)),
    "malformed To": (("to",), ("To: <sip:nowhere",)),
    "malformed CSeq": (("cseq",), ("CSeq: one INVITE",)),
    "malformed Max-Forwards": (("max-forwards",), ("Max-Forwards: many",)),
}


async def metric(server: ServerProcess, name: str) -> float:
    return (await asyncio.to_thread(server.metrics)).get(name, 0.0)


async def calls(server: ServerProcess) -> tuple[float, float]:
    """(calls in progress, stuck calls) as /metrics shows them."""
    got = await asyncio.to_thread(server.metrics)
    return got.get("sipbridge_calls_active", 0.0), got.get("sipbridge_calls_stuck", 0.0)


async def ringing_room(lk: api.LiveKitAPI, room_name: str) -> None:
    """A trunk and a direct rule that would take any call into `room_name`, ringing 30 s."""
    await inbound_trunk(lk, ringing_timeout=Duration(seconds=30))
    await dispatch_rule(lk, direct(room_name))


async def test_invites_that_cannot_make_a_dialog_get_400_and_hold_no_slot(
    serve: ServerFactory,  # noqa: F811
) -> None:
    server = await serve("--max-calls", "2")
    port = server.sip_port  # type: ignore[attr-defined]
    async with client(server) as lk, udp_caller(port) as caller:
        await ringing_room(lk, "hostile")
        for case, (drop, extra) in MALFORMED.items():
            for _ in range(2):  # more of them than --max-calls allows calls
                got = await caller.responses(raw_invite(port, drop=drop, extra=extra))
                assert got, f"{case}: no answer at all"
                final = got[-1]
                first_line = final.split(b"\r\n", 1)[0]
                # A fixed reason phrase: nothing of the request is echoed back.
                assert first_line == b"SIP/2.0 400 Bad Request", (case, first_line)
                assert [status_of(r) for r in got if status_of(r) >= 180] == [400], (case, got)
            assert await sip_participants(lk, "hostile") == [], case
            assert await calls(server) == (0, 0), case

        # Every slot is still free: a good INVITE rings (not 503) and takes one.
        good = raw_invite(port)
        got = await caller.responses(good, until=180)
        assert [status_of(r) for r in got][-1] == 180, got
        assert await calls(server) == (1, 0)
        # RemoveParticipant ends it: the slot comes back.
        (p,) = await sip_participants(lk, "hostile")
        await lk.room.remove_participant(
            room.RoomParticipantIdentity(room="hostile", identity=p.identity)
        )
        await eventually(lambda: _no_calls(server), "the ringing call to end")
        pong = await caller.responses(options(port))
        assert pong and status_of(pong[-1]) == 200, pong
    assert "room event listener failed" not in server.log.read_text()


async def _status(lk: api.LiveKitAPI, room_name: str, status: str) -> bool:
    found = await sip_participants(lk, room_name)
    return bool(found) and all(p.attributes["sip.callStatus"] == status for p in found)


async def _no_calls(server: ServerProcess) -> bool:
    return await calls(server) == (0, 0)


async def test_a_second_call_with_the_same_identity_ends_the_first(
    serve: ServerFactory,  # noqa: F811
) -> None:
    """Two callers behind one number into one room: the first is hung up with BYE and leaves
    as DUPLICATE_IDENTITY (as LiveKit's server treats a duplicate identity); the second holds
    the identity, active, with its own call id; nothing is left behind."""
    server = await serve()
    duplicates = 'sipbridge_inbound_total{outcome="duplicate_identity"}'
    duplicates_before = await metric(server, duplicates)  # (the server is the module's)
    async with client(server) as lk:
        await ringing_room(lk, "company")
        other = sipp_task(server, "uac_inbound.xml", caller="+15550012", hold_ms=6000)
        await ringing(lk, "company", other)
        first = sipp_task(server, "uac_hung_up.xml", caller="+15550011")

        async def active(identity: str, not_call: str = "") -> models.ParticipantInfo | None:
            for p in await sip_participants(lk, "company"):
                if (
                    p.identity == identity
                    and p.attributes["sip.callStatus"] == "active"
                    and p.attributes["sip.callID"] != not_call
                ):
                    return p
            return None

        was = await eventually(lambda: active("sip_+15550011"), "the first caller answered")
        assert await calls(server) == (2, 0)

        second = sipp_task(server, "uac_inbound.xml", caller="+15550011", hold_ms=1500)
        await finished(first)  # it got our BYE and answered it
        now = await eventually(
            lambda: active("sip_+15550011", not_call=was.attributes["sip.callID"]),
            "the second caller to hold the identity",
        )
        assert now.sid != was.sid
        identities = sorted(p.identity for p in await sip_participants(lk, "company"))
        assert identities == ["sip_+15550011", "sip_+15550012"]
        assert await calls(server) == (2, 0)
        entry = await logged_call(server, was.attributes["sip.callID"])
        assert entry["disconnect_reason"] == "DUPLICATE_IDENTITY", entry

        await finished(second)
        await finished(other)
        await eventually(lambda: _no_calls(server), "every call to end")
        assert await sip_participants(lk, "company") == []
    assert await metric(server, duplicates) - duplicates_before == 1


async def test_a_client_taking_a_phones_identity_hangs_the_phone_up(
    serve: ServerFactory,  # noqa: F811
) -> None:
    server = await serve()
    async with client(server) as lk:
        await ringing_room(lk, "taken")
        phone = sipp_task(server, "uac_hung_up.xml")
        p = await ringing(lk, "taken", phone)
        async with SignalClient(server.url, "taken", "agent"):
            await subscribe(lk, "taken", "agent", p.tracks[0].sid)  # answers the phone
            await eventually(lambda: _status(lk, "taken", "active"), "the phone answered")
            async with SignalClient(server.url, "taken", p.identity):
                await finished(phone)  # the phone got our BYE
                await eventually(lambda: _no_calls(server), "the phone's call to end")
                listed = await lk.room.list_participants(room.ListParticipantsRequest(room="taken"))
                assert sorted((q.identity, q.kind) for q in listed.participants) == [
                    ("agent", models.ParticipantInfo.Kind.STANDARD),
                    (p.identity, models.ParticipantInfo.Kind.STANDARD),
                ]
        entry = await logged_call(server, p.attributes["sip.callID"])
        assert entry["disconnect_reason"] == "DUPLICATE_IDENTITY", entry


async def test_a_call_limit_counts_both_directions_and_pin_entry(
    serve: ServerFactory,  # noqa: F811
) -> None:
    """`--max-calls 1`: a caller entering a PIN holds the only slot; the next INVITE is 503
    and CreateSIPParticipant is refused."""
    server = await serve("--max-calls", "1")
    port = server.sip_port  # type: ignore[attr-defined]
    async with client(server) as lk, udp_caller(port) as caller:
        await inbound_trunk(lk)
        await dispatch_rule(
            lk,
            sip.SIPDispatchRule(
                dispatch_rule_direct=sip.SIPDispatchRuleDirect(room_name="locked", pin="1234")
            ),
        )
        got = await caller.responses(raw_invite(port))  # answered: the PIN prompt plays
        assert status_of(got[-1]) == 200, got
        assert await calls(server) == (1, 0)
        refused = await caller.responses(raw_invite(port))
        assert status_of(refused[-1]) == 503, refused
        trunk = await lk.sip.create_outbound_trunk(
            sip.CreateSIPOutboundTrunkRequest(
                trunk=sip.SIPOutboundTrunkInfo(
                    name="out", address="127.0.0.1:9", numbers=["+15550100"]
                )
            )
        )
        with pytest.raises(api.TwirpError) as err:
            await lk.sip.create_sip_participant(
                sip.CreateSIPParticipantRequest(
                    sip_trunk_id=trunk.sip_trunk_id, sip_call_to="+15550199", room_name="out"
                )
            )
        assert err.value.code == "resource_exhausted"


async def challenge_of(caller: object, request: bytes) -> str | None:
    """The Proxy-Authenticate of the answer to `request`, None when it is refused unchallenged."""
    replies = await caller.responses(request)  # type: ignore[attr-defined]
    assert replies, "no answer"
    final = replies[-1]
    if status_of(final) == 407:
        return header_of(final, "Proxy-Authenticate")
    assert status_of(final) == 403, final
    assert header_of(final, "Proxy-Authenticate") is None, final
    return None


async def test_password_guessing_is_blocked_and_even_the_right_one_refused(
    serve: ServerFactory,  # noqa: F811
) -> None:
    """500 wrong passwords from one address: each challenge is good for one guess (a wrong
    answer spends its nonce), the 10th failure blocks the address (403 without a challenge, even
    for the right password), and the block is temporary."""
    server = await serve("--auth-block", "1", "--sip-rate", "1000000")  # (guessing, not flooding)
    port = server.sip_port  # type: ignore[attr-defined]
    uri = f"sip:{CALLED}@127.0.0.1:{port}"
    async with client(server) as lk, udp_caller(port) as caller:
        await inbound_trunk(lk, auth_username="carrier", auth_password="right-pass")
        await dispatch_rule(lk, direct("vault"))

        def attempt(n: int, challenge: str | None, password: str) -> bytes:
            """INVITE number `n`, with credentials when `challenge` is given (its own branch and
            Call-ID either way: a retransmission would be absorbed, not answered anew)."""
            n = n * 2 + (challenge is not None)
            extra = b""
            if challenge is not None:
                credentials = digest_credentials(
                    challenge, username="carrier", password=password, uri=uri
                )
                extra = f"Proxy-Authorization: {credentials}\r\n".encode()
            return numbered_invite(
                port,
                call_id=f"guess-{n}@127.0.0.1",
                from_tag=f"g{n}",
                branch=f"z9hG4bKguess{n}",
                extra=extra,
            )

        challenge = await challenge_of(caller, attempt(0, None, ""))
        assert challenge is not None
        # A wrong answer spends the nonce: the same nonce with the right password is refused.
        assert await challenge_of(caller, attempt(1, challenge, "guess-1")) is None
        spent = await challenge_of(caller, attempt(2, challenge, "right-pass"))
        assert spent is not None and "stale" not in spent.lower()  # a fresh challenge
        blocked_at = None
        for n in range(3, 503):
            fresh = await challenge_of(caller, attempt(n, None, ""))
            if fresh is None:
                blocked_at = blocked_at or n
                await challenge_of(caller, attempt(n, challenge, f"guess-{n}"))  # refused too
                continue
            challenge = fresh
            assert await challenge_of(caller, attempt(n, challenge, f"guess-{n}")) is None
        assert blocked_at is not None and blocked_at < 20, blocked_at
        # Blocked: the right password is refused without a challenge.
        assert await challenge_of(caller, attempt(600, challenge, "right-pass")) is None
        assert await metric(server, "sipbridge_auth_blocks_total") >= 1
        assert await metric(server, "sipbridge_auth_blocked_sources") == 1
        assert await metric(server, "sipbridge_auth_refused_while_blocked_total") > 400
        assert "blocked for" in server.log.read_text()
        assert await sip_participants(lk, "vault") == []

        tries = itertools.count(700)

        async def let_in() -> bool:
            n = next(tries)
            fresh = await challenge_of(caller, attempt(n, None, ""))
            if fresh is None:
                return False
            request = attempt(n, fresh, "right-pass")
            replies = await caller.responses(request, until=180)
            return bool(replies) and status_of(replies[-1]) == 180

        # Blocks double while the guessing goes on (1 s, 2 s, 4 s...): the last one ends too.
        await eventually(let_in, "the block to end", timeout=40)
        assert [p.identity for p in await sip_participants(lk, "vault")] == [f"sip_{CALLER}"]


@pytest.mark.parametrize(
    ("flags", "unknown_first", "unknown_then"),
    [((), 407, 403), (("--reveal-numbers",), 404, 404)],
    ids=["concealed", "revealed"],
)
async def test_a_scanner_cannot_tell_which_numbers_exist(
    serve: ServerFactory,  # noqa: F811
    flags: tuple[str, ...],
    unknown_first: int,
    unknown_then: int,
) -> None:
    """Where a trunk asks for passwords, a number no trunk has is challenged and refused just
    like a wrong password; `--reveal-numbers` answers 404 instead."""
    server = await serve(*flags)
    port = server.sip_port  # type: ignore[attr-defined]
    async with client(server) as lk, udp_caller(port) as caller:
        await inbound_trunk(lk, auth_username="carrier", auth_password="right-pass")
        await dispatch_rule(lk, direct("vault"))
        statuses = {}
        for called in (CALLED, "+15105559999"):
            request = raw_invite(port).replace(CALLED.encode(), called.encode())
            replies = await caller.responses(request)
            first = status_of(replies[-1])
            challenge = header_of(replies[-1], "Proxy-Authenticate")
            then = first
            if challenge is not None:
                uri = f"sip:{called}@127.0.0.1:{port}"
                credentials = digest_credentials(
                    challenge, username="carrier", password="wrong", uri=uri
                )
                retry = request.replace(
                    b"Max-Forwards: 70\r\n",
                    f"Max-Forwards: 70\r\nProxy-Authorization: {credentials}\r\n".encode(),
                ).replace(b"CSeq: 1 INVITE", b"CSeq: 2 INVITE")
                retry = retry.replace(b"branch=z9hG4bK", b"branch=z9hG4bKr")
                then = status_of((await caller.responses(retry))[-1])
            statuses[called] = (first, then)
        assert statuses[CALLED] == (407, 403), statuses
        assert statuses["+15105559999"] == (unknown_first, unknown_then), (flags, statuses)


def options_from(port: int, source: str, call_id: str) -> bytes | None:
    """An OPTIONS from `source` (one of our loopback addresses); its answer, or None."""
    import socket  # noqa: PLC0415

    request = (
        f"OPTIONS sip:ping@127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {source}:5999;branch=z9hG4bK{call_id};rport\r\n"
        f"From: <sip:monitor@{source}>;tag=p\r\nTo: <sip:ping@127.0.0.1>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.settimeout(1.0)
        sock.sendto(request, ("127.0.0.1", port))
        try:
            return sock.recv(65535)
        except TimeoutError:
            return None


async def test_a_flood_from_one_address_is_refused_then_ignored(
    serve: ServerFactory,  # noqa: F811
) -> None:
    """3,000 INVITEs as fast as one address can send them: the first ones (the burst) are
    taken, then 503 with Retry-After, then no answer at all; another address is served at once
    meanwhile, and the flooding one again once it stops."""
    import socket  # noqa: PLC0415

    server = await serve("--sip-rate", "50")
    port = server.sip_port  # type: ignore[attr-defined]
    async with client(server) as lk:
        await ringing_room(lk, "flooded")

    def flood() -> dict[int, int]:
        statuses: dict[int, int] = {}
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
            for _ in range(3000):
                request = raw_invite(port, drop=("to",), extra=("To: <sip:+19990000000@x>",))
                sock.sendto(request, ("127.0.0.1", port))
            sock.settimeout(1.0)
            while True:
                try:
                    reply = sock.recv(65535)
                except TimeoutError:
                    return statuses
                status = status_of(reply)
                if status >= 200:
                    statuses[status] = statuses.get(status, 0) + 1
                    if status == 503:
                        assert header_of(reply, "Retry-After") == "5", reply

    statuses = await asyncio.to_thread(flood)
    answered = sum(statuses.values())
    assert statuses.get(503, 0) > 0 and answered < 3000 - 1000, statuses
    assert await metric(server, 'sipbridge_sip_messages_total{kind="dropped_flood"}') > 1000
    pong = await asyncio.to_thread(options_from, port, "127.0.0.2", "other-source")
    assert pong is not None and status_of(pong) == 200, pong

    async def served_again() -> bool:
        reply = await asyncio.to_thread(options_from, port, "127.0.0.1", secrets.token_hex(4))
        return reply is not None and status_of(reply) == 200

    await eventually(served_again, "the flooding address to be served again")


async def test_allow_from_drops_everyone_else(serve: ServerFactory) -> None:  # noqa: F811
    server = await serve("--allow-from", "127.0.0.2/32")
    port = server.sip_port  # type: ignore[attr-defined]
    assert await asyncio.to_thread(options_from, port, "127.0.0.3", "stranger") is None
    pong = await asyncio.to_thread(options_from, port, "127.0.0.2", "friend")
    assert pong is not None and status_of(pong) == 200, pong
    assert await metric(server, 'sipbridge_sip_messages_total{kind="dropped_not_allowed"}') == 1


async def test_a_room_takes_at_most_its_cap_of_callers(serve: ServerFactory) -> None:  # noqa: F811
    server = await serve("--room-max-callers", "1")
    port = server.sip_port  # type: ignore[attr-defined]
    async with client(server) as lk, udp_caller(port) as caller:
        await ringing_room(lk, "small")
        first = await caller.responses(raw_invite(port), until=180)
        assert status_of(first[-1]) == 180, first
        other = raw_invite(port).replace(CALLER.encode(), b"+15550999")
        refused = await caller.responses(other)
        assert status_of(refused[-1]) == 486, refused
        assert len(await sip_participants(lk, "small")) == 1
    assert await metric(server, 'sipbridge_inbound_total{outcome="room_full_of_callers"}') == 1


async def test_calls_joining_one_room_are_paced(serve: ServerFactory) -> None:  # noqa: F811
    """`--room-join-rate 1`: of three calls sent at once, two may join (the burst) and the third
    is refused 486 - a flood into a room that holds a caller costs the room nothing. (Sent
    together, not one after another's 180: on a busy machine three joins in a row can take a
    second, in which the bucket earns the third its place.)"""
    server = await serve("--room-join-rate", "1")
    port = server.sip_port  # type: ignore[attr-defined]

    async def call(number: str) -> int:
        async with udp_caller(port) as caller:
            request = raw_invite(port).replace(CALLER.encode(), number.encode())
            replies = await caller.responses(request, until=180)
            return status_of(replies[-1])

    async with client(server) as lk:
        await ringing_room(lk, "paced")
        finals = await asyncio.gather(*(call(n) for n in ("+15550101", "+15550102", "+15550103")))
        assert sorted(finals) == [180, 180, 486], finals
    assert await metric(server, 'sipbridge_inbound_total{outcome="room_join_rate"}') == 1
