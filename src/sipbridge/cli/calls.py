"""`sipbridge call | store | node`: the call log read from the store (SQLite or Redis) the
servers write, a call's SIP trace and pcap from a server, records copied between stores, and the
cluster's nodes."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from sipbridge.cli.output import as_dict, server_credentials

CLI_MAX_CALLS = 1_000_000  # `call list --limit`: read a page (1000) at a time up to this


async def _load_calls(
    location: str, redis_prefix: str, limit: int, query: Any
) -> tuple[list[bytes], list[bytes], str]:
    """The newest `limit` call records that pass the query (`store/call_query.py`), their
    transfer records, and the token of the page after them. Both stores page and filter the
    log themselves, a page of at most 1000 at a time: the log is never read whole."""
    from dataclasses import replace  # noqa: PLC0415

    from sipbridge.server.state.call_log import TRANSFER_KIND  # noqa: PLC0415
    from sipbridge.store import SQLiteStore, store_at  # noqa: PLC0415
    from sipbridge.store.call_query import MAX_LIMIT  # noqa: PLC0415

    store = store_at(location, redis_prefix=redis_prefix)
    await store.open()
    try:
        calls: list[bytes] = []
        token = query.page_token
        while len(calls) < limit:
            page = replace(query, limit=min(MAX_LIMIT, limit - len(calls)), page_token=token)
            datas, token = await store.call_page(  # type: ignore[attr-defined]
                limit=page.limit,
                page_token=page.page_token,
                since_ms=page.since_ms,
                until_ms=page.until_ms,
                **page.filters(),
            )
            calls += datas
            if not token:
                break
        if isinstance(store, SQLiteStore):
            ids = [sip_call_id(data) for data in calls]
            transfers = await store.transfers_of(ids)
        else:
            transfers = [r.data for r in await store.load(TRANSFER_KIND)]
        return calls, transfers, token
    finally:
        await store.close()


def sip_call_id(data: bytes) -> str:
    from livekit.protocol import sip  # noqa: PLC0415

    return str(sip.SIPCallInfo.FromString(data).call_id)


def list_calls(a: argparse.Namespace) -> list[dict[str, Any]]:
    """The call log straight from the store (it is written by `serve`), newest first: a page,
    filtered by the store's indexes; the next page's token goes to stderr."""
    import datetime  # noqa: PLC0415
    import time  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    from livekit.protocol import sip  # noqa: PLC0415

    from sipbridge.store.call_query import CallQuery, parse_time  # noqa: PLC0415

    if not 1 <= a.limit <= CLI_MAX_CALLS:
        raise ValueError(f"--limit {a.limit}: expected 1 to {CLI_MAX_CALLS}")
    now = time.time()
    query = CallQuery(
        page_token=a.page_token,
        room=a.room,
        trunk=a.trunk,
        status=a.status.lower(),
        number=a.number,
        since_ms=parse_time(a.since, now, "--since"),
        until_ms=parse_time(a.until, now, "--until"),
    )
    query.check()
    if not a.redis and not Path(a.db).is_file():
        raise FileNotFoundError(f"no database at {a.db}")
    location = a.redis or f"sqlite:{a.db}"
    records, transfer_records, token = asyncio.run(
        _load_calls(location, a.redis_prefix, a.limit, query)
    )
    if token and not a.json:
        print(f"(more: --page-token {token})", file=sys.stderr)
    transfers: dict[str, list[dict[str, Any]]] = {}
    for data in transfer_records:
        transfer = sip.SIPTransferInfo.FromString(data)
        transfers.setdefault(transfer.call_id, []).append(as_dict(transfer))
    calls = [sip.SIPCallInfo.FromString(data) for data in records]
    rows = []
    for c in calls:
        row = as_dict(c)
        row["from"] = c.from_uri.user
        row["to"] = c.to_uri.user
        row["status_code"] = c.call_status_code.code or ""
        row["transfers"] = transfers.get(c.call_id, [])
        row["created"] = datetime.datetime.fromtimestamp(c.created_at, tz=datetime.UTC).strftime(
            "%Y-%m-%d %H:%M:%S"
        )
        rows.append(row)
    return rows


def copy_store(a: argparse.Namespace) -> dict[str, Any]:
    """`store copy SRC DST`: the records of every kind, by id; what DST had besides stays."""
    from pathlib import Path  # noqa: PLC0415

    from sipbridge.store import REDIS_SCHEMES  # noqa: PLC0415

    for name, location in (("SRC", a.src), ("DST", a.dst)):
        if not location.startswith(("sqlite:", *REDIS_SCHEMES)):
            raise ValueError(f"{name} {location!r}: expected sqlite:PATH or redis://HOST:PORT/DB")
    if a.src.startswith("sqlite:") and not Path(a.src.removeprefix("sqlite:")).is_file():
        raise FileNotFoundError(f"no database at {a.src.removeprefix('sqlite:')}")
    copied = asyncio.run(_copy_records(a.src, a.dst, a.redis_prefix))
    return {"from": a.src, "to": a.dst, **copied}


async def _copy_records(src: str, dst: str, redis_prefix: str) -> dict[str, int]:
    from sipbridge.store import KINDS, store_at  # noqa: PLC0415

    source = store_at(src, redis_prefix=redis_prefix)
    target = store_at(dst, redis_prefix=redis_prefix)
    await source.open()
    try:
        await target.open()
        try:
            counts = {}
            for kind in sorted(KINDS):
                records = await source.load(kind)
                for start in range(0, len(records), COPY_BATCH):
                    await target.put_many(records[start : start + COPY_BATCH])
                counts[kind] = len(records)
            return counts
        finally:
            await target.close()
    finally:
        await source.close()


COPY_BATCH = 1000  # records per transaction when copying


def _fetch_trace(a: argparse.Namespace, what: str, method: str = "GET") -> bytes:
    from sipbridge.server.api.trace_api import fetch  # noqa: PLC0415

    url, key, secret = server_credentials(a)
    return asyncio.run(fetch(url, key, secret, a.call_id, what, method=method))


def call_trace(a: argparse.Namespace) -> None:
    """Print a call's SIP trace as a ladder (or its JSON with --json)."""
    import datetime  # noqa: PLC0415

    from sipbridge.sip.trace import TracedMessage, entries_from_json, ladder  # noqa: PLC0415

    data = json.loads(_fetch_trace(a, "trace"))
    if a.json:
        print(json.dumps(data, indent=2))
        return
    entries = entries_from_json(data)
    times = [e.time for e in entries if isinstance(e, TracedMessage)]
    names = "".join(f"{name} " for name in data.get("names", []))
    summary = f"{len(times)} messages"
    if data.get("dropped"):
        summary += f", {data['dropped']} more not kept"
    if data.get("rtp_traced"):
        summary += f", {data.get('rtp_packets', 0)} RTP headers (in the pcap)"
    if times:
        began = datetime.datetime.fromtimestamp(times[0], tz=datetime.UTC)
        summary += f", from {began:%Y-%m-%d %H:%M:%S}.{began.microsecond // 1000:03d} UTC"
    print(f"call {names}Call-ID {data['call_id']}")
    print(summary)
    print(ladder(entries))


def call_rtp(a: argparse.Namespace) -> dict[str, Any]:
    """Start tracing the RTP headers of a live call."""
    return dict(json.loads(_fetch_trace(a, "rtp", method="POST")))


def call_pcap(a: argparse.Namespace) -> None:
    """Write a call's SIP trace as a pcap file to stdout (not to a terminal)."""
    if sys.stdout.isatty():
        raise ValueError("a pcap is binary: redirect it to a file (> call.pcap)")
    data = _fetch_trace(a, "pcap")
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


async def _load_call(
    location: str, redis_prefix: str, call_id: str
) -> tuple[bytes | None, bytes | None, list[dict[str, Any]]]:
    """A call's record and its quality record (either None when there is none), and its
    recordings (`server/recording/records.py`)."""
    from sipbridge.server.recording.records import EgressRecords, recording_summary  # noqa: PLC0415
    from sipbridge.server.state.call_log import KIND, QUALITY_KIND  # noqa: PLC0415
    from sipbridge.store import store_at  # noqa: PLC0415

    store = store_at(location, redis_prefix=redis_prefix)
    await store.open()
    try:
        call = await store.get(KIND, call_id)
        quality = await store.get(QUALITY_KIND, call_id)
        infos = await EgressRecords(store, shared=False).for_call(call_id)
        recordings = [recording_summary(info) for info in infos]
        return (call.data if call else None), (quality.data if quality else None), recordings
    finally:
        await store.close()


def show_call(a: argparse.Namespace) -> None:
    """`call show ID`: the call's record and its quality (written every 5 s while it runs)."""
    from pathlib import Path  # noqa: PLC0415

    from livekit.protocol import sip  # noqa: PLC0415

    if not a.redis and not Path(a.db).is_file():
        raise FileNotFoundError(f"no database at {a.db}")
    location = a.redis or f"sqlite:{a.db}"
    call, quality, recordings = asyncio.run(_load_call(location, a.redis_prefix, a.call_id))
    if call is None:
        raise LookupError(f"no call {a.call_id} in the call log")
    info = sip.SIPCallInfo.FromString(call)
    shown = as_dict(info)
    shown["quality"] = json.loads(quality) if quality else None
    shown["recordings"] = recordings
    if a.json:
        print(json.dumps(shown, indent=2, sort_keys=True))
        return
    for key in ("call_id", "call_direction", "call_status", "room_name", "participant_identity"):
        print(f"{key:22} {shown.get(key, '')}")
    print(f"{'from':22} {info.from_uri.user}")
    print(f"{'to':22} {info.to_uri.user}")
    print(f"{'status_code':22} {info.call_status_code.code or ''}")
    for recording in recordings:
        line = f"{recording['egress_id']} {recording['status']} {recording['location']}"
        print(f"{'recording':22} {line}")
    print(render_quality(shown["quality"]))


def render_quality(quality: dict[str, Any] | None) -> str:
    """The quality record as lines for a terminal."""
    if not quality:
        return "quality                (none recorded)"

    def ms(value: Any) -> str:
        return "-" if value is None else f"{value:g} ms"

    def pct(value: Any) -> str:
        return "-" if value is None else f"{100 * value:.2f} %"

    lines = [
        f"{'codec':22} {quality.get('codec')} ({quality.get('encryption')})",
        f"{'mos':22} {quality.get('mos')}   rtt {ms(quality.get('rtt_ms'))}",
    ]
    for name in ("received", "sent"):
        d = quality.get(name) or {}
        lines.append(
            f"{name:22} {d.get('packets', 0)} packets, {d.get('bytes', 0)} bytes, "
            f"loss {pct(d.get('loss'))} ({d.get('lost')}), jitter {ms(d.get('jitter_ms'))}, "
            f"late {d.get('late', 0)}, discarded {d.get('discarded', 0)}"
        )
        model = d.get("e_model")
        if model:
            lines.append(
                f"{'':22} E-model R {model['r']:.1f} MOS {model['mos']:.2f}: Ie {model['ie']}, "
                f"Bpl {model['bpl']}, loss {model['loss_percent']:.2f} %, "
                f"delay {model['delay_ms']:.0f} ms ({model['codec_source']})"
            )
    return "\n".join(lines)


def list_nodes(a: argparse.Namespace) -> list[dict[str, Any]]:
    """The live nodes, as the server asked knows them (with Redis: all; else itself)."""
    from sipbridge.server.api.node_api import fetch_nodes  # noqa: PLC0415

    url, key, secret = server_credentials(a)
    return asyncio.run(fetch_nodes(url, key, secret))
