"""The WebRTC side: `/rtc` signalling sessions and the aiortc peer connection of each client."""
