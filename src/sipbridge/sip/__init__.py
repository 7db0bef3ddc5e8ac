"""The SIP protocol, sans-IO (RFC 3261): no asyncio, sockets or clocks in this package."""
