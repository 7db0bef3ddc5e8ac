"""The one error the media layer raises for bad input."""

from __future__ import annotations


class MediaError(ValueError):
    """Media bytes that do not follow their wire format (RTP, RTCP, ...).

    A `ValueError`, so callers that only know "bad input" still catch it; the transport edge counts
    and drops such datagrams instead of crashing the call.
    """
