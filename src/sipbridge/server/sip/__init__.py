"""The SIP side's asyncio drivers: transports, the user agent's driver, session timers,
registrations."""
