"""The SIP protocol, sans-IO (RFC 3261): no event loop, sockets or clocks in this package."""
