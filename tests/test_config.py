"""`sipbridge serve` settings: defaults < YAML file < environment < flags."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sipbridge.config import (
    DEV_KEY,
    DEV_SECRET,
    ConfigError,
    HostPort,
    Settings,
    build_settings,
    parse_hostport,
    parse_key,
    parse_port_range,
)

NO_ENV: dict[str, str] = {}
ENV_KEYS = {"LIVEKIT_API_KEY": "envkey", "LIVEKIT_API_SECRET": "envsecret"}


@pytest.fixture
def yaml_file(tmp_path: Path) -> Any:
    def write(text: str) -> str:
        path = tmp_path / "sipbridge.yaml"
        path.write_text(text)
        return str(path)

    return write


def build(**kwargs: Any) -> Settings:
    kwargs.setdefault("environ", NO_ENV)
    return build_settings(**kwargs)


def config_error(**kwargs: Any) -> str:
    with pytest.raises(ConfigError) as info:
        build(**kwargs)
    return str(info.value)


# -- defaults and --dev ---------------------------------------------------------------------------


def test_defaults_with_dev() -> None:
    s = build(dev=True)
    assert s == Settings(dev=True, keys={DEV_KEY: DEV_SECRET})
    assert (DEV_KEY, DEV_SECRET) == ("devkey", "secret")
    assert s.http == HostPort("127.0.0.1", 7880)
    assert s.sip == HostPort("127.0.0.1", 5060)
    assert s.rtp_ports == (10000, 20000)
    assert s.rtc_ports == (50000, 60000)
    assert s.db == "./sipbridge.db"
    assert s.webhooks == ()
    assert s.log_level == "info"
    assert s.webhook_key == ("devkey", "secret")


def test_missing_keys_is_an_error() -> None:
    message = config_error()
    assert "no API keys" in message
    assert "--keys" in message and "LIVEKIT_API_KEY" in message and "--dev" in message


@pytest.mark.parametrize(
    "environ",
    [
        {"LIVEKIT_API_KEY": "k"},
        {"LIVEKIT_API_SECRET": "s"},
        {"LIVEKIT_API_KEY": "k", "LIVEKIT_API_SECRET": ""},
        {"LIVEKIT_API_KEY": "", "LIVEKIT_API_SECRET": "s"},
    ],
)
def test_half_set_environment_keys_are_ignored(environ: dict[str, str]) -> None:
    assert "no API keys" in config_error(environ=environ)
    assert build(dev=True, environ=environ).keys == {DEV_KEY: DEV_SECRET}


# -- key precedence: dev < YAML < environment < flags ---------------------------------------------


def test_yaml_keys_beat_dev(yaml_file: Any) -> None:
    s = build(dev=True, config_file=yaml_file("keys:\n  filekey: filesecret\n"))
    assert s.keys == {"filekey": "filesecret"}


def test_environment_keys_beat_yaml(yaml_file: Any) -> None:
    s = build(config_file=yaml_file("keys:\n  filekey: filesecret\n"), environ=ENV_KEYS)
    assert s.keys == {"envkey": "envsecret"}


def test_flag_keys_beat_environment_and_yaml(yaml_file: Any) -> None:
    s = build(
        dev=True,
        keys=["k1:s1", "k2:s2"],
        config_file=yaml_file("keys:\n  filekey: filesecret\n"),
        environ=ENV_KEYS,
    )
    assert s.keys == {"k1": "s1", "k2": "s2"}
    assert s.webhook_key == ("k1", "s1")


def test_environment_keys_beat_dev() -> None:
    assert build(dev=True, environ=ENV_KEYS).keys == {"envkey": "envsecret"}


def test_yaml_keys_as_list(yaml_file: Any) -> None:
    s = build(config_file=yaml_file("keys:\n  - a:1\n  - b:2:with:colons\n"))
    assert s.keys == {"a": "1", "b": "2:with:colons"}


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("keys: just-a-string\n", "keys: expected a mapping"),
        ("keys: 5\n", "keys: expected a mapping"),
        ("keys:\n  - nocolon\n", "keys: expected KEY:SECRET"),
        ("keys:\n  - ':secret'\n", "keys: expected KEY:SECRET"),
        ("keys:\n  - 'key:'\n", "keys: expected KEY:SECRET"),
    ],
)
def test_bad_yaml_keys(yaml_file: Any, text: str, fragment: str) -> None:
    assert fragment in config_error(dev=True, config_file=yaml_file(text))


def test_yaml_key_without_secret_is_refused(yaml_file: Any) -> None:
    with pytest.raises(ConfigError):
        build(config_file=yaml_file("keys:\n  mykey:\n"))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("k:s", ("k", "s")),
        ("k:s:t", ("k", "s:t")),
        ("APIabc:very-long-secret", ("APIabc", "very-long-secret")),
    ],
)
def test_parse_key(value: str, expected: tuple[str, str]) -> None:
    assert parse_key(value, "--keys") == expected


@pytest.mark.parametrize("value", ["", "k", "k:", ":s", ":"])
def test_parse_key_refuses(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^--keys: expected KEY:SECRET$"):
        parse_key(value, "--keys")


def test_bad_flag_key_is_an_error() -> None:
    assert config_error(keys=["nocolon"]).startswith("--keys: ")


# -- other settings: YAML < flags -----------------------------------------------------------------

FULL_YAML = """\
dev: true
http: 0.0.0.0:8080
sip: "[::]:5070"
rtp_ports: 30000-31000
rtc_ports: 31002-31999
media_ip: "2001:db8::5"
db: /var/lib/sipbridge/file.db
log_level: DEBUG
webhooks:
  - http://hooks.example/a
  - https://hooks.example/b
"""


def test_yaml_overrides_defaults(yaml_file: Any) -> None:
    s = build(config_file=yaml_file(FULL_YAML))
    assert s.dev
    assert s.keys == {DEV_KEY: DEV_SECRET}  # dev: true in the file counts
    assert s.http == HostPort("0.0.0.0", 8080)
    assert s.sip == HostPort("::", 5070)
    assert s.rtp_ports == (30000, 31000)
    assert s.rtc_ports == (31002, 31999)
    assert s.media_ip == "2001:db8::5" and s.media_address == "2001:db8::5"
    assert s.db == "/var/lib/sipbridge/file.db"
    assert s.log_level == "debug"
    assert s.webhooks == ("http://hooks.example/a", "https://hooks.example/b")


def test_flags_override_yaml(yaml_file: Any) -> None:
    s = build(
        config_file=yaml_file(FULL_YAML),
        http="127.0.0.2:9000",
        sip="[::1]:5080",
        rtp_ports="40000-40010",
        rtc_ports="40011-40020",
        db="/tmp/other.db",
        log_level="Warning",
        webhooks=["https://flag.example/hook"],
    )
    assert s.http == HostPort("127.0.0.2", 9000)
    assert s.sip == HostPort("::1", 5080)
    assert s.rtp_ports == (40000, 40010)
    assert s.rtc_ports == (40011, 40020)
    assert s.db == "/tmp/other.db"
    assert s.log_level == "warning"
    assert s.webhooks == ("https://flag.example/hook",)


def test_flags_override_defaults() -> None:
    s = build(dev=True, http="localhost:1", sip="10.0.0.1:5061", db=":memory:")
    assert s.http == HostPort("localhost", 1)
    assert s.sip == HostPort("10.0.0.1", 5061)
    assert s.db == ":memory:"


def test_yaml_single_webhook(yaml_file: Any) -> None:
    s = build(config_file=yaml_file("dev: true\nwebhook: https://hooks.example/one\n"))
    assert s.webhooks == ("https://hooks.example/one",)


def test_yaml_webhooks_win_over_webhook(yaml_file: Any) -> None:
    s = build(
        config_file=yaml_file(
            "dev: true\nwebhook: https://hooks.example/one\nwebhooks: [https://hooks.example/two]\n"
        )
    )
    assert s.webhooks == ("https://hooks.example/two",)


def test_empty_yaml_file_is_fine(yaml_file: Any) -> None:
    assert build(dev=True, config_file=yaml_file("")) == build(dev=True)
    assert build(dev=True, config_file=yaml_file("# only a comment\n")) == build(dev=True)


def test_dev_false_in_yaml_does_not_undo_the_flag(yaml_file: Any) -> None:
    s = build(dev=True, config_file=yaml_file("dev: false\n"))
    assert s.dev
    assert s.keys == {DEV_KEY: DEV_SECRET}


@pytest.mark.parametrize(
    "text", ['dev: "no"\n', 'dev: "false"\n', "dev: 0\n", "dev: 1\n", "dev: yes please\n"]
)
def test_dev_in_yaml_must_be_a_boolean(yaml_file: Any, text: str) -> None:
    # A quoted "no" is a true-looking string: refused instead of silently meaning dev mode.
    assert config_error(config_file=yaml_file(text)) == "dev: expected true or false"
    assert config_error(dev=True, config_file=yaml_file(text)) == "dev: expected true or false"


@pytest.mark.parametrize(("text", "dev"), [("dev: true\n", True), ("dev: no\n", False)])
def test_dev_in_yaml_accepts_yaml_booleans(yaml_file: Any, text: str, dev: bool) -> None:
    s = build(config_file=yaml_file(text + "keys:\n  k: s\n"))
    assert s.dev is dev


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("http: [unclosed\n", "is not valid YAML"),
        ("key: value\n  bad indent: x\n", "is not valid YAML"),
        ("- a list\n- not a mapping\n", "must hold a mapping of settings"),
        ("just a string\n", "must hold a mapping of settings"),
        ("dev: true\nport: 80\n", "unknown setting(s): port"),
        ("dev: true\nzzz: 1\nhttps: x\n", "unknown setting(s): https, zzz"),
        ("dev: true\nhttp: nope\n", "http: expected HOST:PORT"),
        ("dev: true\nhttp: 8080\n", "http: expected HOST:PORT"),
        ("dev: true\nsip: 'host:99999'\n", "sip: port out of range"),
        ("dev: true\nrtp_ports: 100-200\n", "rtp_ports: expected LO-HI within 1024-65535"),
        ("dev: true\nlog_level: verbose\n", "log_level: expected one of"),
        ("dev: true\nwebhooks: [ftp://hooks.example]\n", "is not an http(s) URL"),
    ],
)
def test_bad_yaml(yaml_file: Any, text: str, fragment: str) -> None:
    assert fragment in config_error(config_file=yaml_file(text))


def test_yaml_errors_name_the_file_and_option(yaml_file: Any) -> None:
    path = yaml_file("unknown_thing: 1\n")
    message = config_error(dev=True, config_file=path)
    assert message.startswith("--config: ")
    message = config_error(dev=True, config_file=yaml_file("[1, 2"))
    assert message.startswith(f"--config: {path} is not valid YAML")


def test_missing_config_file(tmp_path: Path) -> None:
    message = config_error(dev=True, config_file=str(tmp_path / "missing.yaml"))
    assert message.startswith("--config: cannot read ")
    assert "missing.yaml" in message


def test_bad_yaml_webhooks_type_is_a_config_error(yaml_file: Any) -> None:
    with pytest.raises(ConfigError):
        build(config_file=yaml_file("dev: true\nwebhooks: 5\n"))


def test_empty_yaml_webhooks_means_none(yaml_file: Any) -> None:
    assert build(config_file=yaml_file("dev: true\nwebhooks:\n")).webhooks == ()


@pytest.mark.parametrize(
    ("flag", "value", "fragment"),
    [
        ("http", "nohostport", "--http: expected HOST:PORT"),
        ("http", ":7880", "--http: missing host"),
        ("http", "host:", "--http: port must be a number"),
        ("http", "host:abc", "--http: port must be a number"),
        ("http", "host:65536", "--http: port out of range"),
        ("http", "host:-1", "--http: port out of range"),
        ("sip", "[::1]", "--sip: expected [IPv6]:PORT"),
        ("sip", "[::1]5060", "--sip: expected [IPv6]:PORT"),
        ("sip", "[::1:5060", "--sip: expected [IPv6]:PORT"),
        ("sip", "[]:5060", "--sip: missing host"),
        ("rtp_ports", "20000-10000", "--rtp-ports: expected LO-HI within 1024-65535"),
        ("rtp_ports", "1023-2000", "--rtp-ports: expected LO-HI within"),
        ("rtp_ports", "60000-65536", "--rtp-ports: expected LO-HI within"),
        ("rtp_ports", "10000", "--rtp-ports: expected LO-HI"),
        ("rtp_ports", "a-b", "--rtp-ports: expected LO-HI"),
        ("rtp_ports", "10000:20000", "--rtp-ports: expected LO-HI"),
        ("rtc_ports", "60000-50000", "--rtc-ports: expected LO-HI within 1024-65535"),
        ("tls_ca", "/nonexistent/ca.pem", "--tls-ca: /nonexistent/ca.pem is not a file"),
        ("rtc_ports", "15000-25000", "--rtc-ports 15000-25000 overlaps --rtp-ports 10000-20000"),
        ("rtp_ports", "55000-56000", "--rtc-ports 50000-60000 overlaps --rtp-ports 55000-56000"),
        ("log_level", "trace", "log_level: expected one of debug, info, warning, error"),
        ("webhooks", ["https://ok.example", "hooks.example/no-scheme"], "--webhook: "),
        ("keys", ["a:b", "bad"], "--keys: expected KEY:SECRET"),
    ],
)
def test_bad_flags(flag: str, value: Any, fragment: str) -> None:
    assert fragment in config_error(dev=True, **{flag: value})


def test_session_min_se_from_flag_or_yaml(yaml_file: Any) -> None:
    """RFC 4028's Min-SE: 90 s unless said (lower for peers and tests that need it)."""
    assert build(dev=True).session_min_se == 90
    assert build(dev=True, session_min_se=8).session_min_se == 8
    assert build(config_file=yaml_file("dev: true\nsession_min_se: 120\n")).session_min_se == 120
    both = build(config_file=yaml_file("dev: true\nsession_min_se: 120\n"), session_min_se=30)
    assert both.session_min_se == 30


@pytest.mark.parametrize("name", ["sip_message_timeout", "http_idle_timeout"])
def test_connection_timeouts_from_flag_or_yaml(yaml_file: Any, name: str) -> None:
    assert (build(dev=True).sip_message_timeout, build(dev=True).http_idle_timeout) == (10, 20)
    assert getattr(build(dev=True, **{name: 2}), name) == 2
    assert getattr(build(config_file=yaml_file(f"dev: true\n{name}: 30\n")), name) == 30
    for bad in (0, 3601, True, "5"):
        assert f"{name}: expected a whole number from 1 to 3600" in config_error(
            dev=True, **{name: bad}
        )


def test_max_lag_from_flag_or_yaml(yaml_file: Any) -> None:
    """Admission by the event loop's lag: 100 ms unless said, 1-60000 ms."""
    assert build(dev=True).max_lag_ms == 100
    assert build(dev=True, max_lag_ms=250).max_lag_ms == 250
    assert build(config_file=yaml_file("dev: true\nmax_lag_ms: 40\n")).max_lag_ms == 40
    for bad in (0, 60001, True, "5"):
        assert "max_lag_ms: expected a whole number from 1 to 60000" in config_error(
            dev=True, max_lag_ms=bad
        )


@pytest.mark.parametrize("value", [0, -5, 86401, True, "90"])
def test_bad_session_min_se(value: Any) -> None:
    assert "session_min_se: expected whole seconds" in config_error(dev=True, session_min_se=value)


# -- parsers --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:7880", HostPort("127.0.0.1", 7880)),
        ("0.0.0.0:0", HostPort("0.0.0.0", 0)),
        ("localhost:65535", HostPort("localhost", 65535)),
        ("[::1]:5060", HostPort("::1", 5060)),
        ("[2001:db8::1]:5061", HostPort("2001:db8::1", 5061)),
        ("  example.com:80  ", HostPort("example.com", 80)),
    ],
)
def test_parse_hostport(value: str, expected: HostPort) -> None:
    assert parse_hostport(value, "--http") == expected


@pytest.mark.parametrize(
    ("hostport", "text"),
    [
        (HostPort("127.0.0.1", 7880), "127.0.0.1:7880"),
        (HostPort("::1", 5060), "[::1]:5060"),
        (HostPort("example.com", 80), "example.com:80"),
    ],
)
def test_hostport_str_round_trips(hostport: HostPort, text: str) -> None:
    assert str(hostport) == text
    assert parse_hostport(text, "x") == hostport


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("10000-20000", (10000, 20000)),
        ("1024-65535", (1024, 65535)),
        ("30000-30000", (30000, 30000)),
    ],
)
def test_parse_port_range(value: str, expected: tuple[int, int]) -> None:
    assert parse_port_range(value, "--rtp-ports") == expected


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_media_ip_defaults_to_the_sip_host_and_is_required_for_a_wildcard() -> None:
    assert build(dev=True, sip="127.0.0.5:5060").media_address == "127.0.0.5"
    wildcard = build(dev=True, sip="0.0.0.0:5060", media_ip="192.0.2.7")
    assert wildcard.media_address == "192.0.2.7"
    assert "--media-ip" in config_error(dev=True, sip="0.0.0.0:5060")
    assert "expected an IP address" in config_error(dev=True, media_ip="media.example")
    assert "cannot be advertised" in config_error(dev=True, media_ip="0.0.0.0")


def test_redis_from_yaml_and_flags(yaml_file: Any) -> None:
    assert build(dev=True).redis == ""  # SQLite unless asked
    s = build(dev=True, config_file=yaml_file("redis: redis://r1:6379/2\nredis_prefix: 'a:'\n"))
    assert (s.redis, s.redis_prefix) == ("redis://r1:6379/2", "a:")
    s = build(
        dev=True,
        redis="rediss://:pw@r2:6380/0",
        redis_prefix="b:",
        config_file=yaml_file("redis: redis://r1:6379/2\n"),
    )
    assert (s.redis, s.redis_prefix) == ("rediss://:pw@r2:6380/0", "b:")


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("r1:6379", "expected redis://HOST:PORT/DB"),
        ("http://r1:6379/0", "expected redis://HOST:PORT/DB"),
        ("redis://:6379/0", "missing host"),
        ("redis://r1:port/0", "bad port"),
    ],
)
def test_bad_redis_url(value: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        build(dev=True, redis=value)


def test_recordings_flag_has_the_issue_spelling_too() -> None:
    from sipbridge.cli import build_parser  # noqa: PLC0415

    for flag in ("--recordings", "--recordings-dir"):
        args = build_parser().parse_args(["serve", flag, "/var/rec"])
        assert args.recordings_dir == "/var/rec"


async def test_an_idle_http_connection_outlives_the_python_clients_reuse_of_it() -> None:
    """aiohttp's client (the official livekit-api's) reuses a pooled connection idle up to its
    keep-alive timeout; a server that closes its side at that same age races the reuse: a
    request written as the close arrives fails (ClientConnectionResetError, seen with 15 and
    15 in tests/interop/test_resume.py). The server's default must be the longer."""
    import aiohttp  # noqa: PLC0415

    connector = aiohttp.TCPConnector()
    try:
        reused_for = connector._keepalive_timeout
    finally:
        await connector.close()
    assert reused_for is not None
    assert build(dev=True).http_idle_timeout >= reused_for + 5
