"""Pieces of the RFC 4566 s9 grammar shared by the attribute parsers and the line parser.

Each helper checks one production and raises `SdpError(MALFORMED)` naming `what` was wrong.
"""

from __future__ import annotations

import re

from sipbridge.sdp.errors import SdpError, SdpErrorKind

# token-char = %x21 / %x23-27 / %x2A-2B / %x2D-2E / %x30-39 / %x41-5A / %x5E-7E
# token      = 1*(token-char)
TOKEN = r"[!#-'*+\-.0-9A-Z^-~]+"
TOKEN_RE = re.compile(TOKEN)
# non-ws-string = 1*(VCHAR/%x80-FF)  (bytes >= 0x80 are decoded text or surrogate escapes here)
_NON_WS = r"[!-~\x80-\U0010ffff]+"
_NON_WS_RE = re.compile(_NON_WS)


def malformed(detail: str) -> SdpError:
    """The error for text that is not SDP."""
    return SdpError(SdpErrorKind.MALFORMED, detail)


def split_fields(value: str) -> list[str]:
    """The SP-separated fields of a structured line, tolerating runs of spaces."""
    return [part for part in value.split(" ") if part]


def parse_number(text: str, what: str, *, digits: int = 20, maximum: int | None = None) -> int:
    """`1*DIGIT`, at most `digits` long and at most `maximum`."""
    # The digit cap also keeps int() clear of Python's 4300-digit conversion limit. ASCII
    # `isdigit` is exactly DIGIT (%x30-39); a pattern built and looked up in `re`'s cache on
    # every call cost 3-4 us a number, a dozen numbers an SDP (issue 18).
    if not (0 < len(text) <= digits and text.isascii() and text.isdigit()):
        raise malformed(f"{what} {text!r} is not a number")
    number = int(text)
    if maximum is not None and number > maximum:
        raise malformed(f"{what} {number} is out of range (max {maximum})")
    return number


def parse_port(text: str, what: str = "port") -> int:
    """A port number, 0-65535."""
    return parse_number(text, what, digits=5, maximum=65535)


def check_token(text: str, what: str) -> str:
    """`text` if it is a `token`."""
    if not TOKEN_RE.fullmatch(text):
        raise malformed(f"{what} {text!r} is not a token")
    return text


def check_non_ws(text: str, what: str) -> str:
    """`text` if it is a `non-ws-string`."""
    if not _NON_WS_RE.fullmatch(text):
        raise malformed(f"{what} {text!r} is not a non-whitespace string")
    return text


def required(name: str, value: str | None) -> str:
    """The value of an `a=<name>:<value>` attribute whose grammar needs one."""
    if value is None:
        raise malformed(f"a={name} needs a value")
    return value


def is_rtp(proto: str) -> bool:
    """Whether the fmts of an m-line on `proto` are RTP payload types (RFC 4566 s5.14)."""
    # RTP/AVP, RTP/SAVP, RTP/AVPF, UDP/TLS/RTP/SAVPF, TCP/RTP/AVP...: fmts are payload types.
    return "RTP" in proto.upper().split("/")
