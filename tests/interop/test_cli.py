"""`python -m sipbridge trunk | rule | room | participant | serve` as a user runs them, against a
real server; what they print is checked against what the official client sees."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from livekit import api
from livekit.protocol import room as room_proto
from livekit.protocol import sip

from tests.harness import leave_clean, module_server
from tests.helpers import API_KEY, API_SECRET, ServerProcess, free_port

CLI_TIMEOUT_S = 20.0


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the client commands' tests (the `serve` ones start their own)."""
    yield from module_server(tmp_path_factory, "cli")


@pytest.fixture
async def server(shared_server: ServerProcess) -> AsyncIterator[ServerProcess]:
    """The module's server (and `lk`'s); its trunks, rules and rooms deleted after each test."""
    yield shared_server
    await leave_clean(shared_server)


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        assert self.code == 0, self
        return json.loads(self.stdout)


def cli_env() -> dict[str, str]:
    """The environment without LIVEKIT_* settings, so only the flags given count."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
    env["PYTHONWARNINGS"] = "ignore"
    return env


async def sipbridge(*args: str, cwd: Path | None = None) -> Run:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sipbridge",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(),
        cwd=cwd,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), CLI_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


async def client_cmd(server: ServerProcess, *args: str, secret: str = API_SECRET) -> Run:
    """A client command with the connection flags for `server`."""
    return await sipbridge(*args, "--url", server.url, "--api-key", API_KEY, "--api-secret", secret)


def table(text: str) -> list[dict[str, str]]:
    """Parse the CLI's table: an upper-case header, columns padded with spaces."""
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines, text
    header = lines[0]
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    names = [m.group().lower() for m in re.finditer(r"\S+", header)]
    assert header == header.upper(), header
    rows = []
    for line in lines[1:]:
        bounds = [*starts[1:], None]
        rows.append(
            {
                name: line[start:end].strip()
                for name, start, end in zip(names, starts, bounds, strict=True)
            }
        )
    return rows


# -- trunks ------------------------------------------------------------------------------------


async def test_trunk_create_list_delete(server: ServerProcess, lk: api.LiveKitAPI) -> None:
    created_in = (
        await client_cmd(
            server,
            "trunk",
            "create-inbound",
            "--name",
            "office",
            "--numbers",
            "+15105550100",
            "+15105550101",
            "--allowed-numbers",
            "+15550009",
            "--json",
        )
    ).json()
    in_id = created_in["sip_trunk_id"]
    assert in_id.startswith("ST_")
    assert created_in["name"] == "office"
    assert created_in["numbers"] == ["+15105550100", "+15105550101"]

    run = await client_cmd(
        server,
        "trunk",
        "create-outbound",
        "--name",
        "carrier",
        "--address",
        "sip.example.com:5060",
        "--numbers",
        "+15105550199",
        "--transport",
        "tcp",
    )
    assert run.code == 0, run
    [shown] = table(run.stdout)
    out_id = shown["sip_trunk_id"]
    assert out_id.startswith("ST_") and out_id != in_id
    assert shown["address"] == "sip.example.com:5060"

    # The server holds exactly what the CLI said it made.
    inbound = (await lk.sip.list_inbound_trunk(sip.ListSIPInboundTrunkRequest())).items
    outbound = (await lk.sip.list_outbound_trunk(sip.ListSIPOutboundTrunkRequest())).items
    assert [(t.sip_trunk_id, t.name, list(t.allowed_numbers)) for t in inbound] == [
        (in_id, "office", ["+15550009"])
    ]
    assert [(t.sip_trunk_id, t.address, t.transport) for t in outbound] == [
        (out_id, "sip.example.com:5060", sip.SIPTransport.SIP_TRANSPORT_TCP)
    ]
    assert list(outbound[0].numbers) == ["+15105550199"]

    run = await client_cmd(server, "trunk", "list")
    assert run.code == 0, run
    rows = table(run.stdout)
    assert {(r["kind"], r["sip_trunk_id"], r["name"]) for r in rows} == {
        ("inbound", in_id, "office"),
        ("outbound", out_id, "carrier"),
    }
    assert next(r for r in rows if r["kind"] == "inbound")["numbers"] == (
        "+15105550100,+15105550101"
    )

    listed = (await client_cmd(server, "trunk", "list", "--json")).json()
    assert {(r["kind"], r["sip_trunk_id"]) for r in listed} == {
        ("inbound", in_id),
        ("outbound", out_id),
    }

    run = await client_cmd(server, "trunk", "delete", in_id)
    assert run.code == 0, run
    assert not (await lk.sip.list_inbound_trunk(sip.ListSIPInboundTrunkRequest())).items
    listed = (await client_cmd(server, "trunk", "list", "--json")).json()
    assert [r["sip_trunk_id"] for r in listed] == [out_id]

    # Deleting it again is an error, reported on stderr with the server's code.
    run = await client_cmd(server, "trunk", "delete", in_id)
    assert run.code == 1, run
    assert "not_found" in run.stderr and run.stdout == ""


async def test_trunk_create_refused_by_validation(
    server: ServerProcess, lk: api.LiveKitAPI
) -> None:
    # No numbers, addresses or auth: refused for security, nothing stored.
    run = await client_cmd(server, "trunk", "create-inbound", "--name", "open")
    assert run.code == 1, run
    assert "invalid_argument" in run.stderr
    assert run.stdout == ""
    assert not (await lk.sip.list_inbound_trunk(sip.ListSIPInboundTrunkRequest())).items


async def test_trunk_list_empty(server: ServerProcess) -> None:
    run = await client_cmd(server, "trunk", "list")
    assert (run.code, run.stdout.strip()) == (0, "(none)"), run
    assert (await client_cmd(server, "trunk", "list", "--json")).json() == []


# -- dispatch rules ----------------------------------------------------------------------------


async def test_rule_create_list_delete(server: ServerProcess, lk: api.LiveKitAPI) -> None:
    made = (
        await client_cmd(
            server,
            "rule",
            "create",
            "--direct",
            "support-room",
            "--pin",
            "1234",
            "--name",
            "support",
            "--json",
        )
    ).json()
    rule_id = made["sip_dispatch_rule_id"]
    assert rule_id.startswith("SDR_")
    assert made["rule"]["dispatch_rule_direct"] == {"room_name": "support-room", "pin": "1234"}

    other = (
        await client_cmd(
            server,
            "rule",
            "create",
            "--individual",
            "call-",
            "--numbers",
            "+15105550100",
            "--agent",
            "receptionist",
            "--json",
        )
    ).json()
    assert other["sip_dispatch_rule_id"].startswith("SDR_")

    rules = {
        r.sip_dispatch_rule_id: r
        for r in (await lk.sip.list_dispatch_rule(sip.ListSIPDispatchRuleRequest())).items
    }
    assert set(rules) == {rule_id, other["sip_dispatch_rule_id"]}
    assert rules[rule_id].rule.dispatch_rule_direct.room_name == "support-room"
    assert rules[rule_id].rule.dispatch_rule_direct.pin == "1234"
    individual = rules[other["sip_dispatch_rule_id"]]
    assert individual.rule.dispatch_rule_individual.room_prefix == "call-"
    assert list(individual.numbers) == ["+15105550100"]
    assert [a.agent_name for a in individual.room_config.agents] == ["receptionist"]

    listed = (await client_cmd(server, "rule", "list", "--json")).json()
    assert {r["sip_dispatch_rule_id"] for r in listed} == set(rules)
    by_id = {r["sip_dispatch_rule_id"]: r for r in listed}
    assert by_id[rule_id]["name"] == "support"

    run = await client_cmd(server, "rule", "list")
    assert run.code == 0, run
    assert {r["sip_dispatch_rule_id"] for r in table(run.stdout)} == set(rules)

    run = await client_cmd(server, "rule", "delete", rule_id)
    assert run.code == 0, run
    remaining = (await lk.sip.list_dispatch_rule(sip.ListSIPDispatchRuleRequest())).items
    assert [r.sip_dispatch_rule_id for r in remaining] == [other["sip_dispatch_rule_id"]]
    listed = (await client_cmd(server, "rule", "list", "--json")).json()
    assert [r["sip_dispatch_rule_id"] for r in listed] == [other["sip_dispatch_rule_id"]]


# -- rooms and participants --------------------------------------------------------------------


async def test_room_and_participant_commands(server: ServerProcess, lk: api.LiveKitAPI) -> None:
    lobby = await lk.room.create_room(room_proto.CreateRoomRequest(name="lobby", metadata="m1"))
    other = await lk.room.create_room(room_proto.CreateRoomRequest(name="other"))

    listed = (await client_cmd(server, "room", "list", "--json")).json()
    assert {(r["name"], r["sid"]) for r in listed} == {
        ("lobby", lobby.sid),
        ("other", other.sid),
    }
    run = await client_cmd(server, "room", "list")
    assert run.code == 0, run
    rows = {r["name"]: r for r in table(run.stdout)}
    assert set(rows) == {"lobby", "other"}
    assert (rows["lobby"]["sid"], rows["lobby"]["metadata"]) == (lobby.sid, "m1")

    run = await client_cmd(server, "participant", "list", "lobby")
    assert (run.code, run.stdout.strip()) == (0, "(none)"), run
    assert (await client_cmd(server, "participant", "list", "lobby", "--json")).json() == []

    run = await client_cmd(server, "participant", "remove", "lobby", "ghost")
    assert run.code == 1, run
    assert run.stdout == ""
    assert "ghost" in run.stderr and "not_found" in run.stderr, run.stderr
    assert run.stderr.startswith("sipbridge participant remove:"), run.stderr

    # As LiveKit: listing the participants of a room that does not exist is an empty list.
    run = await client_cmd(server, "participant", "list", "no-such-room")
    assert (run.code, run.stdout.strip(), run.stderr) == (0, "(none)", ""), run
    assert (await client_cmd(server, "participant", "list", "no-such-room", "--json")).json() == []
    rooms = (await lk.room.list_rooms(room_proto.ListRoomsRequest())).rooms
    assert sorted(r.name for r in rooms) == ["lobby", "other"]  # and it creates no room

    run = await client_cmd(server, "room", "delete", "lobby")
    assert run.code == 0, run
    assert "lobby" in run.stdout
    rooms = (await lk.room.list_rooms(room_proto.ListRoomsRequest())).rooms
    assert [r.name for r in rooms] == ["other"]
    listed = (await client_cmd(server, "room", "list", "--json")).json()
    assert [r["name"] for r in listed] == ["other"]


async def test_client_with_wrong_secret_is_refused(server: ServerProcess) -> None:
    run = await client_cmd(server, "room", "list", secret="not-the-secret-" + "x" * 32)
    assert run.code == 1, run
    assert "unauthenticated" in run.stderr
    assert run.stdout == ""


# -- serve configuration errors ----------------------------------------------------------------


def serve_args(tmp_path: Path) -> list[str]:
    return [
        "serve",
        "--http",
        f"127.0.0.1:{free_port()}",
        "--sip",
        f"127.0.0.1:{free_port()}",
        "--db",
        str(tmp_path / "never.db"),
    ]


@pytest.mark.parametrize(
    ("yaml_text", "fragment"),
    [
        ("keys:\n  k: s-long-enough\ncolour: blue\n", "colour"),
        ("keys: [\n", "YAML"),
        ("- just\n- a list\n", "mapping"),
        ("keys: 5\n", "keys"),
        ("keys:\n  k: s\nlog_level: loud\n", "log_level"),
        ("keys:\n  k: s\nwebhook: ftp://example.com/hook\n", "webhook"),
        ("keys:\n  k: s\nhttp: nowhere\n", "http"),
        ('keys:\n  k: s\ndev: "no"\n', "dev: expected true or false"),
    ],
    ids=[
        "unknown-key",
        "bad-yaml",
        "not-a-mapping",
        "bad-keys",
        "bad-log-level",
        "bad-webhook",
        "bad-http",
        "dev-not-a-boolean",
    ],
)
async def test_serve_with_bad_config_exits_2(tmp_path: Path, yaml_text: str, fragment: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(yaml_text)
    # Flags win over the file: leave --http out when the file's http is what is tested.
    args = (
        serve_args(tmp_path)
        if fragment != "http"
        else ["serve", "--db", str(tmp_path / "never.db")]
    )
    run = await sipbridge(*args, "--config", str(config), cwd=tmp_path)
    assert run.code == 2, run
    assert run.stderr.startswith("sipbridge serve:"), run.stderr
    assert fragment in run.stderr, run.stderr
    assert not (tmp_path / "never.db").exists()


async def test_serve_with_missing_config_file_exits_2(tmp_path: Path) -> None:
    run = await sipbridge(
        *serve_args(tmp_path), "--config", str(tmp_path / "absent.yaml"), cwd=tmp_path
    )
    assert run.code == 2, run
    assert "absent.yaml" in run.stderr


async def test_serve_without_keys_or_dev_exits_2(tmp_path: Path) -> None:
    run = await sipbridge(*serve_args(tmp_path), cwd=tmp_path)
    assert run.code == 2, run
    assert run.stderr.startswith("sipbridge serve:"), run.stderr
    assert "no API keys" in run.stderr and "--dev" in run.stderr, run.stderr
    assert not (tmp_path / "never.db").exists()
    assert not (tmp_path / "sipbridge.db").exists()


@pytest.mark.parametrize("keys", ["nokey", ":secret", "key:"])
async def test_serve_with_malformed_keys_flag_exits_2(tmp_path: Path, keys: str) -> None:
    run = await sipbridge(*serve_args(tmp_path), "--keys", keys, cwd=tmp_path)
    assert run.code == 2, run
    assert "--keys" in run.stderr, run.stderr


async def test_serve_with_a_directory_as_database_exits_1(tmp_path: Path) -> None:
    db = tmp_path / "a-directory"
    db.mkdir()
    run = await sipbridge(
        "serve",
        "--keys",
        "k:s",
        "--http",
        f"127.0.0.1:{free_port()}",
        "--sip",
        f"127.0.0.1:{free_port()}",
        "--db",
        str(db),
        cwd=tmp_path,
    )
    assert run.code == 1, run
    # Log lines may come first; the error is the last line, naming the path.
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith(f"sipbridge serve: cannot open database {db}"), run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    assert list(db.iterdir()) == []
