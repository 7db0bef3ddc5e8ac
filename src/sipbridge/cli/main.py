"""`sipbridge serve | trunk | rule | room | participant`.

`serve` runs the server. The other commands are for humans and scripts; they talk to a running
server through the official `livekit-api` client, exactly as any LiveKit user's code would, using
`--url`/`LIVEKIT_URL` and `--api-key`/`--api-secret` (or `LIVEKIT_API_KEY`/`LIVEKIT_API_SECRET`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from google.protobuf.message import Message

from sipbridge import __version__
from sipbridge.cli.calls import (
    call_pcap,
    call_rtp,
    call_trace,
    copy_store,
    list_calls,
    list_nodes,
    show_call,
)
from sipbridge.cli.output import TABLE_COLUMNS, as_dict, render_table, server_credentials
from sipbridge.cli.serve import add_serve_parser, serve

Command = Callable[[Any, argparse.Namespace], Awaitable[Any]]


def _client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=None, help="server URL (env LIVEKIT_URL)")
    p.add_argument("--api-key", default=None, help="API key (env LIVEKIT_API_KEY)")
    p.add_argument("--api-secret", default=None, help="API secret (env LIVEKIT_API_SECRET)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sipbridge", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"sipbridge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    add_serve_parser(sub)

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
    rows = [{"kind": "inbound", **as_dict(t)} for t in inbound.items]
    rows += [{"kind": "outbound", **as_dict(t)} for t in outbound.items]
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
    return [as_dict(r) for r in rules.items]


async def delete_rule(lk: Any, a: argparse.Namespace) -> Message:
    from livekit.protocol import sip  # noqa: PLC0415

    result: Message = await lk.sip.delete_dispatch_rule(
        sip.DeleteSIPDispatchRuleRequest(sip_dispatch_rule_id=a.rule_id)
    )
    return result


async def list_rooms(lk: Any, a: argparse.Namespace) -> list[dict[str, Any]]:
    from livekit.protocol import room  # noqa: PLC0415

    rooms = await lk.room.list_rooms(room.ListRoomsRequest())
    return [as_dict(r) for r in rooms.rooms]


async def delete_room(lk: Any, a: argparse.Namespace) -> dict[str, Any]:
    from livekit.protocol import room  # noqa: PLC0415

    await lk.room.delete_room(room.DeleteRoomRequest(room=a.room))
    return {"deleted": a.room}


async def list_participants(lk: Any, a: argparse.Namespace) -> list[dict[str, Any]]:
    from livekit.protocol import room  # noqa: PLC0415

    res = await lk.room.list_participants(room.ListParticipantsRequest(room=a.room))
    return [as_dict(p) for p in res.participants]


async def remove_participant(lk: Any, a: argparse.Namespace) -> dict[str, Any]:
    from livekit.protocol import room  # noqa: PLC0415

    await lk.room.remove_participant(room.RoomParticipantIdentity(room=a.room, identity=a.identity))
    return {"removed": a.identity, "room": a.room}


async def _run_client(command: Command, args: argparse.Namespace) -> Any:
    from livekit import api  # noqa: PLC0415

    url, key, secret = server_credentials(args)
    async with api.LiveKitAPI(url=url, api_key=key, api_secret=secret) as lk:
        return await command(lk, args)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
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
        result = as_dict(result)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    elif isinstance(result, list):
        print(render_table(result, TABLE_COLUMNS[args.command]))
    else:
        print(render_table([result], list(result)))
    return 0
