"""The WebRTC side: `/rtc/v1` and `/rtc` signalling sessions and the aiortc peer connections of
each client (one, or two in LiveKit's two-PC protocol).

- `signal.py`: `SignalServer`, the WebSocket of each session - join, resume, requests, leave,
  room events told to clients;
- `join.py`: the join's token, `join_request` (or `/rtc`'s query parameters) and protocol;
  `session.py`: one client's session;
- `session_media.py`: each session's peer connections driven - offers answered, the subscriber
  connection offered, subscriptions and permissions, published audio into the room, bad
  negotiation refused; `data_packets.py`: data packets between clients;
- `peer.py`: `RtcPeer`, one aiortc peer connection; `audio.py`: the tracks on it;
- `aiortc_patches.py`: every place where aiortc or aioice is patched, and why.
"""
