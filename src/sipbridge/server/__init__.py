"""The asyncio edge: transports, HTTP/Twirp API, webhooks; feeds bytes and time to the cores."""
