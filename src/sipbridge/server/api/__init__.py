"""The HTTP side: Twirp and its auth, the Room and SIP services, metrics, webhooks."""
