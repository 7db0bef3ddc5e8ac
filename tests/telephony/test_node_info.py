"""A node's heartbeat record (`telephony/node_info.py`): JSON both ways, what another version
may have written, CPU from two samples."""

from __future__ import annotations

import pytest

from sipbridge.telephony.node_info import (
    MAX_AGENT_NAME,
    MAX_AGENT_NAMES,
    MAX_NODE_INFO_BYTES,
    NodeInfo,
    advertise,
    cpu_percent,
)


def test_round_trip_without_the_age() -> None:
    info = NodeInfo(
        id="a-1",
        state="draining",
        calls=3,
        max_calls=1000,
        rooms=2,
        cpu=12.5,
        sip="127.0.0.2:5060",
        http="127.0.0.2:7880",
        version="0.1",
        started_at=1700000000.5,
        agents=(("support", 0.25), ("", 0.5)),
        age=3.0,
    )
    data = info.to_json()
    assert b'"age"' not in data and b'"id":"a-1"' in data
    assert b'"agents":{"support":0.25,"":0.5}' in data
    row = {**info.as_row(), "cpu": 12.5, "age": 1.25, "started_at": 1700000000.5}
    row["agents"] = info.agents
    assert NodeInfo.from_json("a-1", data, age=1.25) == NodeInfo(**row)
    assert info.as_row()["agents"] == {"support": 0.25, "": 0.5}


@pytest.mark.parametrize(
    "data",
    [b"", b"not json", b"[1, 2]", b'"x"', b"\xff\xfe", b"{" + b" " * MAX_NODE_INFO_BYTES + b"}"],
)
def test_anything_else_reads_as_an_empty_record(data: bytes) -> None:
    assert NodeInfo.from_json("n", data, age=-2.0) == NodeInfo(id="n")


def test_fields_of_the_wrong_type_or_unknown_are_left_at_their_defaults() -> None:
    data = (
        b'{"id":"other","state":7,"calls":"3","rooms":true,"cpu":5,"sip":"h:1",'
        b'"started_at":1e999,"extra":1}'
    )
    info = NodeInfo.from_json("n", data.replace(b"1e999", b"NaN"))
    assert info == NodeInfo(id="n", cpu=5.0, sip="h:1")


def test_cpu_percent() -> None:
    assert cpu_percent(1.0, 10.0, 1.5, 11.0) == 50.0
    assert cpu_percent(1.0, 10.0, 3.0, 11.0) == 200.0  # threads on two cores
    assert cpu_percent(1.0, 10.0, 2.0, 10.0) == 0.0
    assert cpu_percent(2.0, 10.0, 1.0, 11.0) == 0.0


def test_rows_round_for_people() -> None:
    row = NodeInfo(id="n", cpu=12.345, age=0.96).as_row()
    assert (row["cpu"], row["age"]) == (12.3, 1.0)


def test_a_node_advertises_each_agent_names_least_loaded_worker() -> None:
    workers = [("support", 0.5), ("support", 0.25), ("", 0.75), ("sales", float("nan"))]
    assert advertise(workers) == (("support", 0.25), ("", 0.75))
    info = NodeInfo(id="n", agents=advertise(workers))
    assert info.agent_load("support") == 0.25 and info.agent_load("") == 0.75
    assert info.agent_load("sales") is None
    assert advertise([("x" * (MAX_AGENT_NAME + 1), 0.0)]) == ()
    many = advertise((f"a{i:03}", i / 100) for i in range(MAX_AGENT_NAMES + 5))
    assert len(many) == MAX_AGENT_NAMES and many[0] == ("a000", 0.0)


@pytest.mark.parametrize(
    ("agents", "read"),
    [
        (b'{"a":1,"b":0.5}', (("b", 0.5), ("a", 1.0))),
        (b'{"a":"1","b":true,"c":null,"d":[1]}', ()),
        (b"[1, 2]", ()),
        (b'"a"', ()),
    ],
)
def test_advertised_agents_of_the_wrong_type_are_left_out(agents: bytes, read: object) -> None:
    assert NodeInfo.from_json("n", b'{"calls":2,"agents":' + agents + b"}").agents == read
    assert NodeInfo.from_json("n", b'{"calls":2,"agents":' + agents + b"}").calls == 2
