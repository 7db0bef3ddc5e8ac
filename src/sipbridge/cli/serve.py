"""`sipbridge serve`: its flags, and the server run with the settings they make."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sipbridge.config import ConfigError, build_settings


def add_serve_parser(sub: Any) -> None:
    """`sipbridge serve` and its flags (the README's configuration table lists them)."""
    p = sub.add_parser("serve", help="run the server")
    p.add_argument("--dev", action="store_true", help="development mode: key devkey/secret")
    p.add_argument("--http", metavar="HOST:PORT", help="API and WebSocket address (127.0.0.1:7880)")
    p.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve /metrics on this address instead of the API's (for a private network)",
    )
    p.add_argument("--sip", metavar="HOST:PORT", help="SIP UDP+TCP address (127.0.0.1:5060)")
    p.add_argument("--sip-tls", metavar="HOST:PORT", help="SIP over TLS address (off)")
    p.add_argument("--tls-cert", metavar="FILE", help="PEM certificate chain for --sip-tls")
    p.add_argument("--tls-key", metavar="FILE", help="PEM private key for --sip-tls")
    p.add_argument(
        "--tls-ca", metavar="FILE", help="PEM CAs for trunks' TLS certificates (system's)"
    )
    p.add_argument("--rtp-ports", metavar="LO-HI", help="UDP ports for RTP (10000-20000)")
    p.add_argument(
        "--media-ip", metavar="IP", help="address for RTP and SDP (default: the SIP host)"
    )
    p.add_argument(
        "--rtc-ip",
        metavar="IP",
        action="append",
        help="address for WebRTC ICE candidates (repeatable; default: the media address)",
    )
    p.add_argument("--rtc-ports", metavar="LO-HI", help="UDP ports for WebRTC (50000-60000)")
    p.add_argument("--db", metavar="PATH", help="SQLite database file (./sipbridge.db)")
    p.add_argument(
        "--redis",
        metavar="URL",
        help="keep trunks, rules and the call log in Redis, shared by several nodes, instead "
        "of --db: redis://HOST:PORT/DB",
    )
    p.add_argument("--redis-prefix", metavar="PREFIX", help="start of every Redis key (sipbridge:)")
    p.add_argument(
        "--call-log-max",
        type=int,
        metavar="N",
        help="calls the log keeps in Redis; the oldest beyond are removed (1000000)",
    )
    p.add_argument(
        "--call-log-days",
        type=int,
        metavar="DAYS",
        help="calls older than this are removed from the call log, hourly (30; 0: kept)",
    )
    p.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="text (default) or json: one object per line, with call_id, room and "
        "participant on every line about a call, and a call_end line per call",
    )
    p.add_argument("--keys", metavar="KEY:SECRET", action="append", help="API key (repeatable)")
    p.add_argument("--webhook", metavar="URL", action="append", help="webhook URL (repeatable)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--max-calls", type=int, metavar="N", help="concurrent calls (1000)")
    p.add_argument(
        "--max-cpu",
        type=float,
        metavar="PERCENT",
        help="new calls get 503 while the process uses more than this percent of one core, or "
        "while its event loop lags (--max-lag); /healthz says not ready meanwhile (90)",
    )
    p.add_argument(
        "--max-lag",
        type=int,
        metavar="MS",
        help="new calls get 503 while the event loop's mean lag over the last second passes "
        "this many milliseconds (100)",
    )
    p.add_argument(
        "--session-min-se",
        type=int,
        metavar="SECONDS",
        help="RFC 4028 session timers: the shortest session interval taken, our Min-SE (90; "
        "below 90 only for peers and tests that need it)",
    )
    p.add_argument(
        "--auth-max-failures",
        type=int,
        metavar="N",
        help="wrong digest answers from one address before it is blocked (10)",
    )
    p.add_argument(
        "--auth-block",
        type=int,
        metavar="SECONDS",
        help="how long the first block lasts; each next one twice as long, up to an hour (60)",
    )
    p.add_argument(
        "--reveal-numbers",
        action="store_true",
        help="answer 404 for numbers no trunk has, even where trunks ask for passwords (by "
        "default such calls are challenged and refused like a wrong password: no enumeration)",
    )
    p.add_argument(
        "--sip-rate",
        type=int,
        metavar="N",
        help="new INVITEs/REGISTERs per second from one address, twice that in a burst; "
        "beyond: 503, and no answer to a flood (50)",
    )
    p.add_argument(
        "--allow-from",
        metavar="CIDR",
        action="append",
        help="take SIP requests only from these addresses (repeatable; default: any)",
    )
    p.add_argument(
        "--room-max-callers",
        type=int,
        metavar="N",
        help="SIP participants in one room at once (0: no cap, the default)",
    )
    p.add_argument(
        "--room-join-rate",
        type=int,
        metavar="N",
        help="calls joining one room per second, twice that at once; 0 for no cap (50)",
    )
    p.add_argument(
        "--sip-message-timeout",
        type=int,
        metavar="SECONDS",
        help="a SIP message begun on TCP/TLS must be complete within this, however it "
        "trickles in; else the connection is closed (10)",
    )
    p.add_argument(
        "--http-idle-timeout",
        type=int,
        metavar="SECONDS",
        help="an HTTP connection idle this long, or whose request headers take longer, is "
        "closed (20; keep it over 15, the Python clients' own reuse limit)",
    )
    p.add_argument(
        "--trace-rtp",
        nargs="+",
        metavar="TRUNK_ID",
        help="trace the RTP headers of these trunks' calls in their SIP traces ('all': every "
        "call); `sipbridge call rtp ID` does it for one live call",
    )
    p.add_argument(
        "--recordings-dir",
        "--recordings",
        dest="recordings_dir",
        metavar="DIR",
        help="where recordings (the Egress API) are written; no filepath may leave it "
        "(./recordings)",
    )
    p.add_argument(
        "--node-id", metavar="ID", help="this node's name in `node list` and Redis (hostname-pid)"
    )
    p.add_argument(
        "--drain-timeout",
        type=int,
        metavar="SECONDS",
        help="after SIGTERM, new calls get 503 and the calls up may run this long before they "
        "are hung up and the node exits; a second SIGTERM or SIGINT ends them at once (30)",
    )
    p.add_argument("--config", metavar="FILE", help="YAML file with the same settings")


def serve(args: argparse.Namespace) -> int:
    """Run the server with the settings of the flags, the environment and the YAML file."""
    try:
        settings = build_settings(
            dev=args.dev,
            http=args.http,
            metrics=args.metrics,
            sip=args.sip,
            sip_tls=args.sip_tls,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_ca=args.tls_ca,
            rtp_ports=args.rtp_ports,
            media_ip=args.media_ip,
            rtc_ips=args.rtc_ip,
            rtc_ports=args.rtc_ports,
            db=args.db,
            redis=args.redis,
            redis_prefix=args.redis_prefix,
            call_log_max=args.call_log_max,
            call_log_days=args.call_log_days,
            log_format=args.log_format,
            keys=args.keys,
            webhooks=args.webhook,
            log_level=args.log_level,
            max_calls=args.max_calls,
            max_cpu=args.max_cpu,
            max_lag_ms=args.max_lag,
            session_min_se=args.session_min_se,
            auth_max_failures=args.auth_max_failures,
            auth_block=args.auth_block,
            reveal_numbers=args.reveal_numbers,
            sip_rate=args.sip_rate,
            allow_from=args.allow_from,
            room_max_callers=args.room_max_callers,
            room_join_rate=args.room_join_rate,
            sip_message_timeout=args.sip_message_timeout,
            http_idle_timeout=args.http_idle_timeout,
            trace_rtp=args.trace_rtp,
            recordings_dir=args.recordings_dir,
            node_id=args.node_id,
            drain_timeout=args.drain_timeout,
            config_file=args.config,
        )
    except ConfigError as exc:
        print(f"sipbridge serve: {exc}", file=sys.stderr)
        return 2
    from sipbridge.server import call_logging  # noqa: PLC0415

    call_logging.configure(settings.log_level, settings.log_format)
    import sqlite3  # noqa: PLC0415

    from sipbridge.server.process import run  # noqa: PLC0415 - keep client commands light
    from sipbridge.store import StoreUnavailable  # noqa: PLC0415

    try:
        run(settings)
    except StoreUnavailable as exc:
        print(f"sipbridge serve: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"sipbridge serve: {exc}", file=sys.stderr)
        return 1
    except sqlite3.Error as exc:
        print(f"sipbridge serve: cannot open database {settings.db}: {exc}", file=sys.stderr)
        return 1
    return 0
