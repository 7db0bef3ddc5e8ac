"""Media, sans-IO: RTP/RTCP, jitter buffer, codecs, DTMF, tones, mixing, SRTP, and the call's
RTP leg (`leg.RtpLeg`) with the room's forward-or-mix decision (`room_audio.RoomAudio`).

`media/` imports nothing of `sipbridge` outside itself: no `sip/`, no `sdp/`, no `server/`
(`tests/test_layers.py` checks it). It speaks in RTP terms - payload bytes, codec specs, SRTP
keys, `leg.StreamConfig` - and `telephony/` and `server/` map SDP's codecs, addresses and
`a=crypto` lines onto them. Time is an argument: the sockets and the clocks are `server/`'s.
"""
