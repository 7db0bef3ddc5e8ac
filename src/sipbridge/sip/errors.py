"""Protocol errors that carry the SIP status to answer with (STYLE.md point 5)."""

from __future__ import annotations


class SipProtocolError(Exception):
    """Input we refuse; `status` is the SIP response to send when answering is possible."""

    def __init__(self, status: int, reason: str, detail: str = "") -> None:
        super().__init__(f"{status} {reason}" + (f": {detail}" if detail else ""))
        self.status = status
        self.reason = reason
        self.detail = detail
