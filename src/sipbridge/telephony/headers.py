"""Validation of the SIP header names and values users configure on trunks and rules.

RFC 3261 s25.1: `header-name = token`, `token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" /
"+" / "`" / "'" / "~")`. Values are kept to printable text on one line (no CR/LF: a newline in a
configured value would let a user inject arbitrary headers into our requests).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from sipbridge.errors import invalid_argument

TOKEN = re.compile(r"^[A-Za-z0-9\-.!%*_+`'~]+\Z")
MAX_HEADER_NAME = 255
MAX_HEADER_VALUE = 1024

# Headers the stack owns: a user-supplied value would break the dialog or the transaction.
# Full names and their RFC 3261 s7.3.3 / RFC 3515 / RFC 3903 compact forms.
FORBIDDEN_HEADER_NAMES = frozenset(
    {
        "accept",
        "accept-encoding",
        "accept-language",
        "allow",
        "allow-events",
        "call-id",
        "contact",
        "content-encoding",
        "content-length",
        "content-type",
        "cseq",
        "event",
        "expires",
        "from",
        "max-forwards",
        "record-route",
        "refer-to",
        "reply-to",
        "route",
        "to",
        "via",
        "authorization",
        "proxy-authorization",
        "www-authenticate",
        "proxy-authenticate",
        "require",
        "proxy-require",
        "supported",
        "rseq",
        "rack",
        "session-expires",
        "min-se",
        "i",
        "m",
        "f",
        "t",
        "v",
        "l",
        "c",
        "k",
        "e",
        "o",
        "u",
        "r",
        "x",
    }
)


def validate_header_name(name: str, field: str, *, allow_reserved: bool = False) -> None:
    """Raise `invalid_argument` naming `field` unless `name` is a usable SIP header name."""
    if not name:
        raise invalid_argument(f"{field}: header name must not be empty")
    if len(name) > MAX_HEADER_NAME:
        raise invalid_argument(f"{field}: header name too long (max {MAX_HEADER_NAME})")
    if not TOKEN.match(name):
        raise invalid_argument(f"{field}: header name {name!r} contains invalid characters")
    if not allow_reserved and name.lower() in FORBIDDEN_HEADER_NAMES:
        raise invalid_argument(f"{field}: header {name!r} is set by sipbridge and cannot be set")


def validate_header_value(name: str, value: str, field: str) -> None:
    if len(value) > MAX_HEADER_VALUE:
        raise invalid_argument(f"{field}: value of {name!r} too long (max {MAX_HEADER_VALUE})")
    for ch in value:
        if ch != "\t" and (ord(ch) < 0x20 or ord(ch) == 0x7F):
            raise invalid_argument(f"{field}: value of {name!r} contains a control character")


def validate_headers(headers: Mapping[str, str], field: str) -> None:
    """Custom headers we add to our requests/responses: names not reserved, values one line."""
    for name, value in headers.items():
        validate_header_name(name, field)
        validate_header_value(name, value, field)


def validate_headers_to_attributes(mapping: Mapping[str, str], field: str) -> None:
    """Keys are SIP header names to read (reading reserved headers such as To is allowed)."""
    for name, attribute in mapping.items():
        validate_header_name(name, field, allow_reserved=True)
        if not attribute:
            raise invalid_argument(f"{field}: attribute name for header {name!r} is empty")


def validate_attributes_to_headers(mapping: Mapping[str, str], field: str) -> None:
    """Values are SIP header names we will write, so reserved names are refused."""
    for attribute, name in mapping.items():
        if not attribute:
            raise invalid_argument(f"{field}: attribute name must not be empty")
        validate_header_name(name, field)
