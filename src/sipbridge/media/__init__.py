"""Media, sans-IO: RTP/RTCP, jitter buffer, codecs, DTMF, tones, mixing, SRTP.

`media/` imports nothing of `sipbridge` outside itself: no `sip/`, no `sdp/`, no `server/`
(`tests/test_layers.py` checks it). It speaks in RTP terms - payload bytes, codec specs, SRTP
keys - and `telephony/` maps SDP's codecs and `a=crypto` lines onto them.
"""
