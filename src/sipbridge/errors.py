"""Errors that cross layer boundaries and become Twirp errors at the API edge.

The codes are the Twirp error codes (https://twitchtv.github.io/twirp/docs/spec_v7.html#error-codes);
the HTTP status for each is fixed by that spec and by what the official LiveKit clients expect.
"""

from __future__ import annotations

from collections.abc import Mapping

TWIRP_HTTP_STATUS: Mapping[str, int] = {
    "canceled": 408,
    "unknown": 500,
    "invalid_argument": 400,
    "malformed": 400,
    "deadline_exceeded": 408,
    "not_found": 404,
    "bad_route": 404,
    "already_exists": 409,
    "permission_denied": 403,
    "unauthenticated": 401,
    "resource_exhausted": 429,
    "failed_precondition": 412,
    "aborted": 409,
    "out_of_range": 400,
    "unimplemented": 501,
    "internal": 500,
    "unavailable": 503,
    "dataloss": 500,
}


class ApiError(Exception):
    """A failure to report to an API client as a Twirp error.

    Raised anywhere below the API edge (validation in `telephony/`, lookups in `rooms/`); the edge
    turns it into a JSON error body. `meta` carries extra string pairs (e.g. `sip_status_code`).
    """

    def __init__(self, code: str, message: str, meta: Mapping[str, str] | None = None) -> None:
        if code not in TWIRP_HTTP_STATUS:
            raise ValueError(f"unknown Twirp code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.meta: dict[str, str] = dict(meta or {})

    @property
    def http_status(self) -> int:
        return TWIRP_HTTP_STATUS[self.code]

    def __repr__(self) -> str:
        return f"ApiError({self.code!r}, {self.message!r})"


def invalid_argument(message: str) -> ApiError:
    return ApiError("invalid_argument", message)


def not_found(message: str) -> ApiError:
    return ApiError("not_found", message)
