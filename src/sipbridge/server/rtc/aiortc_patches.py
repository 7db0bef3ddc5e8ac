"""The four places where sipbridge replaces a piece of aiortc or aioice, and the one where it
calls a private method of aiortc, all of them here.

Each function is called once, when the server starts (`server/app.py`), and replaces a module
global that aiortc or aioice looks up at the moment it needs it. None of these globals is a
public extension point, so each docstring names what it replaces, why, and what of aiortc's or
aioice's code it relies on; `tests/server/rtc/test_aiortc_patches.py` has one test per patch
that fails when an upgrade breaks that reliance (the pinned versions are in pyproject.toml).

- `use_waveform_opus`: aiortc's Opus encoder, in `audio` instead of `voip` mode.
- `deliver_audio_promptly`: aiortc's audio jitter buffer, one that holds nothing back.
- `restrict_host_addresses`: aioice's list of host addresses, the `--rtc-ip` ones only.
- `bind_ice_ports`: the loop aioice binds its candidate sockets through, within `--rtc-ports`.
- `start_missed_media` (called whenever a peer connection comes up, not a replacement): what a
  negotiation that ended while DTLS was connecting left unstarted.
"""

from __future__ import annotations

import asyncio
import errno
import secrets
import socket
from collections.abc import Callable, Sequence
from typing import Any

import aioice.ice
import aiortc.codecs
import aiortc.codecs.opus
import aiortc.jitterbuffer
import aiortc.rtcrtpreceiver
import av
from aiortc import RTCPeerConnection
from aiortc.jitterbuffer import MAX_MISORDER, JitterFrame
from aiortc.rtp import RtpPacket as AiortcRtpPacket

# -- Opus in `audio` mode ---------------------------------------------------------------------


FRAME_SAMPLES = aiortc.codecs.opus.SAMPLES_PER_FRAME  # 20 ms at 48 kHz, aiortc's packet size


class WaveformOpusEncoder(aiortc.codecs.opus.OpusEncoder):
    """aiortc's Opus encoder in `audio` mode, encoding mono. Its default `voip` mode (high-pass,
    tuned for intelligibility) keeps speech intelligible but not the waveform - a bridged caller
    correlated 0.45 with what the SDK heard; `audio` at aiortc's 96 kbit/s keeps it (and costs
    no more). aiortc encodes stereo, upmixing our mono frames through FFmpeg, whose centre mix
    level puts each channel 3 dB down: the room was heard at 0.71 of its level. A mono Opus
    stream is valid on an `opus/48000/2` section (RFC 7587 s7: the decoder handles either, and
    without `stereo=1` the receiver prefers mono) and costs less to encode."""

    def __init__(self) -> None:
        super().__init__()
        self.codec.options = {"application": "audio"}
        self.codec.layout = "mono"
        self.resampler = av.AudioResampler(
            format="s16", layout="mono", rate=self.codec.sample_rate, frame_size=FRAME_SAMPLES
        )


def use_waveform_opus() -> None:
    """Make aiortc encode Opus with `WaveformOpusEncoder`.

    Replaces `aiortc.codecs.OpusEncoder`. Relies on: `aiortc.codecs.get_encoder` (the one
    `aiortc.rtcrtpsender` calls, once per sender) looking `OpusEncoder` up in its module's
    globals for `audio/opus`; `OpusEncoder()` taking no argument and creating its PyAV codec
    context (`self.codec`) unopened, so options and layout set after `__init__` apply when it
    opens; `encode` passing each frame through `self.resampler` to the codec."""
    aiortc.codecs.OpusEncoder = WaveformOpusEncoder  # type: ignore[attr-defined]


# -- audio delivered as it arrives ------------------------------------------------------------


class PromptAudioBuffer:
    """aiortc's receive buffer for audio, replaced: one audio packet is one frame, delivered the
    moment it arrives unless it is a duplicate or late (then dropped). aiortc's JitterBuffer
    (prefetch=4) held every frame until four more had come - 80 ms added to everything an agent
    says - and stalled on a lost packet; pacing and smoothing are the room clock's job."""

    capacity = 16

    def __init__(self) -> None:
        self._last: int | None = None

    def add(self, packet: AiortcRtpPacket) -> tuple[bool, JitterFrame | None]:
        """(send a PLI, the frame to decode): never a PLI (audio), the frame unless stale."""
        seq = packet.sequence_number
        if self._last is not None:
            behind = (self._last - seq) & 0xFFFF
            if behind < MAX_MISORDER:  # a duplicate (0) or a late packet: its time has passed
                return False, None
        self._last = seq
        data: bytes = packet._data  # type: ignore[attr-defined]  # the depayloaded frame
        return False, JitterFrame(data=data, timestamp=packet.timestamp)


def deliver_audio_promptly() -> None:
    """Make aiortc's receivers use `PromptAudioBuffer` for audio (video keeps its own).

    Replaces `aiortc.rtcrtpreceiver.JitterBuffer` with a factory. Relies on:
    `RTCRtpReceiver.__init__` looking `JitterBuffer` up in its module's globals and calling it
    as `JitterBuffer(capacity=16, prefetch=4)` for audio and `(capacity=512, is_video=True)` for
    video; the receiver using only `add(packet) -> (pli_flag, JitterFrame | None)`, with the
    depayloaded frame in `packet._data` when it calls it; `JitterFrame(data=, timestamp=)`."""
    original = aiortc.jitterbuffer.JitterBuffer

    def factory(capacity: int, prefetch: int = 0, is_video: bool = False) -> object:
        if is_video:
            return original(capacity, prefetch=prefetch, is_video=True)
        return PromptAudioBuffer()

    aiortc.rtcrtpreceiver.JitterBuffer = factory  # type: ignore[assignment,attr-defined]


# -- ICE host candidates: which addresses (--rtc-ip), which ports (--rtc-ports) ---------------


def restrict_host_addresses(addresses: Sequence[str]) -> None:
    """Gather ICE host candidates only on `addresses` (WIRE.md s6). aioice gathers on every
    interface but loopback; a server shows clients only the addresses it is meant to be reached
    on, and can be tested on loopback.

    Replaces `aioice.ice.get_host_addresses`. Relies on: `Connection.gather_candidates` looking
    it up in aioice.ice's globals at gather time, calling it as
    `get_host_addresses(use_ipv4=, use_ipv6=)`, and binding one host socket on each address it
    returns (so the choice governs both gathering and binding)."""
    chosen = list(addresses)

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = host_addresses


class PortRangeLoop:
    """The running loop as aioice sees it: a UDP endpoint asked for on port 0 is bound to a
    free port of `ports` instead (tried from a random start, each port at most once). Each try
    binds a socket of ours: uvloop's `create_datagram_endpoint` reports a port in use with no
    errno, so telling "in use, try the next" from other failures needs the plain bind's."""

    def __init__(self, loop: asyncio.AbstractEventLoop, ports: tuple[int, int]) -> None:
        self._loop = loop
        self._ports = ports

    def __getattr__(self, name: str) -> object:
        return getattr(self._loop, name)

    async def create_datagram_endpoint(
        self,
        factory: Callable[[], asyncio.DatagramProtocol],
        local_addr: tuple[str, int] | None = None,
        **kw: Any,
    ) -> tuple[asyncio.DatagramTransport, asyncio.DatagramProtocol]:
        if local_addr is None or local_addr[1] != 0:
            return await self._loop.create_datagram_endpoint(factory, local_addr, **kw)
        lo, hi = self._ports
        count = hi - lo + 1
        start = secrets.randbelow(count)
        family = socket.AF_INET6 if ":" in local_addr[0] else socket.AF_INET
        for i in range(count):
            port = lo + (start + i) % count
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.bind((local_addr[0], port))
            except OSError as exc:
                sock.close()
                if exc.errno != errno.EADDRINUSE:
                    raise
                continue
            sock.setblocking(False)
            return await self._loop.create_datagram_endpoint(factory, sock=sock, **kw)
        raise OSError(errno.EADDRINUSE, f"no free UDP port in {lo}-{hi} on {local_addr[0]}")


class AsyncioForIce:
    """The `asyncio` module as aioice.ice sees it: itself, but for `get_running_loop`."""

    def __init__(self, ports: tuple[int, int]) -> None:
        self._ports = ports

    def __getattr__(self, name: str) -> object:
        return getattr(asyncio, name)

    def get_running_loop(self) -> PortRangeLoop:
        return PortRangeLoop(asyncio.get_running_loop(), self._ports)


def bind_ice_ports(ports: tuple[int, int]) -> None:
    """Bind aioice's candidate sockets within `ports` (`--rtc-ports`), so a firewall can open
    one known range; aioice has no option for it and binds each to an ephemeral port.

    Replaces the `asyncio` module as aioice.ice sees it (`aioice.ice.asyncio`) with one whose
    running loop is a `PortRangeLoop`. Relies on: `Connection.get_component_candidates` taking
    its loop from `asyncio.get_running_loop()` (looked up through aioice.ice's `asyncio`
    global) and binding each host candidate's socket with
    `loop.create_datagram_endpoint(factory, local_addr=(address, 0))`."""
    aioice.ice.asyncio = AsyncioForIce(ports)  # type: ignore[assignment,attr-defined]


# -- senders and receivers a negotiation missed -----------------------------------------------


async def start_missed_media(pc: RTCPeerConnection) -> None:
    """Start the RTP senders and receivers that a negotiation left unstarted, once `pc` is up.

    aiortc starts a section's sender and receiver at the end of each negotiation, and only when
    it finds the section's DTLS transport connected; a negotiation that ends while DTLS is still
    connecting (a client that re-offers at once, as a deferred-offer client does after being
    asked for a section) starts nothing, and no later step does: that section stays silent.
    Calls aiortc's private `RTCPeerConnection.__connect` again, which does exactly that start
    for every section whose transport is connected. Relies on: its name (mangled to
    `_RTCPeerConnection__connect`), it taking no argument, and `RTCRtpSender.send`,
    `RTCRtpReceiver.receive` and `RTCSctpTransport.start` doing nothing when already started."""
    connect = getattr(pc, "_RTCPeerConnection__connect", None)
    if connect is not None and pc.connectionState == "connected":
        await connect()
