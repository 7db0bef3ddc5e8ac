"""A leg's silence made by the tick's sender (`_crelay.c` `SilentStream`), not by the loop.

In a mixing room where nobody talks - callers who send nothing, the common case while an agent
thinks - every tick makes every leg a frame of silence: its silence payload under the next
header of its stream. In Python that is the leg's timeline, sender, latch, stats and socket
touched per frame, 2 us of the event loop a frame on the 2-core machine with 300 legs (their
objects out of the cache after 20 ms), 100 us a call of 1 s (issue 18). Armed (`arm`), the
stream's state - sequence number, the timeline's last timestamp and its time, the marker owed -
is handed to the sender once, which makes each frame exactly as `RtpLeg.send_pcm(None)` would
(`Timeline.made`, `RtpSender.frame`) and sends it with the tick's other datagrams. The leg only
queues the stream (`CallMedia.send_pcm`).

While armed the leg's objects are stale: `sync` adds what the sender made to them (its readers
call the leg's `sync` first, as for the relay engine: quality, metrics, RTCP reports), and
anything that makes a frame in Python or changes the stream - audio to mix, a digit, a packet
to forward, a routing change, a new latch, a re-INVITE, the end - takes it back first
(`disarm`). `SIPBRIDGE_NO_CRELAY=1`, or an engine built without it, leaves every frame to the
loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sipbridge.media.leg import RtpLeg
from sipbridge.media.timeline import TIMESTAMP_MOD

if TYPE_CHECKING:
    from sipbridge.server.media.leg_driver import CallMedia


def arm(leg: CallMedia, stream_type: Any) -> Any:
    """The stream of `leg`'s silence for the sender, when silence is all it sends: plain RTP (no
    SRTP, no capture), a peer to send to, a frame made before (the first one carries the marker
    and starts the timeline), no digits or players; None otherwise (the loop makes it)."""
    if stream_type is None or leg.closed or leg.srtp is not None or leg.capture is not None:
        return None
    latch = leg.latch
    destination = latch._latched or latch.expected
    timeline = leg.timeline
    if destination is None or not leg.sending or timeline.last_at is None:
        return None
    if leg.local_audio or leg.rtp_sink != leg.rtp.send:
        return None
    sender = leg.sender
    try:
        stream = stream_type(
            leg.rtp.fd,
            leg.rtp.family,
            destination,
            leg._silence,
            sender.ssrc,
            sender._sequence,
            timeline.last,
            timeline.last_at,
            float(timeline.clock_rate),
            timeline.frame_ticks,
            leg.audio_pt,
            sender._marker_pending,
        )
    except (TypeError, ValueError, OverflowError):
        return None  # (an address the sender cannot take: the loop makes its frames)
    timeline._ssrc = None  # (as `Timeline.made` does: a source forwarded next maps anew)
    leg.silent = stream
    leg._silent_seen = leg._silent_errors = 0
    return stream


def sync(leg: CallMedia) -> None:
    """What the sender made of `leg`'s stream since last asked, into the leg's objects, as
    `RtpLeg.send_pcm(None)` would have left them; its failed sends on its socket."""
    stream = leg.silent
    if stream is None:
        return
    made: int = stream.packets - leg._silent_seen
    if made:
        leg._silent_seen += made
        sender, timeline = leg.sender, leg.timeline
        last: int = stream.last
        sender._sequence = stream.seq
        sender._timestamp = (last + leg.frame_ticks) % TIMESTAMP_MOD
        sender._marker_pending = bool(stream.marker)
        sender._packets += made
        sender._octets += made * len(leg._silence)
        timeline.last = last
        timeline.last_at = stream.last_at
        stats = leg.stats
        stats.packets_out += made
        stats.mixed_frames += made
        leg._sent_since_report = True
    failed: int = stream.errors - leg._silent_errors
    if failed:
        leg._silent_errors += failed
        leg.rtp.send_errors += failed


def disarm(leg: CallMedia) -> None:
    """The loop makes `leg`'s frames again, from the stream's state. A frame queued for the
    tick that runs is taken out of the sender's queue and made here instead, so that it goes
    with the tick's other datagrams (or, the socket closing, before it closes)."""
    stream = leg.silent
    if stream is None:
        return
    stream.close()
    batch = leg.rtp.batch
    queue = batch.silent
    requeue = queue is not None and leg._silent_at == batch.at and stream in queue
    if requeue:
        assert queue is not None
        queue.remove(stream)
        batch.silent_legs.remove(leg)
    sync(leg)
    leg.silent = None
    leg._silent_at = -1.0
    if requeue:
        RtpLeg.send_pcm(leg, None, batch.at)
