"""Rooms owned by one node and reached from any (docs/cluster.md s3-s4): who owns a room, and
requests, WebSockets and INVITEs handed to the owner."""
