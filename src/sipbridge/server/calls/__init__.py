"""Calls in rooms: the one runner for both directions, inbound calls (digest auth, PIN rooms),
outbound calls, transfers."""
