"""Call recording (LiveKit's Egress API): recordings of a room's mix or of one track to files."""
