"""Inbound calls: trunk matching, dispatch rule selection and PINs, room names, the SIP
participant's identity, name and attributes.

Behaviour from SIP-BEHAVIOUR.md s2-4; expected values marked "reference" come from the
livekit/protocol `sip/sip_test.go` cases (TestMatchMasks, TestSIPMatchDispatchRule,
TestEvaluateDispatchRule) and livekit/sip `pkg/sip/participant.go`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from livekit.protocol import sip

from sipbridge.telephony.inbound import (
    _SANITIZE,
    MAX_ATTRIBUTE_VALUE,
    MAX_HEADER_ATTRIBUTES_BYTES,
    PROVIDER_HEADER_ATTRIBUTES,
    InboundCall,
    TrunkConflict,
    _clean,
    inbound_attributes,
    inbound_call_info,
    match_trunk,
    participant_identity,
    participant_name,
    room_for,
    rule_needs_pin,
    sanitize_attribute,
    select_rule,
    source_allowed,
)

quick = settings(database=None, max_examples=100)

CALLER = "+15550001"
CALLED = "+15105550100"
HOST = "carrier.example.com"
SOURCE = "192.0.2.10"

NO_HEADERS = sip.SIPHeaderOptions.SIP_NO_HEADERS
X_HEADERS = sip.SIPHeaderOptions.SIP_X_HEADERS
ALL_HEADERS = sip.SIPHeaderOptions.SIP_ALL_HEADERS


def call(**kw: Any) -> InboundCall:
    base: dict[str, Any] = {
        "caller": CALLER,
        "called": CALLED,
        "from_host": HOST,
        "source_ip": SOURCE,
        "call_id": "a84b4c76e66710@pc33.example.com",
        "from_tag": "1928301774",
    }
    return InboundCall(**(base | kw))


def trunk(trunk_id: str, **kw: Any) -> sip.SIPInboundTrunkInfo:
    return sip.SIPInboundTrunkInfo(sip_trunk_id=trunk_id, **kw)


def direct(rule_id: str, room: str = "room", pin: str = "", **kw: Any) -> sip.SIPDispatchRuleInfo:
    kind = sip.SIPDispatchRuleDirect(room_name=room, pin=pin)
    return sip.SIPDispatchRuleInfo(
        sip_dispatch_rule_id=rule_id, rule=sip.SIPDispatchRule(dispatch_rule_direct=kind), **kw
    )


def individual(
    rule_id: str, prefix: str = "call", pin: str = "", *, no_randomness: bool = False, **kw: Any
) -> sip.SIPDispatchRuleInfo:
    kind = sip.SIPDispatchRuleIndividual(room_prefix=prefix, pin=pin, no_randomness=no_randomness)
    return sip.SIPDispatchRuleInfo(
        sip_dispatch_rule_id=rule_id, rule=sip.SIPDispatchRule(dispatch_rule_individual=kind), **kw
    )


def callee(
    rule_id: str, prefix: str = "line", pin: str = "", *, randomize: bool = False, **kw: Any
) -> sip.SIPDispatchRuleInfo:
    kind = sip.SIPDispatchRuleCallee(room_prefix=prefix, pin=pin, randomize=randomize)
    return sip.SIPDispatchRuleInfo(
        sip_dispatch_rule_id=rule_id, rule=sip.SIPDispatchRule(dispatch_rule_callee=kind), **kw
    )


def short_hash(text: bytes) -> str:
    return hashlib.sha256(text).digest()[:8].hex()


def test_inbound_call_is_a_frozen_keyword_only_record() -> None:
    c = call(headers=(("X-A", "1"),))
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.caller = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        InboundCall("a", "b", "c", "d", "e", "f")  # type: ignore[misc]
    assert call().headers == ()


# --- trunks ---------------------------------------------------------------------------------------


TRUNK_CASES: list[Any] = [
    pytest.param([], {}, None, id="no-trunks"),
    pytest.param([trunk("ST_a")], {}, "ST_a", id="no-filters-is-a-wildcard"),
    # allowed_numbers: the caller
    pytest.param([trunk("ST_a", allowed_numbers=[CALLER])], {}, "ST_a", id="caller-allowed"),
    pytest.param([trunk("ST_a", allowed_numbers=["+15559999"])], {}, None, id="caller-refused"),
    pytest.param(
        [trunk("ST_a", allowed_numbers=["1 (555) 000-1"])], {}, "ST_a", id="caller-normalised"
    ),
    pytest.param(
        [trunk("ST_a", allowed_numbers=["alice"])], {"caller": "alice"}, "ST_a", id="caller-user"
    ),
    # numbers: the called number
    pytest.param([trunk("ST_a", numbers=[CALLED])], {}, "ST_a", id="called-listed"),
    pytest.param([trunk("ST_a", numbers=["+15105550199"])], {}, None, id="called-not-listed"),
    pytest.param(
        [trunk("ST_a", numbers=["1.510.555.0100"])], {}, "ST_a", id="called-normalised-trunk"
    ),
    pytest.param(
        [trunk("ST_a", numbers=[CALLED])],
        {"called": "15105550100"},
        "ST_a",
        id="called-normalised-call",
    ),
    # allowed_addresses: all conditions together
    pytest.param(
        [trunk("ST_a", numbers=[CALLED], allowed_numbers=[CALLER], allowed_addresses=[SOURCE])],
        {},
        "ST_a",
        id="all-conditions",
    ),
    pytest.param(
        [trunk("ST_a", numbers=[CALLED], allowed_numbers=[CALLER], allowed_addresses=["10.0.0.1"])],
        {},
        None,
        id="all-but-address",
    ),
    # most specific wins
    pytest.param(
        [trunk("ST_wild"), trunk("ST_num", numbers=[CALLED])], {}, "ST_num", id="number-beats-wild"
    ),
    pytest.param(
        [trunk("ST_num", numbers=[CALLED]), trunk("ST_wild")], {}, "ST_num", id="order-irrelevant"
    ),
    pytest.param(
        [trunk("ST_wild"), trunk("ST_num", numbers=["+15105550199"])],
        {},
        "ST_wild",
        id="wild-when-number-differs",
    ),
    pytest.param(
        [trunk("ST_wild"), trunk("ST_num", numbers=[CALLED], allowed_addresses=["10.0.0.0/8"])],
        {},
        "ST_wild",
        id="wild-when-specific-filtered",
    ),
    pytest.param(
        [
            trunk("ST_any", numbers=[CALLED]),
            trunk("ST_caller", numbers=[CALLED], allowed_numbers=[CALLER]),
        ],
        {},
        "ST_caller",
        id="listed-caller-beats-any-caller",
    ),
    pytest.param(
        [
            trunk("ST_any", numbers=[CALLED]),
            trunk("ST_caller", numbers=[CALLED], allowed_numbers=["+15559999"]),
        ],
        {},
        "ST_any",
        id="any-caller-when-caller-not-listed",
    ),
    pytest.param(
        [trunk("ST_wild_caller", allowed_numbers=[CALLER]), trunk("ST_num", numbers=[CALLED])],
        {},
        "ST_num",
        id="called-number-ranks-before-caller",
    ),
    pytest.param(
        [trunk("ST_wild"), trunk("ST_wild_caller", allowed_numbers=[CALLER])],
        {},
        "ST_wild_caller",
        id="wild-listed-caller-beats-wild",
    ),
    pytest.param(
        [trunk("ST_a", numbers=[CALLED]), trunk("ST_a", numbers=[CALLED])],
        {},
        "ST_a",
        id="same-trunk-twice-is-no-conflict",
    ),
    pytest.param(
        [trunk("ST_a", numbers=[CALLED]), trunk("ST_b", numbers=[CALLED], allowed_numbers=["x"])],
        {},
        "ST_a",
        id="other-caller-bucket-no-conflict",
    ),
]


@pytest.mark.parametrize(("trunks", "overrides", "expected"), TRUNK_CASES)
def test_match_trunk(
    trunks: list[sip.SIPInboundTrunkInfo], overrides: dict[str, str], expected: str | None
) -> None:
    found = match_trunk(trunks, call(**overrides))
    assert (found.sip_trunk_id if found is not None else None) == expected


@pytest.mark.parametrize(
    "trunks",
    [
        pytest.param([trunk("ST_b", numbers=[CALLED]), trunk("ST_a", numbers=[CALLED])], id="num"),
        pytest.param(
            [trunk("ST_b", numbers=[CALLED]), trunk("ST_a", numbers=["1 510 555 0100"])],
            id="number-normalised",
        ),
        pytest.param([trunk("ST_b"), trunk("ST_a")], id="wildcards"),
        pytest.param(
            [trunk("ST_b", allowed_numbers=[CALLER]), trunk("ST_a", allowed_numbers=[CALLER])],
            id="wildcards-same-caller",
        ),
        pytest.param(
            [
                trunk("ST_b", numbers=[CALLED], allowed_addresses=["192.0.2.0/24"]),
                trunk("ST_a", numbers=[CALLED], allowed_addresses=[SOURCE]),
            ],
            id="addresses-do-not-rank",
        ),
    ],
)
def test_match_trunk_conflict(trunks: list[sip.SIPInboundTrunkInfo]) -> None:
    with pytest.raises(TrunkConflict) as info:
        match_trunk([*trunks, trunk("ST_other", numbers=["+19999"])], call())
    assert info.value.status == 503
    assert info.value.trunk_ids == ("ST_a", "ST_b")
    assert info.value.called == CALLED
    assert "ST_a, ST_b" in str(info.value)


def test_match_trunk_specific_wins_over_conflicting_wildcards() -> None:
    # as the reference: wildcards only conflict when no specific trunk matched
    trunks = [trunk("ST_w1"), trunk("ST_w2"), trunk("ST_num", numbers=[CALLED])]
    found = match_trunk(trunks, call())
    assert found is not None and found.sip_trunk_id == "ST_num"


@given(st.permutations(range(5)))
@quick
def test_match_trunk_ignores_store_order(order: list[int]) -> None:
    trunks = [
        trunk("ST_0"),
        trunk("ST_1", numbers=["+19999"]),
        trunk("ST_2", numbers=[CALLED]),
        trunk("ST_3", numbers=[CALLED], allowed_numbers=[CALLER]),
        trunk("ST_4", numbers=[CALLED], allowed_numbers=[CALLER], allowed_addresses=["10.0.0.1"]),
    ]
    found = match_trunk([trunks[i] for i in order], call())
    assert found is not None and found.sip_trunk_id == "ST_3"


ADDRESS_CASES: list[Any] = [
    # (masks, source ip, from host, allowed)
    pytest.param([], SOURCE, HOST, True, id="empty"),
    pytest.param([SOURCE], SOURCE, HOST, True, id="v4-exact"),
    pytest.param(["192.0.2.11"], SOURCE, HOST, False, id="v4-other"),
    pytest.param(["192.0.2.0/24"], SOURCE, HOST, True, id="v4-cidr"),
    pytest.param(["192.0.2.10/0"], SOURCE, HOST, True, id="v4-host-bits-set"),  # reference
    pytest.param(["192.0.3.0/24"], SOURCE, HOST, False, id="v4-cidr-miss"),
    pytest.param(["2001:db8::1"], "2001:db8::1", HOST, True, id="v6-exact"),
    pytest.param(["2001:db8::1"], "2001:db8::2", HOST, False, id="v6-other"),
    pytest.param(["[2001:db8::1]"], "2001:db8::1", HOST, True, id="v6-bracketed-mask"),
    pytest.param(["2001:db8::/32"], "2001:db8:5::7", HOST, True, id="v6-cidr"),
    pytest.param(["[2001:db8::]/32"], "2001:db8:5::7", HOST, True, id="v6-bracketed-cidr"),
    pytest.param(["2001:db8::/32"], "2001:db9::1", HOST, False, id="v6-cidr-miss"),
    pytest.param(["2001:db8::1"], "[2001:db8::1]", HOST, True, id="v6-bracketed-source"),
    pytest.param(["fe80::1"], "fe80::1%eth0", HOST, True, id="v6-source-zone"),
    pytest.param(["192.0.2.0/24"], "::ffff:192.0.2.10", HOST, True, id="v4-mapped-source"),
    pytest.param(["::ffff:192.0.2.10"], "::ffff:192.0.2.10", HOST, True, id="v4-mapped-mask"),
    pytest.param(["::/0"], SOURCE, HOST, False, id="v6-mask-v4-source"),
    pytest.param(["0.0.0.0/0"], "2001:db8::1", HOST, False, id="v4-mask-v6-source"),
    # From host
    pytest.param([HOST], "203.0.113.9", HOST, True, id="host-name"),  # reference "hostname"
    pytest.param(["Carrier.Example.COM"], "203.0.113.9", HOST, True, id="host-name-any-case"),
    pytest.param(["some.domain"], "203.0.113.9", HOST, False, id="other-host-name"),
    pytest.param(
        ["some.domain", "192.168.1.0/24", HOST], "203.0.113.9", HOST, True, id="host-among-others"
    ),
    pytest.param([HOST], "203.0.113.9", "", False, id="no-from-host"),
    pytest.param([""], "203.0.113.9", "", False, id="empty-entry-no-from-host"),
    pytest.param([SOURCE], "203.0.113.9", SOURCE, False, id="ip-entry-not-from-host"),
    # invalid entries
    pytest.param(
        ["some.domain,192.0.2.10/24", "192.0.2.0/24"], SOURCE, HOST, True, id="junk-and-valid"
    ),
    pytest.param(["some.domain,192.0.2.10/24"], "203.0.113.9", HOST, True, id="only-junk-is-empty"),
    pytest.param(["a b", "*", "sip://x", "(1)"], "203.0.113.9", HOST, True, id="all-junk"),
    pytest.param(["junk, x", "10.0.0.0/8"], SOURCE, HOST, False, id="junk-and-miss"),
    pytest.param(["192.0.2.0/33"], SOURCE, HOST, False, id="bad-cidr-fails-closed"),
    pytest.param(["[192.0.2.10"], SOURCE, HOST, False, id="unbalanced-bracket"),
    pytest.param([SOURCE], "not-an-ip", HOST, False, id="bad-source-no-ip-match"),
    pytest.param([HOST], "not-an-ip", HOST, True, id="bad-source-host-match"),
]


@pytest.mark.parametrize(("masks", "source_ip", "from_host", "allowed"), ADDRESS_CASES)
def test_source_allowed(masks: list[str], source_ip: str, from_host: str, allowed: bool) -> None:
    assert source_allowed(source_ip, from_host, masks) is allowed
    # and through match_trunk, which is what the server calls
    found = match_trunk(
        [trunk("ST_a", allowed_addresses=masks)], call(source_ip=source_ip, from_host=from_host)
    )
    assert (found is not None) is allowed


# --- dispatch rules -------------------------------------------------------------------------------

OTHER = "+15559999"

RULE_CASES: list[Any] = [
    # (rules, trunk id, call overrides, pin, expected rule id)
    pytest.param([], "ST_a", {}, None, None, id="no-rules"),
    pytest.param([direct("R_1")], "ST_a", {}, None, "R_1", id="catch-all"),
    pytest.param([direct("R_1")], "", {}, None, "R_1", id="catch-all-no-trunk"),
    pytest.param(
        [direct("R_1", trunk_ids=["ST_a"])], "", {}, None, None, id="no-trunk-skips-specific"
    ),
    pytest.param(
        [direct("R_1", trunk_ids=["ST_b"])], "ST_a", {}, None, None, id="other-trunk-skipped"
    ),
    pytest.param(
        [direct("R_1", trunk_ids=["ST_b", "ST_a"])], "ST_a", {}, None, "R_1", id="trunk-in-list"
    ),
    # trunk-specific rules beat catch-all ones, whatever their priority
    pytest.param(
        [
            direct("R_all", inbound_numbers=[CALLER], numbers=[CALLED]),
            callee("R_trunk", trunk_ids=["ST_a"]),
        ],
        "ST_a",
        {},
        None,
        "R_trunk",
        id="trunk-specific-beats-catch-all",
    ),
    pytest.param(
        [direct("R_all"), callee("R_trunk", trunk_ids=["ST_a"], numbers=[OTHER])],
        "ST_a",
        {},
        None,
        "R_all",
        id="catch-all-when-specific-filtered",
    ),
    # priorities: direct < individual < callee
    pytest.param(
        [callee("R_callee"), individual("R_ind"), direct("R_direct", room="zzz")],
        "ST_a",
        {},
        None,
        "R_direct",
        id="open-direct-first",
    ),
    pytest.param(
        [callee("R_callee", prefix="a"), individual("R_ind", prefix="z")],
        "ST_a",
        {},
        None,
        "R_ind",
        id="open-individual-before-callee",
    ),
    pytest.param(
        [callee("R_callee", pin="12"), individual("R_ind", prefix="z", pin="12")],
        "ST_a",
        {},
        "12",
        "R_ind",
        id="pin-individual-before-callee",
    ),
    pytest.param(
        [individual("R_ind", prefix="a", pin="12"), direct("R_direct", room="z", pin="12")],
        "ST_a",
        {},
        "12",
        "R_direct",
        id="pin-direct-first",
    ),
    # filters on the numbers, and their specificity
    pytest.param(
        [direct("R_1", inbound_numbers=[OTHER])], "ST_a", {}, None, None, id="caller-filtered"
    ),
    pytest.param(
        [direct("R_1", inbound_numbers=["1-555-0001"])],
        "ST_a",
        {},
        None,
        "R_1",
        id="caller-normalised",
    ),
    pytest.param([direct("R_1", numbers=[OTHER])], "ST_a", {}, None, None, id="called-filtered"),
    pytest.param(
        [direct("R_1", numbers=["(1) 510 555 0100"])],
        "ST_a",
        {},
        None,
        "R_1",
        id="called-normalised",
    ),
    pytest.param(
        [direct("R_any", room="a"), direct("R_num", room="z", numbers=[CALLED])],
        "ST_a",
        {},
        None,
        "R_num",
        id="called-number-specific-first",  # reference "direct/number specific"
    ),
    pytest.param(
        [direct("R_any", room="a"), direct("R_caller", room="z", inbound_numbers=[CALLER])],
        "ST_a",
        {},
        None,
        "R_caller",
        id="caller-specific-first",
    ),
    pytest.param(
        [
            direct("R_one", room="a", numbers=[CALLED]),
            direct("R_both", room="z", numbers=[CALLED], inbound_numbers=[CALLER]),
        ],
        "ST_a",
        {},
        None,
        "R_both",
        id="both-filters-first",
    ),
    pytest.param(
        [callee("R_callee", numbers=[CALLED], inbound_numbers=[CALLER]), direct("R_direct")],
        "ST_a",
        {},
        None,
        "R_callee",
        id="filters-outweigh-kind",
    ),
    # ties: room name or prefix, then rule id
    pytest.param(
        [direct("R_1", room="b"), direct("R_2", room="a")],
        "ST_a",
        {},
        None,
        "R_2",
        id="room-name-tie-break",
    ),
    pytest.param(
        [individual("R_1", prefix="b"), individual("R_2", prefix="a")],
        "ST_a",
        {},
        None,
        "R_2",
        id="room-prefix-tie-break",
    ),
    pytest.param(
        [direct("R_2", room="a"), direct("R_1", room="a")],
        "ST_a",
        {},
        None,
        "R_1",
        id="rule-id-tie-break",
    ),
    pytest.param(
        [sip.SIPDispatchRuleInfo(sip_dispatch_rule_id="R_bad"), direct("R_1")],
        "ST_a",
        {},
        None,
        "R_1",
        id="rule-without-kind-skipped",
    ),
    # PINs
    pytest.param([direct("R_pin", pin="1234")], "ST_a", {}, None, None, id="pin-not-entered"),
    pytest.param([direct("R_pin", pin="1234")], "ST_a", {}, "1234", "R_pin", id="pin-right"),
    pytest.param([direct("R_pin", pin="1234")], "ST_a", {}, "4321", None, id="pin-wrong"),
    pytest.param([direct("R_pin", pin="1234")], "ST_a", {}, "", None, id="hash-only-no-open"),
    pytest.param([direct("R_open")], "ST_a", {}, "", "R_open", id="hash-only-open"),
    pytest.param([direct("R_open")], "ST_a", {}, "1234", None, id="pin-never-opens-open-rule"),
    pytest.param(
        [direct("R_open", room="a"), direct("R_pin", room="z", pin="1234")],
        "ST_a",
        {},
        None,
        None,
        id="pin-rule-ranks-first",
    ),
    pytest.param(
        [direct("R_open", room="a"), direct("R_pin", room="z", pin="1234")],
        "ST_a",
        {},
        "",
        "R_open",
        id="hash-only-picks-open",
    ),
    pytest.param(
        [direct("R_open", room="a"), direct("R_pin", room="z", pin="1234")],
        "ST_a",
        {},
        "1234",
        "R_pin",
        id="pin-picks-pin-rule",
    ),
    pytest.param(
        [direct("R_p1", room="a", pin="1111"), direct("R_p2", room="b", pin="2222")],
        "ST_a",
        {},
        "2222",
        "R_p2",
        id="pin-picks-its-rule",
    ),
    # reference "direct/open specific vs pin generic": the personal line is not prompted
    pytest.param(
        [
            direct("R_pin", room="sip_1", pin="123"),
            direct("R_open", room="sip_2", numbers=[CALLED]),
        ],
        "ST_a",
        {},
        None,
        "R_open",
        id="personal-room-open",
    ),
    pytest.param(
        [
            direct("R_pin", room="sip_1", pin="123"),
            direct("R_open", room="sip_2", numbers=[CALLED]),
        ],
        "ST_a",
        {},
        "123",
        "R_pin",
        id="personal-room-pin-still-works",
    ),
    pytest.param(
        [direct("R_all", pin="123"), direct("R_trunk", trunk_ids=["ST_a"])],
        "ST_a",
        {},
        None,
        "R_trunk",
        id="trunk-open-beats-catch-all-pin",
    ),
    pytest.param(
        [direct("R_all", pin="123"), direct("R_trunk", trunk_ids=["ST_a"])],
        "ST_a",
        {},
        "123",
        "R_all",
        id="pin-reaches-catch-all",
    ),
    pytest.param(
        [direct("R_all"), direct("R_trunk", pin="123", trunk_ids=["ST_a"])],
        "ST_a",
        {},
        "",
        "R_all",
        id="hash-only-falls-back-to-catch-all",
    ),
]


@pytest.mark.parametrize(("rules", "trunk_id", "overrides", "pin", "expected"), RULE_CASES)
def test_select_rule(
    rules: list[sip.SIPDispatchRuleInfo],
    trunk_id: str,
    overrides: dict[str, str],
    pin: str | None,
    expected: str | None,
) -> None:
    found = select_rule(rules, trunk_id, call(**overrides), pin=pin)
    assert (found.sip_dispatch_rule_id if found is not None else None) == expected


@pytest.mark.parametrize(
    ("rules", "needs_pin"),
    [
        pytest.param([], False, id="no-rules"),
        pytest.param([direct("R_open")], False, id="open"),
        pytest.param([direct("R_pin", pin="1")], True, id="pin"),
        pytest.param([direct("R_open", room="a"), individual("R_pin", pin="1")], True, id="mixed"),
        pytest.param([individual("R_pin", pin="1", trunk_ids=["ST_b"])], False, id="other-trunk"),
        pytest.param(
            [direct("R_pin", pin="1"), direct("R_open", numbers=[CALLED])], False, id="outranked"
        ),
    ],
)
def test_rule_needs_pin(rules: list[sip.SIPDispatchRuleInfo], needs_pin: bool) -> None:
    assert rule_needs_pin(rules, "ST_a", call()) is needs_pin
    # the server's contract: no rule without a PIN exactly when a PIN is needed (or no rule)
    if needs_pin:
        assert select_rule(rules, "ST_a", call()) is None


def test_pin_flow() -> None:
    rules = [direct("R_open", room="lobby"), direct("R_pin", room="board", pin="2468")]
    c = call()
    assert select_rule(rules, "ST_a", c) is None
    assert rule_needs_pin(rules, "ST_a", c)
    chosen = select_rule(rules, "ST_a", c, pin="2468")
    assert chosen is not None and room_for(chosen, c, "x") == "board"
    chosen = select_rule(rules, "ST_a", c, pin="")
    assert chosen is not None and room_for(chosen, c, "x") == "lobby"


@given(st.permutations(range(6)))
@quick
def test_select_rule_ignores_store_order(order: list[int]) -> None:
    rules = [
        direct("R_0", room="b"),
        direct("R_1", room="a"),
        direct("R_2", room="a"),
        callee("R_3", trunk_ids=["ST_b"]),
        individual("R_4", trunk_ids=["ST_a"], prefix="z"),
        individual("R_5", trunk_ids=["ST_a"], prefix="y"),
    ]
    found = select_rule([rules[i] for i in order], "ST_a", call())
    assert found is not None and found.sip_dispatch_rule_id == "R_5"
    found = select_rule([rules[i] for i in order], "", call())
    assert found is not None and found.sip_dispatch_rule_id == "R_1"


# --- rooms ----------------------------------------------------------------------------------------

HIDDEN = short_hash(CALLER.encode())

ROOM_CASES: list[Any] = [
    pytest.param(direct("R", room="lobby"), {}, "lobby", id="direct"),
    pytest.param(direct("R", room="lobby", hide_phone_number=True), {}, "lobby", id="direct-hide"),
    pytest.param(individual("R", prefix="call"), {}, f"call_{CALLER}_rnd", id="individual"),
    pytest.param(individual("R", prefix=""), {}, f"{CALLER}_rnd", id="individual-no-prefix"),
    pytest.param(
        individual("R", prefix="call", no_randomness=True),
        {},
        f"call_{CALLER}",
        id="individual-no-randomness",
    ),
    pytest.param(
        individual("R", prefix="", no_randomness=True), {}, CALLER, id="individual-bare"
    ),  # reference "minimal"
    pytest.param(
        individual("R", prefix="pref_", no_randomness=True),
        {},
        f"pref__{CALLER}",
        id="individual-prefix-kept-as-is",
    ),
    pytest.param(
        individual("R", prefix="call", hide_phone_number=True),
        {},
        f"call_{HIDDEN}_rnd",
        id="individual-hidden",
    ),
    pytest.param(
        individual("R", prefix="call", no_randomness=True, hide_phone_number=True),
        {},
        f"call_{HIDDEN}",
        id="individual-hidden-no-randomness",
    ),
    pytest.param(
        individual("R", prefix="call", no_randomness=True),
        {"caller": "al\x00ice\r\n"},
        "call_alice  ",
        id="individual-controls-cleaned",
    ),
    pytest.param(callee("R", prefix="line"), {}, f"line_{CALLED}", id="callee"),
    pytest.param(callee("R", prefix=""), {}, CALLED, id="callee-no-prefix"),
    pytest.param(
        callee("R", prefix="line", randomize=True), {}, f"line_{CALLED}_rnd", id="callee-randomize"
    ),
    pytest.param(
        callee("R", prefix="", randomize=True), {}, f"{CALLED}_rnd", id="callee-bare-randomize"
    ),
    pytest.param(
        callee("R", prefix="line", hide_phone_number=True),
        {},
        f"line_{CALLED}",
        id="callee-hide-keeps-called",
    ),
]


@pytest.mark.parametrize(("rule", "overrides", "room"), ROOM_CASES)
def test_room_for(rule: sip.SIPDispatchRuleInfo, overrides: dict[str, str], room: str) -> None:
    assert room_for(rule, call(**overrides), "rnd") == room


@pytest.mark.parametrize(
    "rule",
    [
        pytest.param(individual("R"), id="individual"),
        pytest.param(callee("R", randomize=True), id="callee"),
    ],
)
def test_room_for_needs_a_suffix_when_random(rule: sip.SIPDispatchRuleInfo) -> None:
    with pytest.raises(ValueError, match="random_suffix"):
        room_for(rule, call(), "")


@pytest.mark.parametrize(
    "rule",
    [
        pytest.param(direct("R"), id="direct"),
        pytest.param(individual("R", no_randomness=True), id="individual"),
        pytest.param(callee("R"), id="callee"),
    ],
)
def test_room_for_without_randomness_ignores_suffix(rule: sip.SIPDispatchRuleInfo) -> None:
    assert room_for(rule, call(), "") == room_for(rule, call(), "abc")


# --- identity and name ----------------------------------------------------------------------------

HIDE = direct("R", hide_phone_number=True)
SHOW = direct("R")
NON_UTF8 = b"\xff12345".decode("utf-8", "surrogateescape")

PARTICIPANT_CASES: list[Any] = [
    # (rule, caller, identity, name)
    pytest.param(SHOW, "+11112222", "sip_+11112222", "Phone +11112222", id="reference-shown"),
    pytest.param(None, "+11112222", "sip_+11112222", "Phone +11112222", id="no-rule"),
    pytest.param(HIDE, "+11112222", "sip_c15a31c71649a522", "Phone 2222", id="reference-hidden"),
    pytest.param(SHOW, "alice", "sip_alice", "Phone alice", id="user-name"),
    pytest.param(HIDE, "12345", f"sip_{short_hash(b'12345')}", "Phone 2345", id="hidden-5-chars"),
    pytest.param(HIDE, "1234", f"sip_{short_hash(b'1234')}", "Phone 4", id="hidden-4-chars"),
    pytest.param(HIDE, "7", f"sip_{short_hash(b'7')}", "Phone 7", id="hidden-1-char"),
    pytest.param(HIDE, "", f"sip_{short_hash(b'')}", "Phone ", id="hidden-empty"),
    pytest.param(
        HIDE, NON_UTF8, "sip_" + short_hash(b"\xff12345"), "Phone 2345", id="hidden-raw-bytes"
    ),
    pytest.param(
        HIDE, "9\ud800123", "sip_" + short_hash(b"9\xed\xa0\x80123"), "Phone \ufffd123", id="surr"
    ),
    pytest.param(SHOW, NON_UTF8, "sip_\ufffd12345", "Phone \ufffd12345", id="shown-raw-bytes"),
    pytest.param(SHOW, "a\x07b\tc", "sip_ab c", "Phone ab c", id="shown-controls"),
]


@pytest.mark.parametrize(("rule", "caller", "identity", "name"), PARTICIPANT_CASES)
def test_participant_identity_and_name(
    rule: sip.SIPDispatchRuleInfo | None, caller: str, identity: str, name: str
) -> None:
    c = call(caller=caller)
    assert participant_identity(rule, c) == identity
    assert participant_name(rule, c) == name


# --- attributes -----------------------------------------------------------------------------------

CALL_ID = "SCL_abcdefgh"


def attrs(
    *,
    headers: tuple[tuple[str, str], ...] = (),
    trunk_info: sip.SIPInboundTrunkInfo | None = None,
    rule: sip.SIPDispatchRuleInfo | None = None,
    status: str = "ringing",
    **overrides: Any,
) -> dict[str, str]:
    return inbound_attributes(
        call=call(headers=headers, **overrides),
        call_id=CALL_ID,
        trunk=trunk_info if trunk_info is not None else trunk("ST_a"),
        rule=rule if rule is not None else direct("SDR_1"),
        status=status,
    )


BASE = {
    "sip.callID": CALL_ID,
    "sip.callIDFull": "a84b4c76e66710@pc33.example.com",
    "sip.callTag": "1928301774",
    "sip.callStatus": "ringing",
    "sip.phoneNumber": CALLER,
    "sip.trunkPhoneNumber": CALLED,
    "sip.hostname": HOST,
    "sip.ruleID": "SDR_1",
    "sip.trunkID": "ST_a",
}


def test_attributes_inbound_column() -> None:
    assert attrs() == BASE
    assert attrs(status="active")["sip.callStatus"] == "active"


def test_attributes_hidden_number() -> None:
    hidden = attrs(rule=direct("SDR_1", hide_phone_number=True))
    expected = {
        k: v
        for k, v in BASE.items()
        if k not in {"sip.phoneNumber", "sip.trunkPhoneNumber", "sip.hostname"}
    }
    assert hidden == expected


def test_attributes_without_trunk_or_rule() -> None:
    # open server: as the reference, sip.trunkID is present and empty; headers are not mapped
    # without a trunk, carrier headers still are; no rule yet: no sip.ruleID, numbers shown
    got = inbound_attributes(
        call=call(headers=(("X-Twilio-CallSid", "CA1"), ("X-Custom", "v"))),
        call_id=CALL_ID,
        trunk=None,
        rule=None,
        status="ringing",
    )
    expected = {k: v for k, v in BASE.items() if k != "sip.ruleID"}
    assert got == expected | {"sip.trunkID": "", "sip.twilio.callSid": "CA1"}


def test_attributes_without_call_id_or_tag() -> None:
    got = attrs(call_id="", from_tag="")
    assert "sip.callIDFull" not in got and "sip.callTag" not in got
    assert got["sip.callID"] == CALL_ID


PROVIDER_CASES: list[Any] = [
    pytest.param("X-Twilio-AccountSid", "sip.twilio.accountSid", id="twilio-account"),
    pytest.param("X-Twilio-CallSid", "sip.twilio.callSid", id="twilio-call"),
    pytest.param("X-call_leg_id", "sip.telnyx.callLegID", id="telnyx-leg"),
    pytest.param("X-call_session_id", "sip.telnyx.callSessionID", id="telnyx-session"),
    pytest.param("X-Amzn-ConnectContactId", "sip.amazon.contactId", id="amazon-contact"),
    pytest.param(
        "X-Amzn-ConnectInitialContactId", "sip.amazon.initialContactId", id="amazon-initial"
    ),
    pytest.param("X-Amzn-SourceAccount", "sip.amazon.sourceAccount", id="amazon-account"),
    pytest.param("X-Amzn-SourceArn", "sip.amazon.sourceArn", id="amazon-source-arn"),
    pytest.param("X-Amzn-TargetArn", "sip.amazon.targetArn", id="amazon-target-arn"),
]


@pytest.mark.parametrize(("header", "attribute"), PROVIDER_CASES)
@pytest.mark.parametrize("spelling", [str, str.lower, str.upper], ids=["as-is", "lower", "upper"])
def test_attributes_provider_headers(header: str, attribute: str, spelling: Any) -> None:
    got = attrs(headers=((spelling(header), "value-1"), (header, "value-2")))
    assert got == BASE | {attribute: "value-1"}  # the first of repeated headers


def test_provider_table_covers_the_spec() -> None:
    assert len(PROVIDER_HEADER_ATTRIBUTES) == len(PROVIDER_CASES)
    assert all(k == k.lower() for k in PROVIDER_HEADER_ATTRIBUTES)


INVITE_HEADERS = (
    ("Via", "SIP/2.0/UDP 192.0.2.10;branch=z9hG4bK776asdhds"),
    ("From", "<sip:+15550001@carrier.example.com>;tag=1928301774"),
    ("X-Customer", "42"),
    ("x-lower", "a"),
    ("X-Customer", "43"),
    ("User-Agent", "carrier"),
)

INCLUDE_CASES: list[Any] = [
    pytest.param(NO_HEADERS, {}, id="none"),
    pytest.param(99, {}, id="unknown-mode-is-none"),
    pytest.param(X_HEADERS, {"sip.h.x-customer": "42", "sip.h.x-lower": "a"}, id="x-headers"),
    pytest.param(
        ALL_HEADERS,
        {
            "sip.h.via": "SIP/2.0/UDP 192.0.2.10;branch=z9hG4bK776asdhds",
            "sip.h.from": "<sip:+15550001@carrier.example.com>;tag=1928301774",
            "sip.h.x-customer": "42",
            "sip.h.x-lower": "a",
            "sip.h.user-agent": "carrier",
        },
        id="all-headers",
    ),
]


@pytest.mark.parametrize(("mode", "expected"), INCLUDE_CASES)
def test_attributes_include_headers(mode: int, expected: dict[str, str]) -> None:
    got = attrs(headers=INVITE_HEADERS, trunk_info=trunk("ST_a", include_headers=mode))
    assert got == BASE | expected


def test_include_headers_hidden_number_still_copies_headers() -> None:
    got = attrs(
        headers=INVITE_HEADERS,
        trunk_info=trunk("ST_a", include_headers=ALL_HEADERS),
        rule=direct("SDR_1", hide_phone_number=True),
    )
    assert "sip.phoneNumber" not in got
    assert got["sip.h.from"].startswith("<sip:+15550001@")


def test_include_headers_budget() -> None:
    big = "v" * MAX_ATTRIBUTE_VALUE
    headers = (*((f"X-H{i}", big) for i in range(40)), ("X-Small", "s"))
    got = attrs(headers=headers, trunk_info=trunk("ST_a", include_headers=X_HEADERS))
    copied = {k: v for k, v in got.items() if k.startswith("sip.h.")}
    size = sum(len(k.encode()) + len(v.encode()) for k, v in copied.items())
    assert size <= MAX_HEADER_ATTRIBUTES_BYTES
    assert 20 < len(copied) < 41
    assert copied["sip.h.x-small"] == "s"  # a later small header still fits


def test_include_headers_names_are_cleaned() -> None:
    headers = (("X-Bad\x00Name", "1"), ("", "empty name"), ("X-Long", "x" * 5000))
    got = attrs(headers=headers, trunk_info=trunk("ST_a", include_headers=ALL_HEADERS))
    assert got == BASE | {"sip.h.x-badname": "1", "sip.h.x-long": "x" * MAX_ATTRIBUTE_VALUE}


MAPPING_CASES: list[Any] = [
    # (headers_to_attributes, headers, rule attributes, expected extra attributes)
    pytest.param({"X-Customer": "customer"}, INVITE_HEADERS, {}, {"customer": "42"}, id="mapped"),
    pytest.param({"x-CUSTOMER": "customer"}, INVITE_HEADERS, {}, {"customer": "42"}, id="any-case"),
    pytest.param({"X-Lower": "low"}, INVITE_HEADERS, {}, {"low": "a"}, id="header-any-case"),
    pytest.param({"User-Agent": "ua"}, INVITE_HEADERS, {}, {"ua": "carrier"}, id="non-x-header"),
    pytest.param({"X-Missing": "m"}, INVITE_HEADERS, {}, {}, id="missing-header"),
    pytest.param(
        {"X-Empty": "e"}, (("X-Empty", ""),), {}, {"e": ""}, id="empty-value-kept"
    ),  # as the reference
    pytest.param({"X-Customer": "sip.callStatus"}, INVITE_HEADERS, {}, {}, id="refuse-callStatus"),
    pytest.param({"X-Customer": "sip.trunkID"}, INVITE_HEADERS, {}, {}, id="refuse-trunkID"),
    pytest.param({"X-Customer": "SIP.trunkID"}, INVITE_HEADERS, {}, {}, id="refuse-any-case"),
    pytest.param({"X-Customer": "sip.h.x-other"}, INVITE_HEADERS, {}, {}, id="refuse-sip-h"),
    pytest.param(
        {"X-Customer": "sip.twilio.callSid"},
        (("X-Customer", "spoof"), ("X-Twilio-CallSid", "CA1")),
        {},
        {"sip.twilio.callSid": "CA1"},
        id="refuse-provider-key",
    ),
    pytest.param({}, (), {"team": "sales"}, {"team": "sales"}, id="rule-attributes"),
    pytest.param(
        {},
        (),
        {"sip.callStatus": "active", "sip.phoneNumber": "x", "sip.custom": "y", "ok": "1"},
        {"ok": "1"},
        id="rule-cannot-set-sip-keys",
    ),
    pytest.param(
        {"X-Customer": "customer"},
        INVITE_HEADERS,
        {"customer": "default", "team": "sales"},
        {"customer": "42", "team": "sales"},
        id="header-overrides-rule-attribute",
    ),
    pytest.param(
        {"X-Missing": "customer"},
        INVITE_HEADERS,
        {"customer": "default"},
        {"customer": "default"},
        id="rule-attribute-when-header-missing",
    ),
    pytest.param(
        {"X-A": "key", "X-B": "key"},
        (("X-B", "b"), ("X-A", "a")),
        {},
        {"key": "b"},
        id="two-headers-one-key-deterministic",
    ),
    pytest.param({"X-A": "k\x00"}, (("X-A", "a\x01b"),), {}, {"k": "ab"}, id="key-and-value-clean"),
    pytest.param({"X-A": "\x00"}, (("X-A", "a"),), {}, {}, id="key-empty-after-clean"),
]


@pytest.mark.parametrize(("mapping", "headers", "rule_attrs", "extra"), MAPPING_CASES)
def test_attributes_mapping(
    mapping: dict[str, str],
    headers: tuple[tuple[str, str], ...],
    rule_attrs: dict[str, str],
    extra: dict[str, str],
) -> None:
    got = attrs(
        headers=headers,
        trunk_info=trunk("ST_a", headers_to_attributes=mapping),
        rule=direct("SDR_1", attributes=rule_attrs),
    )
    assert got == BASE | extra


def test_attributes_server_values_are_sanitised() -> None:
    got = inbound_attributes(
        call=call(caller="+1555\x00", from_host="h\r\nX-Evil: 1", call_id="c\ud800"),
        call_id=CALL_ID,
        trunk=None,
        rule=None,
        status="ring\ning",
    )
    assert got["sip.phoneNumber"] == "+1555"
    assert got["sip.hostname"] == "h  X-Evil: 1"
    assert got["sip.callIDFull"] == "c\ufffd"
    assert got["sip.callStatus"] == "ring ing"
    for key, value in got.items():
        key.encode()
        value.encode()  # valid UTF-8 for the protobuf


SANITIZE_CASES: list[Any] = [
    pytest.param("plain value", "plain value", id="plain"),
    pytest.param("", "", id="empty"),
    pytest.param("a\tb", "a b", id="tab"),
    pytest.param("a\r\nb", "a  b", id="crlf"),
    pytest.param("a\u2028b\u2029c", "a b c", id="unicode-line-breaks"),
    pytest.param("a\x00\x01\x1fb\x7f", "ab", id="c0-and-del"),
    pytest.param("a\x80\x9fb", "ab", id="c1"),
    pytest.param("caf\u00e9 \u20ac \U0001f600", "caf\u00e9 \u20ac \U0001f600", id="unicode-kept"),
    pytest.param(b"a\xffb".decode("utf-8", "surrogateescape"), "a\ufffdb", id="non-utf8-byte"),
    pytest.param("a\ud800b\udfff", "a\ufffdb\ufffd", id="lone-surrogates"),
    pytest.param("x" * (MAX_ATTRIBUTE_VALUE + 5), "x" * MAX_ATTRIBUTE_VALUE, id="capped"),
    pytest.param("\x00" * 5 + "y" * MAX_ATTRIBUTE_VALUE, "y" * MAX_ATTRIBUTE_VALUE, id="cap-after"),
]


@pytest.mark.parametrize(("value", "expected"), SANITIZE_CASES)
def test_sanitize_attribute(value: str, expected: str) -> None:
    assert sanitize_attribute(value) == expected


@given(st.text())
@quick
def test_sanitize_attribute_always_publishable(value: str) -> None:
    clean = sanitize_attribute(value)
    clean.encode("utf-8")
    assert len(clean) <= MAX_ATTRIBUTE_VALUE
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in clean)
    assert sanitize_attribute(clean) == clean


def test_sanitizing_skips_clean_text_and_changes_exactly_what_translate_does() -> None:
    """`_clean` searches for a character to change before translating (issue 18): the same result
    as the translation for every character that has a mapping and those around them."""
    for code in [*range(0x3000), *range(0xD7F0, 0xE010), 0xFEFF, 0xFFFD, 0x1F600, 0x10FFFF]:
        text = f"sip_{chr(code)}+1555"
        assert _clean(text) == text.translate(_SANITIZE), hex(code)
    clean = "Phone +15550001234"
    assert _clean(clean) is clean


def test_the_call_info_of_an_inbound_call_joining_its_room() -> None:
    trunk = sip.SIPInboundTrunkInfo(sip_trunk_id="ST_in")
    rule = sip.SIPDispatchRuleInfo(sip_dispatch_rule_id="SDR_r")
    info = inbound_call_info(
        call=call(),
        call_id="SCL_1",
        trunk=trunk,
        rule=rule,
        room="call-+15550001",
        identity="sip_+15550001",
        to_host="sip.example.net",
        created=1700000000.5,
    )
    assert (info.call_id, info.sip_call_id) == ("SCL_1", "a84b4c76e66710@pc33.example.com")
    assert (info.trunk_id, info.dispatch_rule_id) == ("ST_in", "SDR_r")
    assert (info.room_name, info.participant_identity) == ("call-+15550001", "sip_+15550001")
    assert info.call_direction == sip.SIPCallDirection.SCD_INBOUND
    assert info.call_status == sip.SIPCallStatus.SCS_CALL_INCOMING
    assert (info.from_uri.user, info.from_uri.host) == (CALLER, HOST)
    assert (info.to_uri.user, info.to_uri.host) == (CALLED, "sip.example.net")
    assert (info.created_at, info.created_at_ns) == (1700000000, 1700000000500000000)
    # no trunk (a call the rules let in without one): no trunk id
    assert (
        inbound_call_info(
            call=call(),
            call_id="SCL_2",
            trunk=None,
            rule=rule,
            room="r",
            identity="i",
            to_host="h",
            created=0.0,
        ).trunk_id
        == ""
    )
