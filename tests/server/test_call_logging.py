"""server/call_logging.py: which call a line is about (and that a timer scheduled during a
call's step does not inherit it), the JSON lines, the call_end fields, and the settings."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
from pathlib import Path

import pytest
from livekit.protocol import sip

from sipbridge.config import ConfigError, build_settings
from sipbridge.media.leg import MediaStats
from sipbridge.server import call_logging
from sipbridge.server.call_logging import (
    CallContextFilter,
    JsonFormatter,
    about_call,
    bind_call,
    call_end_fields,
    call_step,
    log_call_end,
)


def capture() -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(CallContextFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(f"test.call_logging.{id(out)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    return logger, out


def lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


async def test_lines_in_a_calls_step_name_it_and_nothing_leaks() -> None:
    logger, out = capture()
    info = sip.SIPCallInfo(call_id="SCL_1", room_name="lobby", participant_identity="sip_1")
    fired = asyncio.Event()

    def later() -> None:  # scheduled during the step: not about the call
        logger.info("clock tick")
        fired.set()

    with about_call(info):
        logger.info("in the step")
        info.room_name = "moved"  # read when the line is written
        logger.warning("after the move")
        asyncio.get_running_loop().call_soon(later)
    logger.info("outside")
    await asyncio.wait_for(fired.wait(), 5)

    @call_step
    def dial() -> None:
        logger.info("before the record")
        bind_call(sip.SIPCallInfo(call_id="SCL_2", room_name="r2"))
        logger.info("dialling")

    dial()
    logger.info("after the dial")
    got = [(d["message"], d.get("call_id"), d.get("room")) for d in lines(out)]
    assert got == [
        ("in the step", "SCL_1", "lobby"),
        ("after the move", "SCL_1", "moved"),
        ("outside", None, None),
        ("clock tick", None, None),
        ("before the record", None, None),
        ("dialling", "SCL_2", "r2"),
        ("after the dial", None, None),
    ]
    first = lines(out)[0]
    assert first["participant"] == "sip_1" and first["level"] == "info"
    assert str(first["time"]).endswith("Z")


def test_exceptions_and_extra_fields_stay_one_json_line() -> None:
    logger, out = capture()
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        logger.exception("failed", extra={"event": "x", "n": 3, "odd": object()})
    (line,) = lines(out)
    assert line["event"] == "x" and line["n"] == 3 and "ValueError" in str(line["exception"])


def test_call_end_fields() -> None:
    info = sip.SIPCallInfo(
        call_id="SCL_9",
        room_name="r",
        call_status=sip.SIPCallStatus.SCS_ERROR,
        call_direction=sip.SIPCallDirection.SCD_INBOUND,
        created_at_ns=1_000_000_000,
        error="media timeout",
    )
    info.call_status_code.code = 486  # type: ignore[assignment]

    class Leg:
        stats = MediaStats(packets_in=10)

        def quality(self) -> dict[str, float]:
            return {"mos": 4.1}

    fields = call_end_fields(info, sip_end="rejected", leg=Leg())
    assert fields["outcome"] == "error" and fields["direction"] == "inbound"
    assert fields["answered"] is False and fields["duration_s"] is None
    assert fields["sip_status"] == 486 and fields["error"] == "media timeout"
    assert fields["media"] == {"packets_in": 10}
    assert fields["quality"] == {"mos": 4.1}
    json.dumps(fields)


def test_call_end_line_is_one_record_with_its_fields_and_none_below_info() -> None:
    """`log_call_end` makes its record itself (no search of the stack for the caller): the
    line, its level, logger and fields as `log.info(..., extra=fields)` wrote them; an enum
    value no name is known for stays its number; nothing at all when INFO is off."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("sipbridge.server.calls")
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    info = sip.SIPCallInfo(
        call_id="SCL_7",
        call_status=sip.SIPCallStatus.SCS_DISCONNECTED,
        call_direction=99,  # type: ignore[arg-type]
    )
    try:
        logger.setLevel(logging.INFO)
        for _ in range(2):  # (the second from the names kept)
            log_call_end(info, sip_end="bye")
        logger.setLevel(logging.WARNING)
        log_call_end(info, sip_end="bye")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
    first, second = lines(out)
    assert {**first, "time": ""} == {**second, "time": ""}
    assert first["message"] == "call SCL_7 ended: disconnected, bye"
    assert first["level"] == "info" and first["logger"] == "sipbridge.server.calls"
    assert first["event"] == "call_end" and first["outcome"] == "disconnected"
    assert first["direction"] == "99" and first["sip_end"] == "bye"


def test_call_end_fields_are_made_only_for_a_handler_that_may_read_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The text format writes the same line without the fields (never made for it); a JSON
    handler, or any handler not a plain stream with the text format, gets them all."""
    made: list[str] = []

    def counted(info: sip.SIPCallInfo, **kwargs: object) -> dict[str, object]:
        made.append(info.call_id)
        return call_end_fields(info, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(call_logging, "call_end_fields", counted)
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    text_out = io.StringIO()
    text = logging.StreamHandler(text_out)
    text.addFilter(CallContextFilter())
    text.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("sipbridge.server.calls")
    level, propagate = logger.level, logger.propagate
    logger.setLevel(logging.INFO)
    logger.propagate = False
    info = sip.SIPCallInfo(call_id="SCL_8", call_status=sip.SIPCallStatus.SCS_DISCONNECTED)
    try:
        logger.addHandler(text)
        log_call_end(info, sip_end="bye")
        assert made == []
        assert text_out.getvalue() == (
            "INFO sipbridge.server.calls: call SCL_8 ended: disconnected, bye\n"
        )
        keep = Keep()
        logger.addHandler(keep)
        log_call_end(info, sip_end="bye")
        logger.removeHandler(keep)
        assert made == ["SCL_8"]
        assert records[0].event == "call_end"  # type: ignore[attr-defined]
        assert records[0].getMessage() == "call SCL_8 ended: disconnected, bye"
        text.setFormatter(JsonFormatter())
        log_call_end(info, sip_end="bye")
        assert made == ["SCL_8", "SCL_8"]
        assert json.loads(text_out.getvalue().splitlines()[-1])["event"] == "call_end"
    finally:
        logger.removeHandler(text)
        logger.setLevel(level)
        logger.propagate = propagate
    assert text_out.getvalue().count("\n") == 3


def test_call_end_fields_read_dataclasses_as_asdict_does() -> None:
    """Flat figures are read field by field; a dataclass holding others is deep-copied as
    `dataclasses.asdict` does: the same fields either way."""

    @dataclasses.dataclass
    class Nested:
        stats: MediaStats
        codecs: list[str]

    flat = MediaStats(packets_in=3, forwarded=2)
    nested = Nested(stats=flat, codecs=["PCMU"])

    class Leg:
        stats = flat
        quality = nested

    fields = call_end_fields(sip.SIPCallInfo(call_id="SCL_1"), sip_end="bye", leg=Leg())
    assert fields["media"] == {k: v for k, v in dataclasses.asdict(flat).items() if v}
    assert fields["quality"] == dataclasses.asdict(nested)
    json.dumps(fields)


def test_settings(tmp_path: Path) -> None:
    s = build_settings(dev=True, environ={})
    assert (s.call_log_days, s.log_format) == (30, "text")
    config = tmp_path / "c.yaml"
    config.write_text("call_log_days: 7\nlog_format: json\n")
    s = build_settings(dev=True, config_file=str(config), environ={})
    assert (s.call_log_days, s.log_format) == (7, "json")
    s = build_settings(dev=True, config_file=str(config), call_log_days=0, environ={})
    assert s.call_log_days == 0
    for text in ("call_log_days: -1\n", "call_log_days: soon\n", "log_format: xml\n"):
        config.write_text(text)
        with pytest.raises(ConfigError):
            build_settings(dev=True, config_file=str(config), environ={})
