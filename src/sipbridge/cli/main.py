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
from dataclasses import dataclass
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


# -- the command line, as a table ------------------------------------------------------------


@dataclass(frozen=True)
class Arg:
    """One `add_argument` call: its names and keywords."""

    names: tuple[str, ...]
    options: dict[str, Any]


@dataclass(frozen=True)
class OneOf:
    """A mutually exclusive group of arguments (one of them required)."""

    args: tuple[Arg, ...]


@dataclass(frozen=True)
class Action:
    """`sipbridge COMMAND ACTION`: its flags, and what runs it.

    `client`: the flags for reaching a server (--url, --api-key, --api-secret, --json) after
    `args`. `local`: `run` takes only the arguments (no `livekit-api` client is opened for it)."""

    name: str
    help: str
    run: Callable[..., Any]
    args: tuple[Arg | OneOf, ...] = ()
    client: bool = True
    local: bool = False


def arg(*names: str, **options: Any) -> Arg:
    return Arg(names, options)


JSON_TABLE = arg("--json", action="store_true", help="print JSON instead of a table")
CLIENT_ARGS = (
    arg("--url", default=None, help="server URL (env LIVEKIT_URL)"),
    arg("--api-key", default=None, help="API key (env LIVEKIT_API_KEY)"),
    arg("--api-secret", default=None, help="API secret (env LIVEKIT_API_SECRET)"),
    JSON_TABLE,
)
NAME = arg("--name", default="")
AUTH = (arg("--auth-username", default=""), arg("--auth-password", default=""))
CALL_ID = arg("call_id", help="the call's id (SCL_...) or its SIP Call-ID")
REDIS_PREFIX = arg(
    "--redis-prefix", default="sipbridge:", help="start of every Redis key (sipbridge:)"
)
DATABASE = (
    arg("--db", default="./sipbridge.db", help="SQLite file (./sipbridge.db)"),
    arg("--redis", metavar="URL", help="read the servers' Redis instead of --db"),
    REDIS_PREFIX,
)
STORE_URL = "sqlite:PATH or redis://HOST:PORT/DB"

COMMANDS: tuple[tuple[str, str, tuple[Action, ...]], ...] = (
    (
        "trunk",
        "SIP trunks",
        (
            Action(
                "create-inbound",
                "create an inbound trunk",
                create_inbound,
                (
                    NAME,
                    arg("--numbers", nargs="*", default=[], help="numbers this trunk answers"),
                    arg("--allowed-addresses", nargs="*", default=[], help="IPs/CIDRs allowed"),
                    arg("--allowed-numbers", nargs="*", default=[], help="callers allowed"),
                    *AUTH,
                ),
            ),
            Action(
                "create-outbound",
                "create an outbound trunk",
                create_outbound,
                (
                    NAME,
                    arg("--address", required=True, help="carrier host[:port]"),
                    arg("--numbers", nargs="+", required=True, help="caller ids to call from"),
                    arg("--transport", choices=["auto", "udp", "tcp", "tls"], default="auto"),
                    *AUTH,
                ),
            ),
            Action("list", "list trunks", list_trunks),
            Action("delete", "delete a trunk", delete_trunk, (arg("trunk_id"),)),
        ),
    ),
    (
        "rule",
        "dispatch rules",
        (
            Action(
                "create",
                "create a dispatch rule",
                create_rule,
                (
                    OneOf(
                        (
                            arg("--direct", metavar="ROOM", help="every call to this room"),
                            arg("--individual", metavar="PREFIX", help="a room per caller"),
                            arg("--callee", metavar="PREFIX", help="a room per called number"),
                        )
                    ),
                    arg("--pin", default=""),
                    NAME,
                    arg("--trunk-ids", nargs="*", default=[]),
                    arg("--inbound-numbers", nargs="*", default=[], help="callers this rule takes"),
                    arg("--numbers", nargs="*", default=[], help="called numbers this rule takes"),
                    arg("--hide-phone-number", action="store_true"),
                    arg("--agent", action="append", default=[], help="agent name to dispatch"),
                ),
            ),
            Action("list", "list dispatch rules", list_rules),
            Action("delete", "delete a dispatch rule", delete_rule, (arg("rule_id"),)),
        ),
    ),
    (
        "room",
        "rooms",
        (
            Action("list", "list rooms", list_rooms),
            Action("delete", "delete a room (hangs up its calls)", delete_room, (arg("room"),)),
        ),
    ),
    (
        "call",
        "the call log",
        (
            Action(
                "list",
                "calls, newest first (reads the server's database)",
                list_calls,
                (
                    *DATABASE,
                    arg(
                        "--limit",
                        type=int,
                        default=100,
                        help="calls to list (100; at most 1000000)",
                    ),
                    arg(
                        "--since",
                        default="",
                        help="only calls created since: 15m, 2h, 7d, an ISO 8601 time",
                    ),
                    arg("--until", default="", help="only calls created before (as --since)"),
                    arg("--page-token", default="", help="go on after a previous list (its token)"),
                    arg("--room", default="", help="only the calls of this room"),
                    arg("--trunk", default="", help="only the calls through this trunk id"),
                    arg("--status", default="", help="only calls in this state (active, ...)"),
                    arg("--number", default="", help="only calls from or to this number"),
                    JSON_TABLE,
                ),
                client=False,
                local=True,
            ),
            Action(
                "trace",
                "a call's SIP messages as a ladder (asks the server)",
                call_trace,
                (CALL_ID,),
                local=True,
            ),
            Action(
                "pcap",
                "a call's SIP messages as a pcap file on stdout",
                call_pcap,
                (CALL_ID,),
                local=True,
            ),
            Action(
                "rtp",
                "trace a live call's RTP headers from now on (for its pcap)",
                call_rtp,
                (CALL_ID,),
                local=True,
            ),
            Action(
                "show",
                "one call and its media quality (reads the server's database)",
                show_call,
                (
                    arg("call_id", help="the call's id (SCL_...)"),
                    *DATABASE,
                    arg("--json", action="store_true", help="print JSON"),
                ),
                client=False,
                local=True,
            ),
        ),
    ),
    (
        "store",
        "the stored records",
        (
            Action(
                "copy",
                "copy every trunk, dispatch rule, call and transfer record from SRC to DST (by "
                f"id: running it again changes nothing); SRC and DST are {STORE_URL}",
                copy_store,
                (
                    arg("src", metavar="SRC", help=STORE_URL),
                    arg("dst", metavar="DST", help=STORE_URL),
                    REDIS_PREFIX,
                    JSON_TABLE,
                ),
                client=False,
                local=True,
            ),
        ),
    ),
    (
        "node",
        "the nodes of the cluster",
        (
            Action(
                "list",
                "every live node: state, load, addresses (asks the server)",
                list_nodes,
                local=True,
            ),
        ),
    ),
    (
        "participant",
        "participants",
        (
            Action("list", "list a room's participants", list_participants, (arg("room"),)),
            Action(
                "remove",
                "remove a participant (hangs up a call)",
                remove_participant,
                (arg("room"), arg("identity")),
            ),
        ),
    ),
)


def _add_args(parser: argparse.ArgumentParser, args: Sequence[Arg | OneOf]) -> None:
    for a in args:
        if isinstance(a, OneOf):
            group = parser.add_mutually_exclusive_group(required=True)
            for member in a.args:
                group.add_argument(*member.names, **member.options)
        else:
            parser.add_argument(*a.names, **a.options)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sipbridge", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"sipbridge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    add_serve_parser(sub)
    for command, command_help, actions in COMMANDS:
        actions_parser = sub.add_parser(command, help=command_help).add_subparsers(
            dest="action", required=True
        )
        for action in actions:
            p = actions_parser.add_parser(action.name, help=action.help)
            _add_args(p, action.args + (CLIENT_ARGS if action.client else ()))
            if action.local:
                p.set_defaults(run=action.run, local=True)
            else:
                p.set_defaults(run=action.run)
    return parser


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
