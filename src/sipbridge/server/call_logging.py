"""Logs that say which call they are about, and one line per call at its end.

`--log-format json` writes one JSON object per line: `time`, `level`, `logger`, `message`, and on
every line logged while a call's step runs its `call_id`, `room` and `participant`; a call's
end adds `event: "call_end"` with its outcome, numbers, timings and media figures
(`call_end_fields`). `text` (the default) is the line it always was.

Which call: the runners run each step of a call inside `about_call(info)` (`calls/runner.py`:
`guarded`, the call's timer, `finished`; the INVITE's setup and the dial, from the moment
their call record exists: `call_step` and `bind_call`). The call is kept in a
thread-local slot, restored when the step returns, not in a `contextvars.ContextVar`: asyncio
copies the context into every callback and task scheduled during the step, so a shared timer
or task first started by one call (the 20 ms media clock, a webhook sender) would carry that
call's ids on all its lines from then on. A step is synchronous, so the slot is exact; other
threads (the SQLite writer) have their own and are never tagged.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import logging
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any, ParamSpec, TypeVar

from livekit.protocol import models
from livekit.protocol import sip as proto

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CALL_FIELDS = ("call_id", "room", "participant")
# What a LogRecord has of its own; anything else on a record came through `extra=`.
_RECORD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

_slot = threading.local()
P = ParamSpec("P")
R = TypeVar("R")


log = logging.getLogger("sipbridge.server.calls")  # the call_end lines


def current_call() -> proto.SIPCallInfo | None:
    """The call whose step is running on this thread, if any."""
    info: proto.SIPCallInfo | None = getattr(_slot, "info", None)
    return info


class about_call:  # (named as the function it replaced: `with about_call(info):`)
    """Lines logged inside are about this call (its ids are read when a line is written, so
    a room or identity set during the step shows).

    A class, not a `contextlib.contextmanager` generator: a call's every step and timer runs
    inside one, and the generator's enter and exit cost 1.5-1.6 us against 0.6 us here
    (compiled callers, best of 3 x 200k; issue 18)."""

    __slots__ = ("info", "previous")

    def __init__(self, info: proto.SIPCallInfo) -> None:
        self.info = info
        self.previous: proto.SIPCallInfo | None = None

    def __enter__(self) -> None:
        self.previous = getattr(_slot, "info", None)
        _slot.info = self.info

    def __exit__(self, *exc: object) -> None:
        _slot.info = self.previous


def call_step(step: Callable[P, R]) -> Callable[P, R]:
    """A method that begins a call (`bind_call` inside, once its record exists): the call it
    binds is this step's only, as with `about_call`."""

    @functools.wraps(step)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        previous = getattr(_slot, "info", None)
        try:
            return step(*args, **kwargs)
        finally:
            _slot.info = previous

    return run


def bind_call(info: proto.SIPCallInfo) -> None:
    """From here to the end of the `call_step` running, lines are about this call."""
    _slot.info = info


class CallContextFilter(logging.Filter):
    """Sets `call_id`, `room` and `participant` on a record about a call: from the call whose
    step is running, unless the line names its call itself (`extra={"call_id": ...}`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        info = current_call()
        if info is not None and not getattr(record, "call_id", ""):
            record.call_id = info.call_id or info.sip_call_id
            record.room = info.room_name
            record.participant = info.participant_identity
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line; `extra=` fields are kept as they are (JSON types, else str)."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
        out: dict[str, Any] = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, separators=(",", ":"))


def configure(level: str, log_format: str) -> None:
    """The root logger's one handler, on stderr, in `log_format` (`text` or `json`)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(CallContextFilter())
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Python's warnings (a library's deprecation, pyjwt's key length) as log lines, so that in
    # JSON every line of the output parses.
    logging.captureWarnings(log_format == "json")


# Enum value names as the `call_end` line writes them, by (enum, value, prefix cut): each is
# looked up once (protobuf's `Name` and the string work cost 2-3 us a field, 3 a call; issue 18).
_ENUM_NAMES: dict[tuple[object, int, str], str] = {}


def _enum_name(enum: Any, value: int, prefix: str = "", lower: bool = False) -> str:
    key = (enum, value, prefix if not lower else prefix + "/lower")
    known = _ENUM_NAMES.get(key)
    if known is not None:
        return known
    try:
        name = str(enum.Name(value)).removeprefix(prefix)
    except ValueError:
        name = str(value)
    if lower:
        name = name.lower()
    if len(_ENUM_NAMES) < 1024:  # (bounded: a value no enum names is kept as its number)
        _ENUM_NAMES[key] = name
    return name


def call_end_fields(
    info: proto.SIPCallInfo, *, sip_end: str, leg: object = None, call: object = None
) -> dict[str, Any]:
    """The `call_end` line's fields: who, the outcome (`outcome`: disconnected or error; the
    room's disconnect reason; the SIP final status; our error), how long, and what the media
    leg measured (its counters, the receiver's loss and jitter, the peer's last RTCP report),
    and the call's quality where the call or its leg keeps one (`quality`: a dataclass, a
    mapping, or a method returning one)."""
    started, ended = info.started_at_ns, info.ended_at_ns
    fields: dict[str, Any] = {
        "event": "call_end",
        "call_id": info.call_id or info.sip_call_id,
        "room": info.room_name,
        "participant": info.participant_identity,
        "direction": _enum_name(proto.SIPCallDirection, info.call_direction, "SCD_", True),
        "outcome": _enum_name(proto.SIPCallStatus, info.call_status, "SCS_", True),
        "answered": bool(started),
        "end_reason": _enum_name(models.DisconnectReason, info.disconnect_reason),
        "sip_end": sip_end,
        "sip_status": info.call_status_code.code or None,
        "error": info.error or None,
        "trunk_id": info.trunk_id,
        "sip_call_id": info.sip_call_id,
        "from": info.from_uri.user,
        "to": info.to_uri.user,
        "duration_s": round((ended - started) / 1e9, 3) if started and ended else None,
        "setup_s": round((started - info.created_at_ns) / 1e9, 3)
        if started and info.created_at_ns
        else None,
    }
    if leg is not None:
        fields["media"] = media_fields(leg)
    for source in (call, leg):
        quality = _as_fields(getattr(source, "quality", None))
        if quality:
            fields["quality"] = quality
            break
    return fields


def log_call_end(
    info: proto.SIPCallInfo, *, sip_end: str, leg: object = None, call: object = None
) -> None:
    """The call's one `call_end` line (its fields: `call_end_fields`, made only when a handler
    may read them: see `_fields_wanted`)."""
    if not log.isEnabledFor(logging.INFO):
        return
    call_id = info.call_id or info.sip_call_id
    fields: dict[str, Any] | None = None
    if _fields_wanted(log):
        try:
            fields = call_end_fields(info, sip_end=sip_end, leg=leg, call=call)
        except Exception:  # the end line must never cost the call its aftermath
            log.exception("call %s: its end line could not be made", info.call_id)
            fields = {"event": "call_end", "call_id": info.call_id}
        outcome = fields.get("outcome", "")
    else:
        outcome = _enum_name(proto.SIPCallStatus, info.call_status, "SCS_", True)
    # `log.info(..., extra=fields)` without its search of the stack for the caller's file and
    # line, which neither format writes (`findCaller`: a fifth of the line's cost; issue 18).
    record = log.makeRecord(
        log.name,
        logging.INFO,
        __file__,
        0,
        "call %s ended: %s, %s",
        (call_id, outcome, sip_end),
        None,
        "log_call_end",
        fields,
    )
    log.handle(record)


# What writes a line without reading a record's own fields: the text format's handlers.
_PLAIN_HANDLERS = (logging.StreamHandler, logging.FileHandler)


def _fields_wanted(logger: logging.Logger) -> bool:
    """Whether a handler that will see `logger`'s INFO lines may read their `extra=` fields:
    anything but a plain stream or file handler with the text format (`logging.Formatter`
    exactly) and no filter but ours - the JSON format, a test's capture, another handler, a
    filter. The text line never writes them, and they were a third of a call's end line (10 of
    37 us, compiled; issue 18)."""
    if logger.filters:
        return True
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            if handler.level > logging.INFO:
                continue
            if type(handler) not in _PLAIN_HANDLERS:
                return True
            formatter = handler.formatter
            if formatter is not None and type(formatter) is not logging.Formatter:
                return True
            if any(not isinstance(f, CallContextFilter) for f in handler.filters):
                return True
        if not current.propagate:
            break
        current = current.parent
    return False


def _as_fields(value: object) -> dict[str, Any] | None:
    if callable(value):
        try:
            value = value()
        except Exception:  # a figure that cannot be read is left out, never a lost end line
            return None
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _dataclass_fields(value)
    if isinstance(value, Mapping):
        return dict(value)
    return None


_SCALARS = (int, float, str, bool, type(None))
# A dataclass's field names by its type (`dataclasses.fields` builds its tuple at every call).
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _dataclass_fields(value: Any) -> dict[str, Any]:
    """`dataclasses.asdict(value)`: for a flat one (counters, figures: every call's end) read
    field by field, a seventh of the cost of `asdict`'s deep copy (11 us, issue 18)."""
    kind = type(value)
    names = _FIELD_NAMES.get(kind)
    if names is None:
        names = _FIELD_NAMES[kind] = tuple(field.name for field in dataclasses.fields(value))
    out = {name: getattr(value, name) for name in names}
    for v in out.values():
        if not isinstance(v, _SCALARS):
            return dataclasses.asdict(value)
    return out


def media_fields(leg: object) -> dict[str, Any]:
    """What a media leg measured, from whichever of its figures it has."""
    out: dict[str, Any] = {}
    stats = getattr(leg, "stats", None)
    if dataclasses.is_dataclass(stats) and not isinstance(stats, type):
        out.update({k: v for k, v in _dataclass_fields(stats).items() if v})
    receiver = getattr(leg, "receiver", None)
    received = getattr(receiver, "stats", None)
    if callable(received):
        try:
            r = received()
            out["received"] = {
                "packets": r.packets,
                "lost": r.lost,
                "jitter_ms": round(r.jitter_seconds * 1000, 2),
            }
        except Exception:  # a figure that cannot be read is left out, never a lost end line
            pass
    report = getattr(leg, "remote_report", None)
    if report is not None:
        out["remote_report"] = {
            "fraction_lost": report.fraction_lost,
            "cumulative_lost": report.cumulative_lost,
            "jitter_ms": round(report.jitter * 1000, 2),
            "rtt_ms": None if report.rtt is None else round(report.rtt * 1000, 2),
        }
    return out
