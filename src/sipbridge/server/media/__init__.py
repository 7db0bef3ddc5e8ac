"""Call audio: RTP ports and legs, the media service the call runners use."""
