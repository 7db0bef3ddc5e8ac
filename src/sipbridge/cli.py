"""`sipbridge serve | trunk | rule | room | participant`.

`serve` runs the server. The other commands are for humans and scripts; they talk to a running
server through the official `livekit-api` client, exactly as any LiveKit user's code would, using
`--url`/`LIVEKIT_URL` and `--api-key`/`--api-secret` (or `LIVEKIT_API_KEY`/`LIVEKIT_API_SECRET`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import warnings
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from sipbridge import __version__
from sipbridge.config import DEV_KEY, DEV_SECRET, ConfigError, build_settings

Command = Callable[[Any, argparse.Namespace], Awaitable[Any]]


def _serve_parser(sub: Any) -> None:
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
        "while its event loop lags over 100 ms; /healthz says not ready meanwhile (90)",
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
        "closed (15)",
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


def _client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=None, help="server URL (env LIVEKIT_URL)")
    p.add_argument("--api-key", default=None, help="API key (env LIVEKIT_API_KEY)")
    p.add_argument("--api-secret", default=None, help="API secret (env LIVEKIT_API_SECRET)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sipbridge", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"sipbridge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)

    trunk = sub.add_parser("trunk", help="SIP trunks").add_subparsers(dest="action", required=True)
    p = trunk.add_parser("create-inbound", help="create an inbound trunk")
    p.add_argument("--name", default="")
    p.add_argument("--numbers", nargs="*", default=[], help="numbers this trunk answers")
    p.add_argument("--allowed-addresses", nargs="*", default=[], help="IPs/CIDRs allowed")
    p.add_argument("--allowed-numbers", nargs="*", default=[], help="callers allowed")
    p.add_argument("--auth-username", default="")
    p.add_argument("--auth-password", default="")
    _client_args(p)
    p.set_defaults(run=create_inbound)
    p = trunk.add_parser("create-outbound", help="create an outbound trunk")
    p.add_argument("--name", default="")
    p.add_argument("--address", required=True, help="carrier host[:port]")
    p.add_argument("--numbers", nargs="+", required=True, help="caller ids to call from")
    p.add_argument("--transport", choices=["auto", "udp", "tcp", "tls"], default="auto")
    p.add_argument("--auth-username", default="")
    p.add_argument("--auth-password", default="")
    _client_args(p)
    p.set_defaults(run=create_outbound)
    p = trunk.add_parser("list", help="list trunks")
    _client_args(p)
    p.set_defaults(run=list_trunks)
    p = trunk.add_parser("delete", help="delete a trunk")
    p.add_argument("trunk_id")
    _client_args(p)
    p.set_defaults(run=delete_trunk)

    rule = sub.add_parser("rule", help="dispatch rules").add_subparsers(
        dest="action", required=True
    )
    p = rule.add_parser("create", help="create a dispatch rule")
    kind = p.add_mutually_exclusive_group(required=True)
    kind.add_argument("--direct", metavar="ROOM", help="every call to this room")
    kind.add_argument("--individual", metavar="PREFIX", help="a room per caller")
    kind.add_argument("--callee", metavar="PREFIX", help="a room per called number")
    p.add_argument("--pin", default="")
    p.add_argument("--name", default="")
    p.add_argument("--trunk-ids", nargs="*", default=[])
    p.add_argument("--inbound-numbers", nargs="*", default=[], help="callers this rule takes")
    p.add_argument("--numbers", nargs="*", default=[], help="called numbers this rule takes")
    p.add_argument("--hide-phone-number", action="store_true")
    p.add_argument("--agent", action="append", default=[], help="agent name to dispatch")
    _client_args(p)
    p.set_defaults(run=create_rule)
    p = rule.add_parser("list", help="list dispatch rules")
    _client_args(p)
    p.set_defaults(run=list_rules)
    p = rule.add_parser("delete", help="delete a dispatch rule")
    p.add_argument("rule_id")
    _client_args(p)
    p.set_defaults(run=delete_rule)

    room = sub.add_parser("room", help="rooms").add_subparsers(dest="action", required=True)
    p = room.add_parser("list", help="list rooms")
    _client_args(p)
    p.set_defaults(run=list_rooms)
    p = room.add_parser("delete", help="delete a room (hangs up its calls)")
    p.add_argument("room")
    _client_args(p)
    p.set_defaults(run=delete_room)

    call = sub.add_parser("call", help="the call log").add_subparsers(dest="action", required=True)
    p = call.add_parser("list", help="calls, newest first (reads the server's database)")
    p.add_argument("--db", default="./sipbridge.db", help="SQLite file (./sipbridge.db)")
    p.add_argument("--redis", metavar="URL", help="read the servers' Redis instead of --db")
    p.add_argument(
        "--redis-prefix", default="sipbridge:", help="start of every Redis key (sipbridge:)"
    )
    p.add_argument("--limit", type=int, default=100, help="calls to list (100; at most 1000000)")
    p.add_argument(
        "--since", default="", help="only calls created since: 15m, 2h, 7d, an ISO 8601 time"
    )
    p.add_argument("--until", default="", help="only calls created before (as --since)")
    p.add_argument("--page-token", default="", help="go on after a previous list (its token)")
    p.add_argument("--room", default="", help="only the calls of this room")
    p.add_argument("--trunk", default="", help="only the calls through this trunk id")
    p.add_argument("--status", default="", help="only calls in this state (active, ...)")
    p.add_argument("--number", default="", help="only calls from or to this number")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=list_calls, local=True)
    p = call.add_parser("trace", help="a call's SIP messages as a ladder (asks the server)")
    p.add_argument("call_id", help="the call's id (SCL_...) or its SIP Call-ID")
    _client_args(p)
    p.set_defaults(run=call_trace, local=True)
    p = call.add_parser("pcap", help="a call's SIP messages as a pcap file on stdout")
    p.add_argument("call_id", help="the call's id (SCL_...) or its SIP Call-ID")
    _client_args(p)
    p.set_defaults(run=call_pcap, local=True)
    p = call.add_parser("rtp", help="trace a live call's RTP headers from now on (for its pcap)")
    p.add_argument("call_id", help="the call's id (SCL_...) or its SIP Call-ID")
    _client_args(p)
    p.set_defaults(run=call_rtp, local=True)
    p = call.add_parser("show", help="one call and its media quality (reads the server's database)")
    p.add_argument("call_id", help="the call's id (SCL_...)")
    p.add_argument("--db", default="./sipbridge.db", help="SQLite file (./sipbridge.db)")
    p.add_argument("--redis", metavar="URL", help="read the servers' Redis instead of --db")
    p.add_argument(
        "--redis-prefix", default="sipbridge:", help="start of every Redis key (sipbridge:)"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=show_call, local=True)

    store = sub.add_parser("store", help="the stored records").add_subparsers(
        dest="action", required=True
    )
    p = store.add_parser(
        "copy",
        help="copy every trunk, dispatch rule, call and transfer record from SRC to DST (by id: "
        "running it again changes nothing); SRC and DST are sqlite:PATH or redis://HOST:PORT/DB",
    )
    p.add_argument("src", metavar="SRC", help="sqlite:PATH or redis://HOST:PORT/DB")
    p.add_argument("dst", metavar="DST", help="sqlite:PATH or redis://HOST:PORT/DB")
    p.add_argument(
        "--redis-prefix", default="sipbridge:", help="start of every Redis key (sipbridge:)"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=copy_store, local=True)

    node = sub.add_parser("node", help="the nodes of the cluster").add_subparsers(
        dest="action", required=True
    )
    p = node.add_parser("list", help="every live node: state, load, addresses (asks the server)")
    _client_args(p)
    p.set_defaults(run=list_nodes, local=True)

    part = sub.add_parser("participant", help="participants").add_subparsers(
        dest="action", required=True
    )
    p = part.add_parser("list", help="list a room's participants")
    p.add_argument("room")
    _client_args(p)
    p.set_defaults(run=list_participants)
    p = part.add_parser("remove", help="remove a participant (hangs up a call)")
    p.add_argument("room")
    p.add_argument("identity")
    _client_args(p)
    p.set_defaults(run=remove_participant)
    return parser


# -- client commands -------------------------------------------------------------------------


async def create_inbound(lk: Any, a: argparse.Namespace) -> Message:
    from livekit.protocol import sip  # noqa: PLC0415

    trunk = sip.SIPInboundTrunkInfo(
        name=a.name,
        numbers=a.numbers,
        allowed_addresses=a.allowed_addresses,
        allowed_numbers=a.allowed_numbers,
        auth_username=a.auth_username,
        auth_password=a.auth_password,
    )
    result: Message = await lk.sip.create_inbound_trunk(
        sip.CreateSIPInboundTrunkRequest(trunk=trunk)
    )
    return result


async def create_outbound(lk: Any, a: argparse.Namespace) -> Message:
    from livekit.protocol import sip  # noqa: PLC0415

    transport = {"auto": 0, "udp": 1, "tcp": 2, "tls": 3}[a.transport]
    trunk = sip.SIPOutboundTrunkInfo(
        name=a.name,
        address=a.address,
        numbers=a.numbers,
        transport=transport,  # type: ignore[arg-type]
        auth_username=a.auth_username,
        auth_password=a.auth_password,
    )
    result: Message = await lk.sip.create_outbound_trunk(
        sip.CreateSIPOutboundTrunkRequest(trunk=trunk)
    )
    return result


async def list_trunks(lk: Any, a: argparse.Namespace) -> list[dict[str, Any]]:
    from livekit.protocol import sip  # noqa: PLC0415

    inbound = await lk.sip.list_inbound_trunk(sip.ListSIPInboundTrunkRequest())
    outbound = await lk.sip.list_outbound_trunk(sip.ListSIPOutboundTrunkRequest())
    rows = [{"kind": "inbound", **_as_dict(t)} for t in inbound.items]
    rows += [{"kind": "outbound", **_as_dict(t)} for t in outbound.items]
    return rows


async def delete_trunk(lk: Any, a: argparse.Namespace) -> Message:
    from livekit.protocol import sip  # noqa: PLC0415

    result: Message = await lk.sip.delete_trunk(sip.DeleteSIPTrunkRequest(sip_trunk_id=a.trunk_id))
    return result


async def create_rule(lk: Any, a: argparse.Namespace) -> Message:
    from livekit.protocol import agent_dispatch, room, sip  # noqa: PLC0415

    rule = sip.SIPDispatchRule()
    if a.direct is not None:
        rule.dispatch_rule_direct.CopyFrom(sip.SIPDispatchRuleDirect(room_name=a.direct, pin=a.pin))
    elif a.individual is not None:
        rule.dispatch_rule_individual.CopyFrom(
            sip.SIPDispatchRuleIndividual(room_prefix=a.individual, pin=a.pin)
        )
    else:
        rule.dispatch_rule_callee.CopyFrom(
            sip.SIPDispatchRuleCallee(room_prefix=a.callee, pin=a.pin)
        )
    info = sip.SIPDispatchRuleInfo(
        rule=rule,
        name=a.name,
        trunk_ids=a.trunk_ids,
        inbound_numbers=a.inbound_numbers,
        numbers=a.numbers,
        hide_phone_number=a.hide_phone_number,
    )
    if a.agent:
        info.room_config.CopyFrom(
            room.RoomConfiguration(
                agents=[agent_dispatch.RoomAgentDispatch(agent_name=n) for n in a.agent]
            )
        )
    result: Message = await lk.sip.create_dispatch_rule(
        sip.CreateSIPDispatchRuleRequest(dispatch_rule=info)
    )
    return result


async def list_rules(lk: Any, a: argparse.Namespace) -> list[dict[str, Any]]:
    from livekit.protocol import sip  # noqa: PLC0415

    rules = await lk.sip.list_dispatch_rule(sip.ListSIPDispatchRuleRequest())
    return [_as_dict(r) for r in rules.items]


async def delete_rule(lk: Any, a: argparse.Namespace) -> Message:
    from livekit.protocol import sip  # noqa: PLC0415

    result: Message = await lk.sip.delete_dispatch_rule(
        sip.DeleteSIPDispatchRuleRequest(sip_dispatch_rule_id=a.rule_id)
    )
    return result


async def list_rooms(lk: Any, a: argparse.Namespace) -> list[dict[str, Any]]:
    from livekit.protocol import room  # noqa: PLC0415

    rooms = await lk.room.list_rooms(room.ListRoomsRequest())
    return [_as_dict(r) for r in rooms.rooms]


async def delete_room(lk: Any, a: argparse.Namespace) -> dict[str, Any]:
    from livekit.protocol import room  # noqa: PLC0415

    await lk.room.delete_room(room.DeleteRoomRequest(room=a.room))
    return {"deleted": a.room}


async def list_participants(lk: Any, a: argparse.Namespace) -> list[dict[str, Any]]:
    from livekit.protocol import room  # noqa: PLC0415

    res = await lk.room.list_participants(room.ListParticipantsRequest(room=a.room))
    return [_as_dict(p) for p in res.participants]


async def remove_participant(lk: Any, a: argparse.Namespace) -> dict[str, Any]:
    from livekit.protocol import room  # noqa: PLC0415

    await lk.room.remove_participant(room.RoomParticipantIdentity(room=a.room, identity=a.identity))
    return {"removed": a.identity, "room": a.room}


# -- output ----------------------------------------------------------------------------------

TABLE_COLUMNS = {
    "trunk": ["kind", "sip_trunk_id", "name", "numbers", "address", "allowed_addresses"],
    "rule": ["sip_dispatch_rule_id", "name", "rule", "trunk_ids", "inbound_numbers", "numbers"],
    "room": ["sid", "name", "num_participants", "creation_time", "metadata"],
    "participant": ["sid", "identity", "name", "kind", "state", "attributes"],
    "node": ["id", "state", "calls", "rooms", "cpu", "age", "sip", "http"],
    "call": [
        "call_id",
        "call_direction",
        "call_status",
        "from",
        "to",
        "room_name",
        "participant_identity",
        "status_code",
        "created",
    ],
}


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
        transfers.setdefault(transfer.call_id, []).append(_as_dict(transfer))
    calls = [sip.SIPCallInfo.FromString(data) for data in records]
    rows = []
    for c in calls:
        row = _as_dict(c)
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
    shown = _as_dict(info)
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


def _as_dict(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return out


def _cell(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(_cell(v) for v in value)
    if isinstance(value, dict):
        return " ".join(f"{k}={_cell(v)}" for k, v in value.items())
    return str(value)


def render_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[_cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def server_credentials(a: argparse.Namespace) -> tuple[str, str, str]:
    """The server's URL and the API key and secret to sign with: the flags, else LiveKit's
    environment variables, else the development server's. pyjwt's warning about a short key is
    kept for a secret of the user's, not for the development one everybody knows anyway."""
    url = a.url or os.environ.get("LIVEKIT_URL") or "http://127.0.0.1:7880"
    key = a.api_key or os.environ.get("LIVEKIT_API_KEY") or DEV_KEY
    secret = a.api_secret or os.environ.get("LIVEKIT_API_SECRET") or DEV_SECRET
    if secret == DEV_SECRET:
        from jwt.warnings import InsecureKeyLengthWarning  # noqa: PLC0415

        warnings.filterwarnings("ignore", category=InsecureKeyLengthWarning)
    return url, key, secret


async def _run_client(command: Command, args: argparse.Namespace) -> Any:
    from livekit import api  # noqa: PLC0415

    url, key, secret = server_credentials(args)
    async with api.LiveKitAPI(url=url, api_key=key, api_secret=secret) as lk:
        return await command(lk, args)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    try:
        if getattr(args, "local", False):
            result = args.run(args)
        else:
            result = asyncio.run(_run_client(args.run, args))
    except Exception as exc:  # the client's errors carry the server's code and message
        print(f"sipbridge {args.command} {args.action}: {exc}", file=sys.stderr)
        return 1
    if result is None:  # the command printed its own output (call trace, call pcap)
        return 0
    if isinstance(result, Message):
        result = _as_dict(result)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    elif isinstance(result, list):
        print(render_table(result, TABLE_COLUMNS[args.command]))
    else:
        print(render_table([result], list(result)))
    return 0


def _serve(args: argparse.Namespace) -> int:
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

    from sipbridge.server.app import run  # noqa: PLC0415 - keep client commands light
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
