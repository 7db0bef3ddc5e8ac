"""Placement decisions (`telephony/placement.py`): the claim script's reply read as a route,
the least-loaded node by LiveKit's affinity, and the signed header of a proxied INVITE."""

from __future__ import annotations

from sipbridge.telephony.node_info import NodeInfo
from sipbridge.telephony.placement import (
    Proxied,
    _mac,
    affinity,
    least_loaded,
    route_from_reply,
    sign_hop,
    sign_proxied,
    verify_hop,
    verify_proxied,
    workers_elsewhere,
)


def test_route_from_reply() -> None:
    mine = route_from_reply("a", [b"a", b"", 1, 0])
    assert mine.local and mine.claimed and not mine.took_over and mine.owner == "a"
    taken = route_from_reply("a", [b"a", b"", 1, 1])
    assert taken.local and taken.took_over
    other = route_from_reply("a", [b"b", b'{"http":"127.0.0.3:9"}', 0, 0])
    assert not other.local and other.owner == "b"
    assert other.node is not None and other.node.id == "b" and other.node.http == "127.0.0.3:9"
    nobody = route_from_reply("a", [b"", b"", 0, 0])
    assert nobody.local and nobody.owner == "" and not nobody.claimed
    # Another owner but no heartbeat came with it: nobody serves the room (a lookup of a dead
    # owner's room); an empty or short reply is the same.
    assert route_from_reply("a", [b"b", b"", 0, 0]) == nobody
    assert route_from_reply("a", []) == nobody


def test_least_loaded_by_affinity_state_and_cpu() -> None:
    def node(name: str, calls: int, max_calls: int = 10, **kw: object) -> NodeInfo:
        return NodeInfo(id=name, calls=calls, max_calls=max_calls, **kw)  # type: ignore[arg-type]

    assert affinity(node("a", 3)) == 0.7
    assert affinity(node("a", 0, 0)) == 1.0 > affinity(node("a", 1, 0))
    nodes = [node("a", 5), node("b", 2), node("c", 1, state="draining"), node("d", 0, cpu=95.0)]
    best = least_loaded(nodes)
    assert best is not None and best.id == "b"
    assert least_loaded([node("a", 10), node("b", 3, cpu=90.0)]) is None  # full, too busy
    # a tie goes to the preferred node (no hop), else to the first id
    tie = [node("x", 2), node("y", 2)]
    assert least_loaded(tie).id == "x"  # type: ignore[union-attr]
    assert least_loaded(tie, prefer="y").id == "y"  # type: ignore[union-attr]
    assert least_loaded([]) is None


def test_a_dispatch_goes_to_the_least_loaded_worker_another_node_advertises() -> None:
    def node(name: str, agents: dict[str, float], **kw: object) -> NodeInfo:
        return NodeInfo(id=name, agents=tuple(agents.items()), max_calls=10, **kw)  # type: ignore[arg-type]

    nodes = [
        node("me", {"support": 0.0}),
        node("b", {"support": 0.5, "sales": 0.1}),
        node("c", {"support": 0.25}),
        node("d", {"support": 0.0}, state="draining"),
        node("e", {"sales": 0.0}),
        node("f", {"support": 0.25}, calls=5),  # same load as c, less free capacity
    ]
    found = workers_elsewhere(nodes, "support", below=None, me="me")
    assert [n.id for n in found] == ["c", "f", "b"]
    assert [n.id for n in workers_elsewhere(nodes, "support", below=0.3, me="me")] == ["c", "f"]
    assert workers_elsewhere(nodes, "support", below=0.25, me="me") == []  # a tie stays here
    assert [n.id for n in workers_elsewhere(nodes, "sales", below=0.05, me="me")] == ["e"]
    assert workers_elsewhere(nodes, "", below=None, me="me") == []


def test_proxied_header_signed_and_checked() -> None:
    facts = Proxied(source="192.0.2.7", trunk="ST_abc", node="node-b")
    value = sign_proxied("secret", "call-1@x", facts)
    assert verify_proxied(["other", "secret"], "call-1@x", value) == facts
    assert verify_proxied(["other"], "call-1@x", value) is None  # not our secret
    assert verify_proxied(["secret"], "call-2@x", value) is None  # another call's header
    forged = value.replace("192.0.2.7", "192.0.2.8")
    assert verify_proxied(["secret"], "call-1@x", forged) is None
    for bad in ("", "sig=", "source=1;sig=00", value + "x", "a" * 600, "x;y;sig=1"):
        assert verify_proxied(["secret"], "call-1@x", bad) is None
    # the caller's transport, when given, is signed with the rest
    tls = Proxied(source="192.0.2.7", trunk="", node="node-b", transport="tls")
    value = sign_proxied("secret", "call-1@x", tls)
    assert ";transport=tls;" in value and verify_proxied(["secret"], "call-1@x", value) == tls
    downgraded = value.replace("transport=tls", "transport=tcp")
    assert verify_proxied(["secret"], "call-1@x", downgraded) is None
    extra = value.replace(";sig=", ";x=1;sig=")
    assert verify_proxied(["secret"], "call-1@x", extra) is None


def test_proxied_header_signs_the_callers_port() -> None:
    facts = Proxied(source="192.0.2.7", trunk="ST_abc", node="node-b", transport="udp", port=5071)
    value = sign_proxied("secret", "call-1@x", facts)
    assert ";port=5071;" in value and verify_proxied(["secret"], "call-1@x", value) == facts
    moved = value.replace("port=5071", "port=5072")  # the owner's BYE sent elsewhere: refused
    assert verify_proxied(["secret"], "call-1@x", moved) is None
    for port in ("70000", "x", "", "000005060"):  # (a well-signed but impossible port, too)
        fields = f"source=192.0.2.7;trunk=;node=b;port={port}"
        signed = f"{fields};sig={_mac('secret', 'call-1@x', fields)}"
        assert verify_proxied(["secret"], "call-1@x", signed) is None, port


def test_hop_header_signed_over_the_path() -> None:
    value = sign_hop("secret", "node-b", "/rtc")
    assert verify_hop(["other", "secret"], "/rtc", value) == "node-b"
    assert verify_hop(["secret"], "/rtc/v1", value) is None  # another path
    assert verify_hop(["other"], "/rtc", value) is None
    assert verify_hop(["secret"], "/rtc", value.replace("node-b", "node-c")) is None
    for bad in (None, "", "node-b", ";sig=00", "node-b;sig=", "x" * 600):
        assert verify_hop(["secret"], "/rtc", bad) is None
