"""`GET /metrics`: the Prometheus exposition, by `prometheus_client`, from a registry of our own.

Two kinds of series. Events that happen once per call or per API request are observed as they
happen on `prometheus_client` instruments (`Metrics.calls`, the histograms). Everything counted on
hot paths (SIP messages, media packets) stays a plain integer where it is counted and is read only
when `/metrics` is scraped (`Metrics.collect` turns the server's samples into metric families): no
prometheus call per packet. Names ending in `_total` are counters, the rest gauges, except the
grab-bags of counters kept under one name (`sipbridge_media`, `sipbridge_rtc_audio`), untyped.

Label values never come from what a caller sends: trunk ids (ours), SIP status codes (three
digits), Twirp methods (registered ones), each bounded (`BoundedLabel`), so that no caller can
explode the number of series.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4 as CONTENT_TYPE
from prometheus_client.registry import Collector

from sipbridge.server.api.twirp import TwirpServer
from sipbridge.server.media.leg_driver import CallMedia
from sipbridge.server.media.service import MediaService
from sipbridge.server.sip.user_agent import OutgoingCall, SipCall, SipUserAgent

Sample = tuple[str, dict[str, str], float]

MAX_LABEL_VALUES = 200  # distinct values of one label before the rest are "other"
UNTYPED = frozenset({"sipbridge_media", "sipbridge_rtc_audio"})

# Latency buckets (seconds): SIP answers within milliseconds, a phone answers within seconds.
SIP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
ANSWER_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)
API_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
JITTER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5)
LOSS_BUCKETS = (0.0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

HELP = {  # the series read on scrape; a name missing here is still exposed, with its name
    "sipbridge_api_requests_total": "Twirp API requests",
    "sipbridge_api_errors_total": "Twirp API errors by Twirp code",
    "sipbridge_http_errors_total": "HTTP errors answered, by surface and status",
    "sipbridge_console_streams": "Console live streams open (GET /console/live)",
    "sipbridge_console_signins_refused_total": "Console sign-ins refused (wrong or blocked)",
    "sipbridge_http_stalled_total": "HTTP connections cut: their client took nothing we sent",
    "sipbridge_rooms": "Rooms open",
    "sipbridge_participants": "Participants in rooms",
    "sipbridge_signal_sessions": "WebRTC signalling sessions",
    "sipbridge_signal_resumed_total": "Signalling sessions resumed",
    "sipbridge_signal_silent_total": "Signalling WebSockets ended after the ping timeout "
    "without a message",
    "sipbridge_signal_joins_total": "Signalling joins by protocol",
    "sipbridge_negotiation_refused_total": "WebRTC offers refused, by what was wrong",
    "sipbridge_data_refused_total": "Data packets refused",
    "sipbridge_data_undelivered_total": "Data packets not delivered",
    "sipbridge_inbound_trunks": "Inbound trunks configured",
    "sipbridge_outbound_trunks": "Outbound trunks configured",
    "sipbridge_dispatch_rules": "Dispatch rules configured",
    "sipbridge_call_log_dropped_total": "Call records the call log could not keep",
    "sipbridge_call_log_commits_total": "Call log write transactions (one fsync each with SQLite)",
    "sipbridge_call_log_records_total": "Call log records written (a call's states coalesce)",
    "sipbridge_calls_active": "Calls in progress, both directions (what --max-calls limits)",
    "sipbridge_calls_stuck": "Calls held with no deadline to end them (always 0)",
    "sipbridge_auth_blocks_total": "Source addresses blocked after failed digest auth",
    "sipbridge_auth_refused_while_blocked_total": "Requests refused from blocked addresses",
    "sipbridge_auth_blocked_sources": "Source addresses blocked now",
    "sipbridge_auth_failures_total": "Failed digest auth by trunk",
    "sipbridge_media": "RTP media counters (packets, sockets, legs)",
    "sipbridge_rtc_audio": "WebRTC audio counters",
    "sipbridge_agent_workers": "Agent workers connected",
    "sipbridge_agent_jobs": "Agent jobs running",
    "sipbridge_agent_total": "Agent dispatch outcomes",
    "sipbridge_inbound_total": "Inbound call outcomes",
    "sipbridge_outbound_total": "Outbound call outcomes",
    "sipbridge_transfers_total": "Transfer outcomes",
    "sipbridge_registrations": "Registrations to carriers by state",
    "sipbridge_registrations_total": "Registration outcomes",
    "sipbridge_sip_messages_total": "SIP messages by kind (received, sent, refused...)",
    "sipbridge_webhooks_total": "Webhook deliveries by outcome",
    "sipbridge_cluster_rooms_total": "Requests for rooms in a cluster: served here, handed on...",
    "sipbridge_load_refused_total": "Calls refused for load (503), by reason",
    "sipbridge_process_cpu_percent": "Process CPU over the last second, percent of one core",
}


class BoundedLabel:
    """The values one label has taken; past `limit` distinct ones, new values become "other"."""

    def __init__(self, limit: int = MAX_LABEL_VALUES) -> None:
        self.limit = limit
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) >= self.limit:
            return "other"
        self._seen.add(value)
        return value


def status_label(status: int) -> str:
    """A SIP status code as a label (RFC 3261 s7.2: three digits, 100-699), else "other"."""
    return str(status) if 100 <= status <= 699 else "other"


class Metrics:
    """The registry `/metrics` exposes, its instruments, and the samples read on scrape."""

    def __init__(self, samples: Callable[[], Iterable[Sample]] = list) -> None:
        # No `*_created` series beside each counter and histogram: a start time per series
        # doubles the exposition for nothing a rate() needs (a setting of the library's, global).
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        self.sources: list[Callable[[], Iterable[Sample]]] = [samples]  # read on scrape
        self._trunks = BoundedLabel()
        self._methods = BoundedLabel()
        r = self.registry
        self.calls = Counter(
            "sipbridge_calls",
            "Calls by direction, trunk id and final SIP status code",
            ["direction", "trunk", "code"],
            registry=r,
        )
        self.invite_trying = Histogram(
            "sipbridge_sip_invite_trying_seconds",
            "INVITE received to our 100 Trying sent (inbound)",
            registry=r,
            buckets=SIP_BUCKETS,
        )
        self.invite_answer = Histogram(
            "sipbridge_sip_invite_answer_seconds",
            "INVITE to 200 OK: inbound, received to our 200 sent; outbound, ours sent to theirs",
            ["direction"],
            registry=r,
            buckets=ANSWER_BUCKETS,
        )
        self.api_latency = Histogram(
            "sipbridge_api_request_seconds",
            "Twirp API request latency by method",
            ["method"],
            registry=r,
            buckets=API_BUCKETS,
        )
        self.media_jitter = Histogram(
            "sipbridge_media_jitter_seconds",
            "Interarrival jitter of each call leg's received RTP at its end (RFC 3550 A.8)",
            registry=r,
            buckets=JITTER_BUCKETS,
        )
        self.media_loss = Histogram(
            "sipbridge_media_loss_ratio",
            "Fraction of each call leg's RTP packets lost, at its end (RFC 3550 A.3)",
            registry=r,
            buckets=LOSS_BUCKETS,
        )
        self.loop_lag = Histogram(
            "sipbridge_event_loop_lag_seconds",
            "How late the event loop ran a timer (a probe every 100 ms)",
            registry=r,
            buckets=LAG_BUCKETS,
        )
        self.loop_lag_max = Gauge(
            "sipbridge_event_loop_lag_max_seconds",
            "The event loop's worst lag over the last second",
            registry=r,
        )
        for direction in ("inbound", "outbound"):  # both series exist from the start
            self.invite_answer.labels(direction)
        r.register(_Scraped(self))

    # -- observations, each once per call or request ----------------------------------------

    def observe(self, *, twirp: TwirpServer, ua: SipUserAgent, media: MediaService) -> None:
        """Take the API's latencies, the calls' INVITE timings and final statuses, and each call
        leg's receive quality as it ends."""
        twirp.on_latency = self.api_request
        ua.on_trying = self.invite_trying.observe
        ua.on_final = self.sip_call_final
        media.on_release = self.media_released

    def sip_call_final(self, call: SipCall, status: int, seconds: float) -> None:
        """A call's final SIP status, counted; the time its INVITE took to a 200."""
        direction = "outbound" if isinstance(call, OutgoingCall) else "inbound"
        self.call_ended(direction, call.trunk_id, status)
        if status == 200:
            self.invite_answer.labels(direction).observe(seconds)

    def media_released(self, leg: CallMedia) -> None:
        stats = leg.receiver.stats
        self.media_leg(jitter=stats.jitter_seconds, lost=stats.lost, received=stats.packets)

    def call_ended(self, direction: str, trunk_id: str, status: int) -> None:
        """A call's final SIP status (ours inbound, the trunk's outbound; 200 when answered)."""
        trunk = self._trunks(trunk_id) if trunk_id else "none"
        self.calls.labels(direction, trunk, status_label(status)).inc()

    def api_request(self, method: str, seconds: float) -> None:
        """A Twirp request: `method` is a registered "Service/Method", or "unknown"."""
        self.api_latency.labels(self._methods(method)).observe(seconds)

    def media_leg(self, *, jitter: float, lost: int, received: int) -> None:
        """One call leg's receive statistics at its end (none when it received nothing)."""
        expected = received + max(0, lost)
        if expected <= 0:
            return
        self.media_jitter.observe(jitter)
        self.media_loss.observe(max(0, lost) / expected)

    # -- exposition ------------------------------------------------------------------------

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def handler(self) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def metrics(_: web.Request) -> web.Response:
            # The classic text format (0.0.4), which every Prometheus version takes.
            return web.Response(body=self.render(), headers={"Content-Type": CONTENT_TYPE})

        return metrics


class _Scraped(Collector):
    """The server's samples, read at scrape time, as metric families."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        return []  # unknown until scraped (and not checked against the instruments' names)

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        samples = (sample for source in self.metrics.sources for sample in source())
        for name, labels, value in samples:
            family = families.get(name)
            if family is None:
                family = families[name] = _family(name)
            sample_name = name if family.type != "counter" else family.name + "_total"
            family.add_sample(sample_name, dict(labels), float(value))
        yield from families.values()


def _family(name: str) -> Metric:
    documentation = HELP.get(name, name)
    if name in UNTYPED:
        return Metric(name, documentation, "unknown")
    if name.endswith("_total"):
        return Metric(name.removesuffix("_total"), documentation, "counter")
    return Metric(name, documentation, "gauge")
