"""Every HTTP error the server answers, counted by surface and status for `/metrics`
(`sipbridge_http_errors_total{surface,status}`), whatever the surface: Twirp, the trace, nodes and
console GETs, the WebSocket handshakes, unknown paths. Labels never come from the request: the
surface is one of a fixed list, the status a three-digit code.

An exception a handler lets escape (a bug: input should be refused where it is parsed) is
logged with its traceback and answered as a Twirp `internal` error (JSON, 500) instead of
aiohttp's plain-text page, so that a client still reads a protocol error. What aiohttp refuses
before any handler runs (a request line or header over the limits, too many headers, bytes that
are no HTTP, a body that breaks its framing) it answers itself (400); those are counted as
surface "parser" from its log records, which say so at debug level in one line instead of an
ERROR with a traceback per request (a scanner's garbage would fill the log).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from sipbridge.errors import ApiError
from sipbridge.server.api.twirp import error_response

log = logging.getLogger(__name__)

# The first prefix a path starts with names its surface.
SURFACES = (
    ("/twirp/", "twirp"),
    ("/sipbridge/v1/calls/", "trace"),
    ("/sipbridge/v1/nodes", "nodes"),
    ("/console", "console"),
    ("/rtc", "rtc"),
    ("/agent", "agent"),
    ("/metrics", "metrics"),
    ("/healthz", "healthz"),
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def surface_of(path: str) -> str:
    for prefix, name in SURFACES:
        if path.startswith(prefix):
            return name
    return "other"


class HttpErrors:
    """The counts, and the aiohttp middleware that keeps them."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, int]] = Counter()

    def samples(self) -> list[tuple[str, dict[str, str], int]]:
        return [
            ("sipbridge_http_errors_total", {"surface": surface, "status": str(status)}, n)
            for (surface, status), n in sorted(self.counts.items())
        ]

    def parser_logger(self) -> logging.Logger:
        """The logger for aiohttp's connection handler (`handler_args={"logger": ...}`)."""
        logger = logging.Logger("sipbridge.http")  # this server's own, below "sipbridge"
        logger.parent = log
        logger.addFilter(self._parser_error)
        return logger

    def _parser_error(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, HttpProcessingError):
            return True
        self.counts["parser", error.code if 400 <= error.code <= 599 else 400] += 1
        log.debug("bad HTTP request: %s", str(error.message)[:200])
        return False

    def _count(self, request: web.Request, status: int) -> None:
        self.counts[surface_of(request.path), status if 100 <= status <= 599 else 500] += 1

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # aiohttp's own: 404 and 405 for unknown routes
            self._count(request, exc.status)
            raise
        except Exception:
            self._count(request, 500)
            if request.writer.output_size > 0:  # a stream begun: aiohttp ends the connection
                raise
            log.exception("HTTP %s %s failed", request.method, request.path[:200])
            return error_response(ApiError("internal", "internal server error"))
        if response.status >= 400:
            self._count(request, response.status)
        return response
