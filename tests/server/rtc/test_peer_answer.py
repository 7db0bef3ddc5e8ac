"""`RtcPeer.answer` on real aiortc peer connections, in memory: the private aiortc attributes it
sets (a transceiver's `_codecs`, a sender's `_stream_id`) still shape the answer an SDK reads.
An aiortc upgrade that renames or stops reading them fails here, not only in the interop tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import aioice.ice
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from sipbridge.media import codecs
from sipbridge.server.rtc.aiortc_patches import restrict_host_addresses
from sipbridge.server.rtc.audio import Publication
from sipbridge.server.rtc.peer import RtcPeer


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
    phone: Any = SimpleNamespace(forwardable=True, spec=codecs.PCMU_SPEC)  # a phone's G.711 leg
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
