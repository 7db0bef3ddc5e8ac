"""Hostile signalling input on `/rtc/v1` and `/rtc`: each refused with the protocol's own answer
or a logged refusal, the room and the server unharmed, nothing leaked (the issues' bad-input
lists for WebRTC): unusable offers, garbage frames, oversized frames; an offer of a connection
not negotiated, a second offer while one is pending, an answer with no offer, trickles for an
unknown target or a connection not made, a client that never answers the subscriber offer."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aioice.ice
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from livekit import api
from livekit.protocol import models, room, rtc

from sipbridge.server.rtc.aiortc_patches import restrict_host_addresses
from sipbridge.server.rtc.session_media import ANSWER_TIMEOUT_S
from tests.harness import eventually, module_server
from tests.helpers import API_KEY, API_SECRET, ServerProcess
from tests.signal_client import PeerClient, SignalClient


async def identities(lk: api.LiveKitAPI, name: str) -> set[str]:
    listed = await lk.room.list_participants(room.ListParticipantsRequest(room=name))
    return {p.identity for p in listed.participants}


async def test_an_unusable_offer_gets_a_leave_and_others_stay(
    server: ServerProcess, lk: api.LiveKitAPI
) -> None:
    async with SignalClient(server.url, "bad", "steady"):
        mallory = SignalClient(server.url, "bad", "mallory")
        offer = rtc.SessionDescription(type="offer", sdp="v=0\r\nthis is no sdp\r\n", id=1)
        first = await mallory.open(rtc.JoinRequest(publisher_offer=offer), 5.0)
        assert first.WhichOneof("message") == "join"
        leave = await mallory.wait_for("leave")
        assert leave.leave.reason == models.DisconnectReason.SIGNAL_CLOSE
        await mallory.drop()

        async def mallory_gone() -> bool:
            return "mallory" not in await identities(lk, "bad")

        await eventually(mallory_gone, "mallory to leave", timeout=5)
        assert await identities(lk, "bad") == {"steady"}


async def test_garbage_frames_are_ignored_and_data_to_nobody_is_harmless(
    server: ServerProcess, lk: api.LiveKitAPI
) -> None:
    async with SignalClient(server.url, "noise", "alice") as alice:
        assert alice.ws is not None
        await alice.ws.send_bytes(b"\xff\x00garbage\x13")
        await alice.ws.send_str("not protobuf either")
        await alice.send(rtc.SignalRequest(ping_req=rtc.Ping(timestamp=9)))
        assert (await alice.wait_for("pong_resp")).pong_resp.last_ping_timestamp == 9
        # SendData to identities that are not in the room: accepted, delivered to no one
        await lk.room.send_data(
            room.SendDataRequest(
                room="noise",
                data=b"x",
                kind=models.DataPacket.Kind.RELIABLE,
                destination_identities=["ghost"],
            )
        )
        assert await identities(lk, "noise") == {"alice"}


async def test_an_oversized_frame_closes_only_that_connection(
    server: ServerProcess, lk: api.LiveKitAPI
) -> None:
    async with SignalClient(server.url, "big", "steady"):
        bulky = SignalClient(server.url, "big", "bulky")
        await bulky.connect()
        assert bulky.ws is not None
        try:
            # The server may close the connection while the frame is still being written (it
            # refuses it from its header): then the send itself fails, which is the point.
            with contextlib.suppress(ConnectionError):
                await bulky.ws.send_bytes(b"\x00" * (2 * 1024 * 1024))
            ws = bulky.ws
            await eventually(
                lambda: ws.closed, "the oversized frame's connection to close", timeout=5
            )
            assert bulky.ws.closed
        finally:
            await bulky.drop()
        assert "steady" in await identities(lk, "big")


# -- negotiation gone wrong (single-PC and two-PC, with real aiortc peer connections) -------


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the negotiation cases (its WebRTC on loopback)."""
    yield from module_server(tmp_path_factory, "rtc_bad_negotiation")


@pytest.fixture
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's aiortc gathers on loopback, where the server's WebRTC is."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", aioice.ice.get_host_addresses)
    restrict_host_addresses(["127.0.0.1"])


@pytest.fixture
async def shared_lk(shared: ServerProcess) -> AsyncIterator[api.LiveKitAPI]:
    async with api.LiveKitAPI(shared.url, API_KEY, API_SECRET) as client:
        yield client


def udp_sockets(server: ServerProcess) -> int:
    """UDP sockets the server process holds (its ICE sockets among them)."""
    assert server.proc is not None
    udp = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            udp.add(line.split()[9])  # the inode
    fds = Path(f"/proc/{server.proc.pid}/fd")
    held = 0
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:[") and target[8:-1] in udp:
                held += 1
    return held


async def logged(server: ServerProcess, line: str) -> None:
    await eventually(lambda: line in server.log.read_text(), f"{line!r} in the server's log")


async def test_an_offer_of_a_connection_not_negotiated_gets_a_leave(
    shared: ServerProcess, shared_lk: api.LiveKitAPI, loopback_only: None
) -> None:
    """A re-offer from another peer connection (another DTLS fingerprint) than the one
    negotiated: aiortc cannot follow it; the client is told (STATE_MISMATCH) and leaves, its
    sockets are closed, the room goes on."""
    baseline = udp_sockets(shared)
    async with SignalClient(shared.url, "foreign", "steady"):
        mallory = PeerClient(shared.url, "foreign", "mallory")
        stranger = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            await mallory.connect()
            await eventually(lambda: mallory.answered_ids == [1], "mallory's answer")
            stranger.addTransceiver("audio", direction="recvonly")
            await stranger.setLocalDescription(await stranger.createOffer())
            offer = rtc.SessionDescription(type="offer", sdp=stranger.localDescription.sdp, id=2)
            await mallory.send(rtc.SignalRequest(offer=offer))
            leave = await mallory.wait_for("leave")
            assert leave.leave.reason == models.DisconnectReason.STATE_MISMATCH
        finally:
            await mallory.drop()
            await mallory.stop()
            await stranger.close()
        await logged(shared, "signal mallory: offer: a description of a peer connection not")

        async def mallory_gone() -> bool:
            return "mallory" not in await identities(shared_lk, "foreign")

        await eventually(mallory_gone, "mallory to leave")
        await eventually(lambda: udp_sockets(shared) == baseline, "mallory's sockets closed")
        assert await identities(shared_lk, "foreign") == {"steady"}


async def test_offers_while_one_is_pending_only_the_newest_waiting_is_answered(
    shared: ServerProcess, shared_lk: api.LiveKitAPI, loopback_only: None
) -> None:
    """Offers back to back (glare on the client's connection): one being answered is answered,
    those a newer offer overtook while they waited are refused (logged), the newest is answered
    last and the connection comes up on it."""
    alice = PeerClient(shared.url, "glare", "alice", defer_offer=True)
    try:
        await alice.connect()
        await eventually(lambda: alice.answered_ids == [1], "the first answer")
        alice.prepare_receivers(1)
        offer = await alice.local_offer()  # id 2, then the same again as 3 and 4
        alice.offer_id = 4
        for offer_id in (2, 3, 4):
            again = rtc.SessionDescription(type="offer", sdp=offer.sdp, id=offer_id)
            await alice.send(rtc.SignalRequest(offer=again))
        await eventually(lambda: alice.answered_ids == [1, 4], "the answer to the newest offer")
        answers = [m.answer.id for m in alice.log if m.WhichOneof("message") == "answer"]
        # each offer is answered when its answering began before a newer one came, else
        # overtaken; the three came within a millisecond, an answer takes longer
        assert answers[0] == 1 and answers[-1] == 4 and answers == sorted(set(answers)), answers
        overtaken = {2, 3} - set(answers)
        assert overtaken, answers
        for offer_id in overtaken:
            await logged(shared, f"signal alice: offer {offer_id} refused: overtaken by a newer")
        await eventually(lambda: alice.publisher.connectionState == "connected", "connected")
        assert await identities(shared_lk, "glare") == {"alice"}
    finally:
        await alice.close()


async def test_an_answer_with_no_offer_and_trickles_for_no_connection_are_refused(
    shared: ServerProcess, shared_lk: api.LiveKitAPI
) -> None:
    """Logged refusals, the session going on: an answer when no offer of ours is out, a
    trickle for an unknown target, a trickle for a connection not made yet."""
    async with SignalClient(shared.url, "refusals", "alice") as alice:
        stray = rtc.SessionDescription(type="answer", sdp="v=0\r\n", id=4)
        await alice.send(rtc.SignalRequest(answer=stray))
        candidate = '{"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host", "sdpMid": "0"}'
        trickle = rtc.TrickleRequest(candidateInit=candidate, target=7)  # type: ignore[arg-type]
        await alice.send(rtc.SignalRequest(trickle=trickle))
        trickle.target = rtc.SignalTarget.PUBLISHER  # no offer yet: no connection
        await alice.send(rtc.SignalRequest(trickle=trickle))
        await alice.send(rtc.SignalRequest(ping_req=rtc.Ping(timestamp=5)))
        assert (await alice.wait_for("pong_resp")).pong_resp.last_ping_timestamp == 5
        await logged(shared, "signal alice: answer refused: no offer of ours is pending")
        await logged(shared, "signal alice: trickle refused: unknown target 7")
        await logged(shared, "signal alice: trickle refused: no PUBLISHER connection negotiated")
        counters = shared.metrics()
        for what in ("answer_without_offer", "trickle_unknown_target", "trickle_no_connection"):
            assert counters[f'sipbridge_negotiation_refused_total{{what="{what}"}}'] >= 1, what
        assert await identities(shared_lk, "refusals") == {"alice"}


async def test_a_client_that_never_answers_the_subscriber_offer_leaves(
    shared: ServerProcess, shared_lk: api.LiveKitAPI, loopback_only: None
) -> None:
    """Two-PC: our subscriber offer left unanswered for ANSWER_TIMEOUT_S: the client is told
    (MEDIA_FAILURE) and leaves, its connections closed; the room goes on."""
    baseline = udp_sockets(shared)
    async with SignalClient(shared.url, "mute", "steady"):
        silent = PeerClient(shared.url, "mute", "silent", two_pc=True)
        silent.answer_subscriber = False
        try:
            await silent.connect()
            await silent.wait_for("offer")
            assert udp_sockets(shared) > baseline  # the subscriber connection's socket
            leave = await silent.wait_for("leave", timeout=ANSWER_TIMEOUT_S + 3)
            assert leave.leave.reason == models.DisconnectReason.MEDIA_FAILURE
        finally:
            await silent.drop()
            await silent.stop()
        await eventually(lambda: udp_sockets(shared) == baseline, "the sockets closed")
        assert await identities(shared_lk, "mute") == {"steady"}
