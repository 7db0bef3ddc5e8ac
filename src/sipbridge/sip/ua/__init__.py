"""The user-agent layer, sans-IO: what a SIP user agent does above transactions and dialogs.

Like `sip/` below it, nothing here does I/O or reads a clock: time is an argument, every timer a
deadline (`get_timer()`, `handle_timer(now)`), and what happened comes out as frozen events.
`server/` drives these objects from its event loop (`server/sip/user_agent.py`).

- `agent`: the user agent core - endpoint events dispatched to INVITE sessions, OPTIONS answered,
  481/405 outside dialogs, one deadline for all sessions.
- `invite`: the INVITE session, both sides (UAC, UAS): provisional and final responses, 2xx
  retransmission and its ACK, CANCEL, re-INVITE/UPDATE offers and glare, BYE, REFER, NOTIFY.
- `session_timer`: RFC 4028 session timers, both roles (refresher, refreshee), both sides of the
  INVITE (UAC, UAS).
"""
