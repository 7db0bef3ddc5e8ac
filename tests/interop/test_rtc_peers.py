"""Every way a LiveKit client negotiates, with real aiortc peer connections on loopback
(tests/signal_client.py `PeerClient`, speaking what livekit-client sends):

- single-PC on `/rtc/v1` with the offer after the join (Firefox, livekit-client before 2.19):
  the connection is made on the first `offer`, and audio flows both ways as with the offer in
  the join;
- two-PC on `/rtc`: the server offers the subscriber connection (`subscriber_primary`), answers
  the publisher connection, trickles its candidates with each connection's `target` (the
  client's descriptions carry none either, so a trickle routed to the wrong connection fails
  ICE), re-offers the subscriber as tracks come and go (published, unsubscribed, subscribed
  again, their publisher gone), sends data on the subscriber's channels
  and takes the client's on the publisher's, and resumes after a dropped WebSocket (an offer lost
  with it sent again).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import aioice.ice
import pytest
from livekit import api
from livekit.protocol import models, room, rtc

from sipbridge.server.rtc.aiortc_patches import restrict_host_addresses
from tests.harness import eventually, module_server
from tests.helpers import API_KEY, API_SECRET, ServerProcess
from tests.signal_client import PeerClient

Target = rtc.SignalTarget


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from module_server(tmp_path_factory, "rtc_peers")


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's aiortc gathers on loopback, where the server's WebRTC is."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", aioice.ice.get_host_addresses)
    restrict_host_addresses(["127.0.0.1"])


@pytest.fixture
async def lk(shared_server: ServerProcess) -> AsyncIterator[api.LiveKitAPI]:
    async with api.LiveKitAPI(shared_server.url, API_KEY, API_SECRET) as client:
        yield client


async def identities(lk: api.LiveKitAPI, name: str) -> set[str]:
    listed = await lk.room.list_participants(room.ListParticipantsRequest(room=name))
    return {p.identity for p in listed.participants}


async def hears(client: PeerClient, track_sid: str, frames: int = 25) -> None:
    """`client` hears the track: `frames` x 20 ms of it well above silence."""
    try:
        await eventually(lambda: client.heard(track_sid) >= frames, f"{track_sid} heard", timeout=8)
    except AssertionError as err:
        raise AssertionError(f"{err}: {client.describe()}") from None


async def test_an_offer_after_the_join_is_answered_and_audio_flows_both_ways(
    shared_server: ServerProcess,
) -> None:
    alice = PeerClient(shared_server.url, "deferred", "alice")  # the offer in the join
    bob = PeerClient(shared_server.url, "deferred", "bob", defer_offer=True)
    try:
        await alice.connect()
        joined = await bob.connect()
        assert not joined.subscriber_primary  # single-PC: the client's connection is primary
        answer = await bob.wait_for("answer")
        assert answer.answer.id == bob.offer_id
        alice_track = await alice.publish_tone(440.0)
        bob_track = await bob.publish_tone(880.0)
        await hears(bob, alice_track.sid)
        await hears(alice, bob_track.sid)
        # single-PC: the server's candidates are in its answers, it trickles none
        assert not [m for m in bob.log if m.WhichOneof("message") == "trickle"]
    finally:
        await bob.close()
        await alice.close()


async def test_two_peer_connections_subscriber_offered_publisher_answered(
    shared_server: ServerProcess, lk: api.LiveKitAPI
) -> None:
    alice = PeerClient(shared_server.url, "twopc", "alice")
    carol = PeerClient(shared_server.url, "twopc", "carol", two_pc=True)
    try:
        joined = await carol.connect()
        assert joined.subscriber_primary
        first = await carol.wait_for("offer")  # the subscriber, at once: data channels only
        assert "m=application" in first.offer.sdp and "a=candidate" not in first.offer.sdp
        await eventually(lambda: carol.subscriber_answers == 1, "carol's answer")
        await alice.connect()
        alice_track = await alice.publish_tone(440.0)
        # alice's track came: the subscriber is offered again, with a section for it
        await hears(carol, alice_track.sid)
        assert carol.subscriber_answers >= 2
        # carol publishes on her publisher connection, answered by the server
        carol_track = await carol.publish_tone(880.0)
        await hears(alice, carol_track.sid)
        targets = [(m.trickle.target) for m in carol.log if m.WhichOneof("message") == "trickle"]
        assert Target.SUBSCRIBER in targets and Target.PUBLISHER in targets, targets
        # data: the server sends on the subscriber's channels, takes carol's on the publisher's
        await eventually(
            lambda: carol.channels["_reliable"].readyState == "open", "carol's data channel"
        )
        await lk.room.send_data(
            room.SendDataRequest(
                room="twopc", data=b"to all", kind=models.DataPacket.Kind.RELIABLE, topic="t"
            )
        )
        await eventually(lambda: [p.user.payload for p in carol.data] == [b"to all"], "data")
        packet = models.DataPacket(user=models.UserPacket(payload=b"from carol", topic="t"))
        carol.channels["_reliable"].send(packet.SerializeToString())
        await eventually(
            lambda: [p.user.payload for p in alice.data] == [b"to all", b"from carol"],
            "carol's data at alice",
        )
        assert alice.data[1].participant_identity == "carol"
        # carol unsubscribes: the section goes inactive in a new offer; subscribes again: a new
        # section, alice heard again
        assert carol.subscriber is not None
        subscriber = carol.subscriber
        answers = carol.subscriber_answers
        await carol.send(
            rtc.SignalRequest(
                subscription=rtc.UpdateSubscription(track_sids=[alice_track.sid], subscribe=False)
            )
        )
        await eventually(lambda: carol.subscriber_answers > answers, "the re-offer")
        sections = [t for t in subscriber.getTransceivers() if t.kind == "audio"]
        assert [t.currentDirection for t in sections] == ["inactive"], sections
        heard = carol.heard(alice_track.sid)
        await carol.send(
            rtc.SignalRequest(
                subscription=rtc.UpdateSubscription(track_sids=[alice_track.sid], subscribe=True)
            )
        )
        await hears(carol, alice_track.sid, frames=heard + 25)
        # alice leaves: carol's section for her track goes inactive in a new offer
        answers = carol.subscriber_answers
        await alice.close()
        await eventually(lambda: carol.subscriber_answers > answers, "the re-offer")
        sections = [t for t in subscriber.getTransceivers() if t.kind == "audio"]
        assert [t.currentDirection for t in sections] == ["inactive", "inactive"], sections
        assert await identities(lk, "twopc") == {"carol"}
    finally:
        await carol.close()
        await alice.close()


async def test_two_peer_connections_resume_after_a_dropped_websocket(
    shared_server: ServerProcess, lk: api.LiveKitAPI
) -> None:
    alice = PeerClient(shared_server.url, "twopc-resume", "alice")
    carol = PeerClient(shared_server.url, "twopc-resume", "carol", two_pc=True)
    try:
        await alice.connect()
        alice_track = await alice.publish_tone(440.0)
        sid = (await carol.connect()).participant.sid
        await hears(carol, alice_track.sid)
        await carol.drop()  # the WebSocket only: the peer connections stay
        heard = carol.heard(alice_track.sid)
        first = await carol.resume()
        assert first.WhichOneof("message") == "reconnect", first
        again = await lk.room.get_participant(
            room.RoomParticipantIdentity(room="twopc-resume", identity="carol")
        )
        assert again.sid == sid
        # the same connections go on carrying alice's audio
        await hears(carol, alice_track.sid, frames=heard + 25)
        await carol.send(rtc.SignalRequest(ping_req=rtc.Ping(timestamp=7)))
        assert (await carol.wait_for("pong_resp")).pong_resp.last_ping_timestamp == 7
    finally:
        await carol.close()
        await alice.close()


async def test_two_peer_connections_an_offer_lost_with_the_websocket_comes_again(
    shared_server: ServerProcess,
) -> None:
    """Our subscriber re-offer goes out as the WebSocket drops, unanswered: on the resume it is
    sent again (its answer deadline with it), answered, and the track it carries is heard."""
    alice = PeerClient(shared_server.url, "twopc-lost", "alice")
    carol = PeerClient(shared_server.url, "twopc-lost", "carol", two_pc=True)
    try:
        await carol.connect()
        await eventually(lambda: carol.subscriber_answers == 1, "carol's first answer")
        carol.answer_subscriber = False  # the re-offer is lost with the link
        await alice.connect()
        alice_track = await alice.publish_tone(440.0)

        def reoffered() -> bool:
            return any(m.offer.id == 2 for m in carol.log if m.WhichOneof("message") == "offer")

        await eventually(reoffered, "the re-offer for alice's track")
        await carol.drop()
        carol.answer_subscriber = True
        assert (await carol.resume()).WhichOneof("message") == "reconnect"
        again = await carol.wait_for("offer")
        assert again.offer.id == 2
        await hears(carol, alice_track.sid)
        assert carol.subscriber_answers == 2
    finally:
        await carol.close()
        await alice.close()
