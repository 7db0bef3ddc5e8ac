"""The one error of the SDP layer: a body we refuse, and why, in SDP's own terms.

`sdp/` knows nothing of SIP, so it cannot say which response to send. `SdpError.kind` tells
the two refusals apart - the text is not SDP (RFC 4566), or it is SDP we cannot accept
(RFC 3264) - and the signalling layer picks the status: the SIP server answers 488 Not
Acceptable Here for both (`server/media/service.py`), the status RFC 3261 s21.4.26 gives to a
session description that cannot be accepted here.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["SdpError", "SdpErrorKind"]


class SdpErrorKind(StrEnum):
    """Why an SDP body is refused."""

    MALFORMED = "malformed"
    """The text breaks the RFC 4566 s9 grammar or one of our limits: there is no description."""

    NOT_ACCEPTABLE = "not acceptable"
    """A well-formed description with nothing we can take: no audio stream on a transport and
    with a codec we support (RFC 3264 s6)."""


class SdpError(Exception):
    """An SDP body we refuse: `kind` says which refusal, `detail` what is wrong with it."""

    def __init__(self, kind: SdpErrorKind, detail: str) -> None:
        super().__init__(f"SDP {kind}: {detail}")
        self.kind = kind
        self.detail = detail
