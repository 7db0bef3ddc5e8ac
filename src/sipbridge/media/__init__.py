"""Media, sans-IO: RTP/RTCP, jitter buffer, codecs, DTMF, tones, mixing."""
