"""What `/metrics` reads from a running server at each scrape: its counters and gauges kept as
plain numbers where they are counted (server/api/metrics.py turns them into metric families)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from sipbridge.server.api.metrics import Sample

if TYPE_CHECKING:
    from sipbridge.server.app import Server


def scraped_samples(server: Server) -> list[Sample]:
    """Every sample, by the names the README lists (and tests and dashboards read)."""
    rooms = server.rooms.registry.rooms()
    out: list[Sample] = [
        ("sipbridge_api_requests_total", {}, server.twirp.requests),
        ("sipbridge_rooms", {}, len(rooms)),
        ("sipbridge_participants", {}, sum(len(r.participants) for r in rooms)),
        ("sipbridge_signal_sessions", {}, len(server.signal.sessions)),
        ("sipbridge_signal_resumed_total", {}, server.signal.resumed),
        ("sipbridge_signal_silent_total", {}, server.signal.silent),
        *[
            ("sipbridge_signal_joins_total", {"protocol": protocol}, n)
            for protocol, n in sorted(server.signal.joins.items())
        ],
        *[
            ("sipbridge_negotiation_refused_total", {"what": what}, n)
            for what, n in sorted(server.signal.negotiation_refused.items())
        ],
        ("sipbridge_data_refused_total", {}, server.signal.data_refused),
        ("sipbridge_data_undelivered_total", {}, server.signal.data_undelivered),
        *server.http_errors.samples(),
        ("sipbridge_console_streams", {}, len(server.console.streams)),
        ("sipbridge_console_signins_refused_total", {}, server.console.refused),
        ("sipbridge_http_stalled_total", {}, server.stalled_writes.cut + server.console.stalled),
        ("sipbridge_inbound_trunks", {}, len(server.sip_config.inbound)),
        ("sipbridge_outbound_trunks", {}, len(server.sip_config.outbound)),
        ("sipbridge_dispatch_rules", {}, len(server.sip_config.rules)),
    ]
    out.append(("sipbridge_call_log_dropped_total", {}, server.call_log.dropped))
    out.append(("sipbridge_call_log_commits_total", {}, server.call_log.commits))
    out.append(("sipbridge_call_log_records_total", {}, server.call_log.records_written))
    out.append(("sipbridge_calls_active", {}, server.calls_in_progress()))
    guard = server.inbound.auth.guard
    out.append(("sipbridge_auth_blocks_total", {}, guard.blocks))
    out.append(("sipbridge_auth_refused_while_blocked_total", {}, guard.refused))
    out.append(("sipbridge_auth_blocked_sources", {}, guard.blocked_count(time.monotonic())))
    out += [
        ("sipbridge_auth_failures_total", {"trunk": trunk or "none"}, n)
        for trunk, n in sorted(guard.trunk_failures.items())
    ]
    # Calls held with no deadline left to end them, or whose SIP side ended: always 0 (an
    # invariant the tests check after hostile input; alert on anything else).
    out.append(("sipbridge_calls_stuck", {}, server.inbound.stuck() + server.outbound.stuck()))
    out += [
        ("sipbridge_media", {"counter": name}, n)
        for name, n in sorted(server.media.samples().items())
    ]
    out += [
        ("sipbridge_rtc_audio", {"counter": name}, n)
        for name, n in sorted(server.signal.audio_samples().items())
    ]
    out += [
        ("sipbridge_egress_total", {"counter": name}, n)
        for name, n in sorted(server.egress.stats.items())
    ]
    out.append(("sipbridge_agent_workers", {}, len(server.agents.workers)))
    out.append(("sipbridge_agent_jobs", {}, len(server.agents.jobs)))
    out += [
        ("sipbridge_agent_total", {"outcome": name}, n)
        for name, n in sorted(server.agents.stats.items())
    ]
    out += [
        ("sipbridge_inbound_total", {"outcome": name}, n)
        for name, n in sorted(server.inbound.stats.items())
    ]
    out += [
        ("sipbridge_outbound_total", {"outcome": name}, n)
        for name, n in sorted(server.outbound.stats.items())
    ]
    out += [
        ("sipbridge_transfers_total", {"outcome": name}, n)
        for name, n in sorted(server.transfers.stats.items())
    ]
    out += [
        ("sipbridge_registrations", {"state": name}, n)
        for name, n in sorted(server.registrations.states().items())
    ]
    out += [
        ("sipbridge_registrations_total", {"outcome": name}, n)
        for name, n in sorted(server.registrations.stats.items())
    ]
    out += [
        ("sipbridge_sip_messages_total", {"kind": kind}, n)
        for kind, n in sorted(server.sip.endpoint.stats.items())
    ]
    out += [
        ("sipbridge_api_errors_total", {"code": code}, n)
        for code, n in sorted(server.twirp.errors.items())
    ]
    out += [
        ("sipbridge_webhooks_total", {"outcome": outcome}, n)
        for outcome, n in sorted(server.webhooks.stats.items())
    ]
    out += [
        ("sipbridge_cluster_rooms_total", {"event": event}, n)
        for event, n in sorted(server.cluster.samples().items())
    ]
    return out
