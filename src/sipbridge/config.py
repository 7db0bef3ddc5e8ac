"""Settings for `sipbridge serve`: defaults, then a YAML file, then environment, then flags."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

DEV_KEY = "devkey"
DEV_SECRET = "secret"
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")


class ConfigError(ValueError):
    """A setting that cannot be used; the message names it."""


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    dev: bool = False
    http: HostPort = HostPort("127.0.0.1", 7880)
    sip: HostPort = HostPort("127.0.0.1", 5060)
    sip_tls: HostPort | None = None
    metrics: HostPort | None = None  # /metrics on its own listener (then not on the API's)
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""  # PEM of the CAs trunks' TLS certificates must chain to; "" = the system's
    rtp_ports: tuple[int, int] = (10000, 20000)
    media_ip: str = ""  # the address RTP binds to and SDP advertises; "" = the SIP host
    rtc_ips: tuple[str, ...] = ()  # WebRTC ICE host candidates; () = the media address
    rtc_ports: tuple[int, int] = (50000, 60000)  # WebRTC ICE sockets (LiveKit's default range)
    db: str = "./sipbridge.db"
    redis: str = ""  # redis://HOST:PORT/DB: records shared by several nodes, instead of `db`
    redis_prefix: str = "sipbridge:"  # every Redis key starts with it (clusters sharing one)
    call_log_max: int = 1_000_000  # calls kept in Redis; the oldest beyond are trimmed
    call_log_days: int = 30  # calls older than this are removed from the log (0: kept)
    log_format: str = "text"  # or "json": one object per line, with the call's ids
    keys: Mapping[str, str] = field(default_factory=dict)
    webhooks: tuple[str, ...] = ()
    log_level: str = "info"
    max_calls: int = 1000
    # new calls refused (503) while the process uses more than this percent of one core, as
    # LiveKit's SIP service does above 90% (and while the event loop lags, telephony/load.py)
    max_cpu: float = 90.0
    # ... and while the event loop's mean lag over the last second passes this many milliseconds
    max_lag_ms: int = 100
    session_min_se: int = 90  # RFC 4028: the shortest session interval we take (Min-SE)
    auth_max_failures: int = 10  # wrong digest answers from one address before it is blocked
    auth_block: int = 60  # the first block, in seconds; each next one twice as long (to 1 h)
    conceal_numbers: bool = True  # unknown numbers answered as a wrong password would be
    # new INVITEs/REGISTERs per second from one address (burst: twice). A quarter of what one
    # node sets up (bench/inbound.py): one address cannot take the loop from everyone else.
    sip_rate: int = 50
    allow_from: tuple[str, ...] = ()  # CIDRs whose requests are taken; () = every address
    room_max_callers: int = 0  # SIP participants in one room at once (0: no cap)
    room_join_rate: int = 50  # calls joining one room per second, twice that at once (0: off)
    sip_message_timeout: int = 10  # seconds a SIP message begun on TCP/TLS has to complete
    # seconds an HTTP connection may idle or take over its headers: longer than the 15 s that
    # aiohttp's client (the official livekit-api's) reuses a pooled connection for, or a request
    # sent on one as it reaches our 15 s crossed our close of it (ClientConnectionResetError)
    http_idle_timeout: int = 20
    trace_rtp: tuple[str, ...] = ()  # trunk ids whose calls' RTP headers are traced ("all")
    recordings_dir: str = "./recordings"  # where Egress writes files; no filepath leaves it
    node_id: str = ""  # this node's name in the cluster; "" = hostname-pid
    drain_timeout: int = 30  # seconds a node's calls may run after SIGTERM before it hangs up

    @property
    def media_address(self) -> str:
        """Where RTP is bound and what SDP advertises: `--media-ip`, else the SIP host."""
        return self.media_ip or self.sip.host

    @property
    def rtc_addresses(self) -> tuple[str, ...]:
        """Where WebRTC gathers and advertises ICE candidates: `--rtc-ip`, else the media IP."""
        return self.rtc_ips or (self.media_address,)

    @property
    def webhook_key(self) -> tuple[str, str]:
        """The key pair that signs webhooks: the first configured one."""
        key = next(iter(self.keys))
        return key, self.keys[key]


def parse_hostport(value: str, name: str) -> HostPort:
    text = value.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ConfigError(f"{name}: expected [IPv6]:PORT, got {value!r}")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ConfigError(f"{name}: expected HOST:PORT, got {value!r}")
    if not host:
        raise ConfigError(f"{name}: missing host in {value!r}")
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"{name}: port must be a number, got {value!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"{name}: port out of range in {value!r}")
    return HostPort(host, port)


def _bare(host: str) -> str:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return "127.0.0.1"  # a name: resolved when bound, advertised as given
    return host


def parse_ip(value: str, name: str) -> str:
    """An IP address literal (SDP `c=` needs an address the peer can send to)."""
    try:
        address = ipaddress.ip_address(value.strip().strip("[]"))
    except ValueError:
        raise ConfigError(f"{name}: expected an IP address, got {value!r}") from None
    if address.is_unspecified:
        raise ConfigError(f"{name}: {value} cannot be advertised; name the address to use")
    return str(address)


def parse_port_range(value: str, name: str) -> tuple[int, int]:
    lo_text, sep, hi_text = value.partition("-")
    try:
        lo, hi = int(lo_text), int(hi_text)
    except ValueError:
        raise ConfigError(f"{name}: expected LO-HI, got {value!r}") from None
    if not sep or not 1024 <= lo <= hi <= 65535:
        raise ConfigError(f"{name}: expected LO-HI within 1024-65535, got {value!r}")
    return lo, hi


def parse_redis_url(value: str, name: str) -> str:
    """A Redis URL as redis-py takes it: redis://[[USER]:PASSWORD@]HOST[:PORT][/DB],
    rediss:// (TLS) or unix://PATH."""
    text = value.strip()
    if not text.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"{name}: expected redis://HOST:PORT/DB, got {value!r}")
    if text.startswith(("redis://", "rediss://")):
        host = urlsplit(text).hostname
        if not host:
            raise ConfigError(f"{name}: missing host in {value!r}")
        try:
            urlsplit(text).port  # noqa: B018 - raises on a port that is not a number
        except ValueError:
            raise ConfigError(f"{name}: bad port in {value!r}") from None
    return text


def parse_key(value: str, name: str) -> tuple[str, str]:
    key, sep, secret = value.partition(":")
    if not sep or not key or not secret:
        raise ConfigError(f"{name}: expected KEY:SECRET")
    return key, secret


def _from_yaml(path: str) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"--config: cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config: {path} is not valid YAML: {exc}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(f"--config: {path} must hold a mapping of settings")
    known = {
        "dev",
        "http",
        "metrics",
        "sip",
        "sip_tls",
        "tls_cert",
        "tls_key",
        "tls_ca",
        "rtp_ports",
        "media_ip",
        "rtc_ip",
        "rtc_ports",
        "db",
        "redis",
        "redis_prefix",
        "call_log_max",
        "call_log_days",
        "log_format",
        "keys",
        "webhook",
        "webhooks",
        "log_level",
        "max_calls",
        "max_cpu",
        "max_lag_ms",
        "session_min_se",
        "auth_max_failures",
        "auth_block",
        "conceal_numbers",
        "sip_rate",
        "allow_from",
        "room_max_callers",
        "room_join_rate",
        "sip_message_timeout",
        "http_idle_timeout",
        "trace_rtp",
        "recordings_dir",
        "node_id",
        "drain_timeout",
    }
    unknown = set(doc) - known
    if unknown:
        raise ConfigError(f"--config: unknown setting(s): {', '.join(sorted(unknown))}")
    return doc


def parse_network(value: str, name: str) -> str:
    """An address or CIDR (`192.0.2.0/24`, `2001:db8::/32`), normalised."""
    try:
        return str(ipaddress.ip_network(value.strip(), strict=False))
    except ValueError:
        raise ConfigError(f"{name}: {value!r} is not an address or CIDR") from None


def _whole(doc: Mapping[str, object], name: str, flag: int | None, lo: int, hi: int) -> int:
    """A whole-number setting from its flag, else the file; 0 when neither sets it."""
    value = flag if flag is not None else doc.get(name)
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ConfigError(f"{name}: expected a whole number from {lo} to {hi}")
    return value


NODE_ID_MAX = 128


def _node_settings(
    s: Settings, doc: Mapping[str, object], node_id: str | None, drain_timeout: int | None
) -> Settings:
    """`--node-id` (letters, digits and `._-`: it is part of Redis keys) and `--drain-timeout`."""
    name = node_id if node_id is not None else doc.get("node_id", "")
    name = str(name).strip()
    allowed = all(c.isascii() and (c.isalnum() or c in "._-") for c in name)
    if len(name) > NODE_ID_MAX or not allowed:
        raise ConfigError(f"node_id: up to {NODE_ID_MAX} letters, digits, '.', '_' or '-'")
    if drain_timeout is not None or "drain_timeout" in doc:
        s = replace(s, drain_timeout=_whole(doc, "drain_timeout", drain_timeout, 0, 86400))
    return replace(s, node_id=name)


def _max_cpu(doc: Mapping[str, object], flag: float | None, default: float) -> float:
    """`--max-cpu`: percent of one core, above 0 (several threads may pass 100)."""
    value = flag if flag is not None else doc.get("max_cpu", default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 10_000:
        raise ConfigError("max_cpu: expected a percent of one core, above 0")
    return float(value)


def build_settings(
    *,
    dev: bool = False,
    http: str | None = None,
    metrics: str | None = None,
    sip: str | None = None,
    sip_tls: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    tls_ca: str | None = None,
    rtp_ports: str | None = None,
    media_ip: str | None = None,
    rtc_ips: list[str] | None = None,
    rtc_ports: str | None = None,
    db: str | None = None,
    redis: str | None = None,
    redis_prefix: str | None = None,
    call_log_max: int | None = None,
    call_log_days: int | None = None,
    log_format: str | None = None,
    keys: list[str] | None = None,
    webhooks: list[str] | None = None,
    log_level: str | None = None,
    max_calls: int | None = None,
    max_cpu: float | None = None,
    max_lag_ms: int | None = None,
    session_min_se: int | None = None,
    auth_max_failures: int | None = None,
    auth_block: int | None = None,
    reveal_numbers: bool = False,
    sip_rate: int | None = None,
    allow_from: list[str] | None = None,
    room_max_callers: int | None = None,
    room_join_rate: int | None = None,
    sip_message_timeout: int | None = None,
    http_idle_timeout: int | None = None,
    trace_rtp: list[str] | None = None,
    recordings_dir: str | None = None,
    node_id: str | None = None,
    drain_timeout: int | None = None,
    config_file: str | None = None,
    environ: Mapping[str, str] = os.environ,
) -> Settings:
    """Combine the sources; later ones win: defaults, YAML, environment, flags."""
    doc = _from_yaml(config_file) if config_file else {}
    file_dev = doc.get("dev", False)
    if not isinstance(file_dev, bool):
        raise ConfigError("dev: expected true or false")
    dev = dev or file_dev
    s = Settings(dev=dev)
    if "http" in doc:
        s = replace(s, http=parse_hostport(str(doc["http"]), "http"))
    if "metrics" in doc:
        s = replace(s, metrics=parse_hostport(str(doc["metrics"]), "metrics"))
    if "sip" in doc:
        s = replace(s, sip=parse_hostport(str(doc["sip"]), "sip"))
    if "sip_tls" in doc:
        s = replace(s, sip_tls=parse_hostport(str(doc["sip_tls"]), "sip_tls"))
    if "tls_cert" in doc:
        s = replace(s, tls_cert=str(doc["tls_cert"]))
    if "tls_key" in doc:
        s = replace(s, tls_key=str(doc["tls_key"]))
    if "tls_ca" in doc:
        s = replace(s, tls_ca=str(doc["tls_ca"]))
    if "rtp_ports" in doc:
        s = replace(s, rtp_ports=parse_port_range(str(doc["rtp_ports"]), "rtp_ports"))
    if "media_ip" in doc:
        s = replace(s, media_ip=parse_ip(str(doc["media_ip"]), "media_ip"))
    if "rtc_ip" in doc:
        raw = doc["rtc_ip"]
        items = raw if isinstance(raw, list) else [raw]
        s = replace(s, rtc_ips=tuple(parse_ip(str(item), "rtc_ip") for item in items))
    if "rtc_ports" in doc:
        s = replace(s, rtc_ports=parse_port_range(str(doc["rtc_ports"]), "rtc_ports"))
    if "db" in doc:
        s = replace(s, db=str(doc["db"]))
    if "log_level" in doc:
        s = replace(s, log_level=str(doc["log_level"]).lower())
    file_keys: dict[str, str] = {}
    raw_keys = doc.get("keys") or {}
    if isinstance(raw_keys, dict):
        for k, v in raw_keys.items():
            if not k or v is None or not str(v):
                raise ConfigError(f"keys: {k!r} needs a secret")
            file_keys[str(k)] = str(v)
    elif isinstance(raw_keys, list):
        file_keys = dict(parse_key(str(item), "keys") for item in raw_keys)
    else:
        raise ConfigError("keys: expected a mapping KEY: SECRET or a list of KEY:SECRET")
    raw_hooks = doc.get("webhooks", doc.get("webhook")) or []
    if isinstance(raw_hooks, str):
        raw_hooks = [raw_hooks]
    if not isinstance(raw_hooks, list):
        raise ConfigError("webhooks: expected a URL or a list of URLs")
    file_hooks = [str(u) for u in raw_hooks]

    if http:
        s = replace(s, http=parse_hostport(http, "--http"))
    if metrics:
        s = replace(s, metrics=parse_hostport(metrics, "--metrics"))
    if sip:
        s = replace(s, sip=parse_hostport(sip, "--sip"))
    if sip_tls:
        s = replace(s, sip_tls=parse_hostport(sip_tls, "--sip-tls"))
    if tls_cert:
        s = replace(s, tls_cert=tls_cert)
    if tls_key:
        s = replace(s, tls_key=tls_key)
    if tls_ca:
        s = replace(s, tls_ca=tls_ca)
    if s.tls_ca and not os.path.isfile(s.tls_ca):
        raise ConfigError(f"--tls-ca: {s.tls_ca} is not a file")
    if s.sip_tls is not None and not (s.tls_cert and s.tls_key):
        raise ConfigError("--sip-tls needs --tls-cert and --tls-key")
    if rtp_ports:
        s = replace(s, rtp_ports=parse_port_range(rtp_ports, "--rtp-ports"))
    if media_ip:
        s = replace(s, media_ip=parse_ip(media_ip, "--media-ip"))
    if rtc_ips:
        s = replace(s, rtc_ips=tuple(parse_ip(item, "--rtc-ip") for item in rtc_ips))
    if rtc_ports:
        s = replace(s, rtc_ports=parse_port_range(rtc_ports, "--rtc-ports"))
    if s.rtc_ports[0] <= s.rtp_ports[1] and s.rtp_ports[0] <= s.rtc_ports[1]:
        raise ConfigError(
            f"--rtc-ports {s.rtc_ports[0]}-{s.rtc_ports[1]} overlaps "
            f"--rtp-ports {s.rtp_ports[0]}-{s.rtp_ports[1]}"
        )
    if db:
        s = replace(s, db=db)
    if "redis" in doc:
        s = replace(s, redis=parse_redis_url(str(doc["redis"]), "redis"))
    if redis:
        s = replace(s, redis=parse_redis_url(redis, "--redis"))
    if "redis_prefix" in doc:
        s = replace(s, redis_prefix=str(doc["redis_prefix"]))
    if redis_prefix is not None:
        s = replace(s, redis_prefix=redis_prefix)
    if call_log_max is not None or "call_log_max" in doc:
        s = replace(s, call_log_max=_whole(doc, "call_log_max", call_log_max, 1, 1_000_000_000))
    if log_level:
        s = replace(s, log_level=log_level.lower())
    if call_log_days is not None or "call_log_days" in doc:
        s = replace(s, call_log_days=_whole(doc, "call_log_days", call_log_days, 0, 100_000))
    raw_format = log_format or doc.get("log_format")
    if raw_format is not None:
        if str(raw_format).lower() not in LOG_FORMATS:
            raise ConfigError(f"log_format: expected one of {', '.join(LOG_FORMATS)}")
        s = replace(s, log_format=str(raw_format).lower())
    if "max_calls" in doc and max_calls is None:
        max_calls = doc["max_calls"]
    if max_calls is not None:
        if not isinstance(max_calls, int) or isinstance(max_calls, bool) or max_calls < 1:
            raise ConfigError("max_calls: expected a positive whole number")
        s = replace(s, max_calls=max_calls)
    if "session_min_se" in doc and session_min_se is None:
        session_min_se = doc["session_min_se"]
    if session_min_se is not None:
        if (
            not isinstance(session_min_se, int)
            or isinstance(session_min_se, bool)
            or not 1 <= session_min_se <= 86400
        ):
            raise ConfigError("session_min_se: expected whole seconds, 1 to 86400")
        s = replace(s, session_min_se=session_min_se)
    s = replace(
        s,
        auth_max_failures=_whole(doc, "auth_max_failures", auth_max_failures, 1, 1_000_000)
        or s.auth_max_failures,
        auth_block=_whole(doc, "auth_block", auth_block, 1, 86400) or s.auth_block,
    )
    s = replace(
        s,
        sip_rate=_whole(doc, "sip_rate", sip_rate, 1, 1_000_000) or s.sip_rate,
        room_max_callers=s.room_max_callers
        if room_max_callers is None and "room_max_callers" not in doc
        else _whole(doc, "room_max_callers", room_max_callers, 0, 1_000_000),
        room_join_rate=s.room_join_rate
        if room_join_rate is None and "room_join_rate" not in doc
        else _whole(doc, "room_join_rate", room_join_rate, 0, 1_000_000),
    )
    s = replace(
        s,
        sip_message_timeout=_whole(doc, "sip_message_timeout", sip_message_timeout, 1, 3600)
        or s.sip_message_timeout,
        http_idle_timeout=_whole(doc, "http_idle_timeout", http_idle_timeout, 1, 3600)
        or s.http_idle_timeout,
    )
    s = replace(s, max_cpu=_max_cpu(doc, max_cpu, s.max_cpu))
    s = replace(s, max_lag_ms=_whole(doc, "max_lag_ms", max_lag_ms, 1, 60_000) or s.max_lag_ms)
    raw_trace = trace_rtp if trace_rtp else doc.get("trace_rtp", [])
    trunks = raw_trace if isinstance(raw_trace, list) else [raw_trace]
    s = replace(s, trace_rtp=tuple(str(t).strip() for t in trunks if str(t).strip()))
    recordings = recordings_dir or doc.get("recordings_dir") or s.recordings_dir
    if not isinstance(recordings, str):
        raise ConfigError("recordings_dir: expected a directory path")
    s = replace(s, recordings_dir=recordings)
    s = _node_settings(s, doc, node_id, drain_timeout)
    raw_allow = allow_from if allow_from else doc.get("allow_from", [])
    items = raw_allow if isinstance(raw_allow, list) else [raw_allow]
    s = replace(s, allow_from=tuple(parse_network(str(item), "allow_from") for item in items))
    conceal = doc.get("conceal_numbers", True)
    if not isinstance(conceal, bool):
        raise ConfigError("conceal_numbers: expected true or false")
    s = replace(s, conceal_numbers=conceal and not reveal_numbers)
    if not s.media_ip and ipaddress.ip_address(_bare(s.sip.host)).is_unspecified:
        raise ConfigError(f"--sip {s.sip} binds every address: name the one SDP gives, --media-ip")
    if s.log_level not in LOG_LEVELS:
        raise ConfigError(f"log_level: expected one of {', '.join(LOG_LEVELS)}")

    resolved: dict[str, str] = {}
    if keys:
        resolved = dict(parse_key(k, "--keys") for k in keys)
    elif environ.get("LIVEKIT_API_KEY") and environ.get("LIVEKIT_API_SECRET"):
        resolved = {environ["LIVEKIT_API_KEY"]: environ["LIVEKIT_API_SECRET"]}
    elif file_keys:
        resolved = file_keys
    elif dev:
        resolved = {DEV_KEY: DEV_SECRET}
    if not resolved:
        raise ConfigError(
            "no API keys: give --keys KEY:SECRET, set LIVEKIT_API_KEY and LIVEKIT_API_SECRET, "
            "or run with --dev"
        )
    s = replace(s, keys=resolved)

    hooks = tuple(webhooks or file_hooks)
    for url in hooks:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"--webhook: {url!r} is not an http(s) URL")
    return replace(s, webhooks=hooks)
