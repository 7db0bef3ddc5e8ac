"""The user-agent layer, sans-IO: what a SIP user agent does above transactions and dialogs.

Like `sip/` below it, nothing here does I/O or reads a clock: time is an argument, every timer a
deadline (`get_timer()`, `handle_timer(now)`), and what happened comes out as frozen events.
`server/` drives these objects from asyncio.

- `session_timer`: RFC 4028 session timers, both roles (refresher, refreshee), both sides of the
  INVITE (UAC, UAS).
"""
