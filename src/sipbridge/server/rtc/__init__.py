"""The WebRTC side: `/rtc` signalling sessions and the aiortc peer connection of each client.

- `signal.py`: `SignalServer`, the WebSocket of each session - join, resume, requests, leave,
  room events told to clients;
- `join.py`: the join's token and `join_request`; `session.py`: one client's session;
- `session_media.py`: each session's peer connection driven - offers answered, subscriptions and
  permissions, published audio into the room; `data_packets.py`: data packets between clients;
- `peer.py`: `RtcPeer`, one aiortc peer connection; `audio.py`: the tracks on it;
- `aiortc_patches.py`: every place where aiortc or aioice is patched, and why.
"""
