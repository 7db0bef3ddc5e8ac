"""`RtcPeer.answer` and `RtcPeer.offer` on real aiortc peer connections, in memory: the private
aiortc attributes they read and set (a transceiver's `_codecs` and `_offerDirection`, a sender's
`_stream_id`) still shape the descriptions an SDK reads. An aiortc upgrade that renames or stops
reading them fails here, not only in the interop tests."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aioice.ice
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from sipbridge.media import codecs
from sipbridge.media.room_audio import AudioLeg
from sipbridge.server.rtc.aiortc_patches import restrict_host_addresses
from sipbridge.server.rtc.audio import Publication
from sipbridge.server.rtc.peer import RtcPeer, split_candidates


def _phone_leg() -> AudioLeg:
    """A phone's G.711 leg, as far as the answer reads it."""
    leg = AudioLeg(codecs.PCMU_SPEC)
    leg.forwardable = True
    return leg


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aioice.ice, "get_host_addresses", aioice.ice.get_host_addresses)
    restrict_host_addresses(["127.0.0.1"])


@pytest.fixture
async def client_and_peer() -> AsyncIterator[tuple[RTCPeerConnection, RtcPeer]]:
    client = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    peer = RtcPeer(identity="alice")
    yield client, peer
    await peer.close()
    await client.close()


async def sdk_offer(client: RTCPeerConnection) -> str:
    """An offer as the SDK makes it to subscribe: a recvonly audio section (Opus, PCMU, PCMA)."""
    client.addTransceiver("audio", direction="recvonly")
    await client.setLocalDescription(await client.createOffer())
    return str(client.localDescription.sdp)


def audio_section(sdp: str) -> list[str]:
    lines = sdp.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("m=audio"))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("m=")), len(lines))
    return lines[start:end]


async def test_a_phone_track_is_answered_in_its_codec_only_with_the_sdk_msid(
    client_and_peer: tuple[RTCPeerConnection, RtcPeer],
) -> None:
    client, peer = client_and_peer
    phone = _phone_leg()  # a phone's G.711 leg
    sdp, mids, left = await peer.answer(
        await sdk_offer(client), {"TR_phone": (phone, "PA_phone")}, lambda sid, pub: None
    )
    assert left == [] and list(mids.values()) == ["TR_phone"]
    section = audio_section(sdp)
    rtpmaps = [line for line in section if line.startswith("a=rtpmap:")]
    assert rtpmaps and all("PCMU/8000" in line for line in rtpmaps), rtpmaps  # `_codecs` kept
    assert "a=msid:PA_phone|TR_phone TR_phone" in section  # `_stream_id` set
    assert "a=sendonly" in section


async def test_a_client_track_is_answered_in_opus(
    client_and_peer: tuple[RTCPeerConnection, RtcPeer],
) -> None:
    client, peer = client_and_peer
    sdp, _, _ = await peer.answer(
        await sdk_offer(client), {"TR_bob": (Publication(), "PA_bob")}, lambda sid, pub: None
    )
    rtpmaps = [line for line in audio_section(sdp) if line.startswith("a=rtpmap:")]
    assert rtpmaps and all("opus/48000" in line for line in rtpmaps), rtpmaps


async def test_a_clients_own_microphone_section_never_carries_a_room_track(
    client_and_peer: tuple[RTCPeerConnection, RtcPeer],
) -> None:
    """aiortc makes every section of a remote offer recvonly on our side: the client's sendonly
    (its microphone) must not be taken for a free section, or the track is answered inactive."""
    client, peer = client_and_peer
    client.addTransceiver("audio", direction="sendonly")
    client.addTransceiver("audio", direction="recvonly")
    await client.setLocalDescription(await client.createOffer())
    phone = _phone_leg()
    _, mids, left = await peer.answer(
        client.localDescription.sdp, {"TR_phone": (phone, "PA_phone")}, lambda sid, pub: None
    )
    assert left == [] and mids == {"1": "TR_phone"}, mids


async def test_the_subscriber_connection_is_offered_with_one_codec_and_drops_sections() -> None:
    """Two-PC: our offer has a sendonly section per track, in the phone's G.711 only, with the
    SDK's msid, bundled with the data channel; a dropped track's section goes inactive."""
    client = RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy="max-bundle"))
    peer = RtcPeer(identity="carol", offers=True)
    try:
        phone = _phone_leg()
        sdp, mids = await peer.offer({"TR_phone": (phone, "PA_phone")})
        assert mids == {"0": "TR_phone"}
        section = audio_section(sdp)
        rtpmaps = [line for line in section if line.startswith("a=rtpmap:")]
        assert rtpmaps and all("PCMU/8000" in line for line in rtpmaps), rtpmaps
        assert "a=msid:PA_phone|TR_phone TR_phone" in section and "a=sendonly" in section
        assert "m=application" in sdp and "a=group:BUNDLE 0 1" in sdp
        await client.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        await client.setLocalDescription(await client.createAnswer())
        await peer.accept_answer(client.localDescription.sdp)
        assert peer.drop("TR_phone") is not None and peer.sending == {}
        sdp, mids = await peer.offer({})
        assert mids == {} and "a=inactive" in audio_section(sdp)
    finally:
        await peer.close()
        await client.close()


def test_candidates_leave_the_description_to_be_trickled_once_each() -> None:
    sdp = (
        "v=0\r\na=group:BUNDLE 0 1\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n"
        "a=candidate:1 1 udp 1 127.0.0.1 5000 typ host\r\na=end-of-candidates\r\n"
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:1\r\n"
        "a=candidate:1 1 udp 1 127.0.0.1 5000 typ host\r\na=end-of-candidates\r\n"
    )
    kept, trickled = split_candidates(sdp)
    assert "a=candidate" not in kept and "end-of-candidates" not in kept
    assert kept.startswith("v=0\r\n") and "a=mid:1\r\n" in kept
    assert [json.loads(c) for c in trickled] == [
        {
            "candidate": "candidate:1 1 udp 1 127.0.0.1 5000 typ host",
            "sdpMid": "0",
            "sdpMLineIndex": 0,
        }
    ]
