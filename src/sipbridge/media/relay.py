"""The relay's fast path: one RTP datagram of a leg that is a pure relay, forwarded in place.

A leg is a pure relay when exactly one listener takes its packets as they are (the same codec),
nobody mixes it, and neither side has SRTP or an RTP capture: two phones bridged in a room, the
product's common case. For such a leg an ordinary packet - RTP version 2 with no padding,
extension or CSRC, the negotiated audio payload type, from the latched address, of the current
source, next in sequence - needs no parse into an object, no decode and no clock: the receive
statistics (RFC 3550 A.1, A.8) are kept inline, the header is rewritten in the datagram's own
buffer for the listener's stream (its sequence number, its timestamp mapping, its SSRC), and
the listener's sink sends it. Anything else - the first packet, RTCP, DTMF, a new SSRC, a gap
or reordering, a listener whose timeline maps a new source - returns False, and the caller
takes the full path (`RtpLeg.receive`), which gives the same result, only slower.

The state it updates is the legs' own (receiver, latch, sender, timeline, counters), so every
reader - RTCP reports, quality, metrics, the call log - sees exactly what the full path would
have left. Sans-IO: bytes and `now` in, the listener's `relay_sink` out.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, cast

from sipbridge.media.session import MAX_DROPOUT

if TYPE_CHECKING:
    from sipbridge.media.leg import RtpLeg

_SEQ_TS_SSRC = struct.Struct("!HII")  # octets 2-11 of the RFC 3550 s5.1 fixed header
_HEADER = struct.Struct("!BBHII")
_FIXED = 12
_TS_MASK = 0xFFFFFFFF
_HALF = 1 << 31


def relay_datagram(
    leg: RtpLeg, buf: bytearray, view: memoryview, addr: tuple[str, int], now: float
) -> bool:
    """Forward `view` (the datagram, `buf` from its start), a datagram of `leg`'s RTP port from
    `addr`, when it is an ordinary packet of a pure relay (the module doc); False, with nothing
    changed, when it is not. The listener's `relay_sink` gets `view`, rewritten."""
    size = len(view)
    if size <= _FIXED or buf[0] != 0x80:  # V=2, P=0, X=0, CC=0
        return False
    second = buf[1]
    if second & 0x7F != leg.audio_pt or leg.srtp is not None or leg.buffered or leg._first:
        return False
    targets = leg.forward_to
    if len(targets) != 1:
        return False
    target = targets[0]
    sink = target.relay_sink
    if sink is None or target.spec is not leg.spec:
        return False
    listener = cast("RtpLeg", target)  # only RTP legs have a relay sink
    latch = leg.latch
    if addr != latch._latched or listener.srtp is not None or not listener.sending:
        return False
    listener_latch = listener.latch
    destination = listener_latch._latched  # `Latch.destination`, without the property's call
    if destination is None:
        destination = listener_latch.expected
        if destination is None:
            return False
    seq, timestamp, ssrc = _SEQ_TS_SSRC.unpack_from(buf, 2)
    receiver = leg.receiver
    if ssrc != receiver.ssrc:
        return False
    max_seq = receiver._max_seq
    delta = (seq - max_seq) & 0xFFFF
    if not 0 < delta < MAX_DROPOUT:  # a duplicate, reordering or a jump: the full path
        return False
    timeline = listener.timeline
    if timeline._ssrc != ssrc:  # the listener's stream maps a new source: the full path
        return False
    # -- accepted: the source's side (Latch.check, RtpReceiver.receive, RtpLeg.receive)
    latch._last_seen = now
    stats = leg.stats
    stats.packets_in += 1
    leg.last_packet_at = now
    if seq < max_seq:
        receiver._cycles += 0x10000
    receiver._max_seq = seq
    receiver._received += 1
    receiver._packets += 1
    payload_size = size - _FIXED
    receiver._octets += payload_size
    receiver._last_packet_at = now
    last_arrival = receiver._last_arrival
    if last_arrival is not None:
        d = (now - last_arrival) * receiver.clock_rate - (
            ((timestamp - receiver._last_timestamp + _HALF) & _TS_MASK) - _HALF
        )
        if d < 0:
            d = -d
        receiver._jitter += (d - receiver._jitter) / 16
        receiver._d_sum += d
        receiver._d_count += 1
    receiver._last_arrival = now
    receiver._last_timestamp = timestamp
    levels = leg._level_payloads
    if levels is not None:
        levels.append(bytes(buf[_FIXED:size]))  # measured when read, in bulk
    # -- the listener's side (Timeline.forwarded, RtpSender.packet, RtpLeg._send)
    stamp = (timestamp + timeline._offset) & _TS_MASK
    timeline.last = stamp
    timeline.last_at = now
    sender = listener.sender
    if sender._marker_pending:
        second |= 0x80
        sender._marker_pending = False
    sequence = sender._sequence
    _HEADER.pack_into(
        buf, 0, 0x80, (second & 0x80) | listener.audio_pt, sequence, stamp, sender.ssrc
    )
    sender._sequence = (sequence + 1) & 0xFFFF
    sender._timestamp = (stamp + listener.frame_ticks) & _TS_MASK
    sender._packets += 1
    sender._octets += payload_size
    try:
        sink(view, destination)
    except OSError:
        # A full socket buffer or an unreachable peer: this packet is dropped, never blocks.
        listener.relay_send_errors += 1
    lstats = listener.stats
    lstats.packets_out += 1
    lstats.forwarded += 1
    listener._sent_since_report = True
    return True
