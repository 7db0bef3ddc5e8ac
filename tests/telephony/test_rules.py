"""Dispatch rules: creation (incl. legacy fields), validation, conflict keys, priority, updates.

Behaviour from SIP-BEHAVIOUR.md s3 and s7.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from google.protobuf.duration_pb2 import Duration
from hypothesis import given, settings
from hypothesis import strategies as st
from livekit.protocol import room as room_proto
from livekit.protocol import sip
from livekit.protocol.agent_dispatch import RoomAgentDispatch
from livekit.protocol.models import ListUpdate

from sipbridge.errors import ApiError
from sipbridge.rooms.model import MAX_ROOM_NAME
from sipbridge.telephony.rules import (
    MAX_ATTRIBUTES,
    MAX_PIN_DIGITS,
    RuleKey,
    apply_rule_update,
    find_rule_conflict,
    rule_from_create,
    rule_keys,
    rule_priority,
    rule_room_and_pin,
    validate_rule,
)
from sipbridge.telephony.trunks import MAX_LIST_ITEMS, MAX_METADATA, MAX_NAME

quick = settings(database=None, max_examples=200)

REQUIRE = sip.SIPMediaEncryption.SIP_MEDIA_ENCRYPT_REQUIRE
ALLOW = sip.SIPMediaEncryption.SIP_MEDIA_ENCRYPT_ALLOW


def direct(room: str = "room", pin: str = "") -> sip.SIPDispatchRule:
    return sip.SIPDispatchRule(
        dispatch_rule_direct=sip.SIPDispatchRuleDirect(room_name=room, pin=pin)
    )


def individual(
    prefix: str = "call", pin: str = "", no_randomness: bool = False
) -> sip.SIPDispatchRule:
    return sip.SIPDispatchRule(
        dispatch_rule_individual=sip.SIPDispatchRuleIndividual(
            room_prefix=prefix, pin=pin, no_randomness=no_randomness
        )
    )


def callee(prefix: str = "callee", pin: str = "", randomize: bool = False) -> sip.SIPDispatchRule:
    return sip.SIPDispatchRule(
        dispatch_rule_callee=sip.SIPDispatchRuleCallee(
            room_prefix=prefix, pin=pin, randomize=randomize
        )
    )


KINDS: dict[str, Callable[[str, str], sip.SIPDispatchRule]] = {
    "direct": direct,
    "individual": individual,
    "callee": callee,
}


def info(rule: sip.SIPDispatchRule | None = None, **kw: Any) -> sip.SIPDispatchRuleInfo:
    return sip.SIPDispatchRuleInfo(rule=rule if rule is not None else direct(), **kw)


def invalid(fn: Any, *args: Any) -> str:
    with pytest.raises(ApiError) as err:
        fn(*args)
    assert err.value.code == "invalid_argument", err.value
    return err.value.message


# -- rule_room_and_pin ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (direct("sales", "1234"), ("sales", "1234")),
        (individual("call", "9"), ("call", "9")),
        (callee("desk", ""), ("desk", "")),
        (individual(""), ("", "")),
    ],
)
def test_rule_room_and_pin(rule: sip.SIPDispatchRule, expected: tuple[str, str]) -> None:
    assert rule_room_and_pin(rule) == expected


def test_rule_room_and_pin_needs_a_kind() -> None:
    assert invalid(rule_room_and_pin, sip.SIPDispatchRule()).startswith("rule: one of ")


# -- rule_from_create -----------------------------------------------------------------------------


def test_rule_from_create_copies_dispatch_rule() -> None:
    given_rule = info(
        individual("call", "12"),
        trunk_ids=["ST_a"],
        inbound_numbers=["+1"],
        numbers=["+2"],
        name="n",
        metadata="m",
        attributes={"a": "b"},
        hide_phone_number=True,
        krisp_enabled=True,
        media_encryption=REQUIRE,
        room_config=room_proto.RoomConfiguration(agents=[RoomAgentDispatch(agent_name="bot")]),
    )
    req = sip.CreateSIPDispatchRuleRequest(dispatch_rule=given_rule)
    result = rule_from_create(req)
    assert result == given_rule
    # a copy: changing the result leaves the request alone
    result.name = "changed"
    assert req.dispatch_rule.name == "n"


def test_rule_from_create_ignores_legacy_fields_when_dispatch_rule_is_set() -> None:
    req = sip.CreateSIPDispatchRuleRequest(
        dispatch_rule=info(direct("new"), name="new"),
        rule=direct("old"),
        name="old",
        trunk_ids=["ST_old"],
    )
    result = rule_from_create(req)
    assert result.name == "new"
    assert rule_room_and_pin(result.rule) == ("new", "")
    assert list(result.trunk_ids) == []


def test_rule_from_create_refuses_a_client_supplied_id() -> None:
    req = sip.CreateSIPDispatchRuleRequest(dispatch_rule=info(sip_dispatch_rule_id="SDR_mine"))
    assert invalid(rule_from_create, req).startswith("dispatch_rule.sip_dispatch_rule_id: ")


def test_rule_from_create_legacy_fields() -> None:
    req = sip.CreateSIPDispatchRuleRequest(
        rule=callee("desk", "42", randomize=True),
        trunk_ids=["ST_a", "ST_b"],
        hide_phone_number=True,
        inbound_numbers=["+15105550100"],
        name="legacy",
        metadata="meta",
        attributes={"k": "v"},
        room_preset="preset",
        room_config=room_proto.RoomConfiguration(name="ignored", max_participants=3),
    )
    result = rule_from_create(req)
    assert result.sip_dispatch_rule_id == ""
    assert result.rule == req.rule
    assert list(result.trunk_ids) == ["ST_a", "ST_b"]
    assert result.hide_phone_number
    assert list(result.inbound_numbers) == ["+15105550100"]
    assert list(result.numbers) == []
    assert result.name == "legacy"
    assert result.metadata == "meta"
    assert dict(result.attributes) == {"k": "v"}
    assert result.room_preset == "preset"
    assert result.room_config.max_participants == 3


def test_rule_from_create_legacy_without_rule_or_room_config() -> None:
    result = rule_from_create(sip.CreateSIPDispatchRuleRequest(name="bare"))
    assert result.name == "bare"
    assert not result.HasField("rule")
    assert not result.HasField("room_config")
    # and such a rule does not validate
    assert invalid(validate_rule, result).startswith("rule: ")


# -- validate_rule --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rule",
    [
        info(direct("sales")),
        info(direct("sales", "1234")),
        info(direct("s" * MAX_NAME, "1" * MAX_PIN_DIGITS)),
        info(direct("Ünïcode room, with spaces & stuff!")),
        info(individual("")),
        info(individual("call", "0", no_randomness=True)),
        info(callee("")),
        info(callee("desk", "99", randomize=True)),
        info(
            direct("sales"),
            name="n" * MAX_NAME,
            metadata="m" * MAX_METADATA,
            trunk_ids=["ST_a"],
            inbound_numbers=["+1 510 555 0100", "alice"],
            numbers=["+15105550100"],
            attributes={f"k{i}": "v" for i in range(MAX_ATTRIBUTES)},
            media=sip.SIPMediaConfig(codecs=[sip.SIPCodec(name="PCMU")]),
        ),
    ],
)
def test_valid_rules(rule: sip.SIPDispatchRuleInfo) -> None:
    validate_rule(rule)


@pytest.mark.parametrize(
    ("rule", "fragment"),
    [
        (sip.SIPDispatchRuleInfo(), "rule: one of dispatch_rule_direct"),
        (info(direct("")), "rule.dispatch_rule_direct.room_name: must be set"),
        (
            info(direct("r" * (MAX_ROOM_NAME + 1))),
            "rule.dispatch_rule_direct.room_name: room name too long (max 256 characters)",
        ),
        (
            info(individual("p" * (MAX_ROOM_NAME + 1))),
            "rule.dispatch_rule_individual.room_prefix: room name too long",
        ),
        (
            info(callee("p" * (MAX_ROOM_NAME + 1))),
            "rule.dispatch_rule_callee.room_prefix: room name too long",
        ),
        (
            info(direct("a\x00b")),
            "rule.dispatch_rule_direct.room_name: room name 'a\\x00b' contains control characters",
        ),
        (info(direct("a\nb")), "rule.dispatch_rule_direct.room_name: room name"),
        (info(direct("a\x7fb")), "contains control characters"),
        (info(direct("a\x1fb")), "contains control characters"),
        (
            info(individual("x\r")),
            "rule.dispatch_rule_individual.room_prefix: room name 'x\\r' contains control",
        ),
        (
            info(callee("x\t")),
            "rule.dispatch_rule_callee.room_prefix: room name 'x\\t' contains control",
        ),
        (info(direct("r", "12a")), "rule.dispatch_rule_direct.pin: must be 1-16 digits"),
        (info(direct("r", "1" * (MAX_PIN_DIGITS + 1))), "rule.dispatch_rule_direct.pin"),
        (info(direct("r", "١٢٣")), "rule.dispatch_rule_direct.pin"),  # Arabic-Indic digits
        (info(direct("r", "²")), "rule.dispatch_rule_direct.pin"),
        (info(individual("c", "#1")), "rule.dispatch_rule_individual.pin"),
        (info(callee("c", " 1")), "rule.dispatch_rule_callee.pin"),
        (info(name="n" * (MAX_NAME + 1)), "name: too long"),
        (info(metadata="m" * (MAX_METADATA + 1)), "metadata: too long"),
        (info(trunk_ids=["ST_a", ""]), "trunk_ids[1]: must not be empty"),
        (info(trunk_ids=["ST_a"] * (MAX_LIST_ITEMS + 1)), "trunk_ids: too many items"),
        (info(inbound_numbers=["sip:a@b"]), "inbound_numbers[0]: "),
        (info(inbound_numbers=[""]), "inbound_numbers[0]: must not be empty"),
        (info(numbers=["+1", "a b"]), "numbers[1]: "),
        (
            info(attributes={f"k{i}": "v" for i in range(MAX_ATTRIBUTES + 1)}),
            "attributes: too many",
        ),
        (info(attributes={"": "v"}), "attributes: empty attribute name"),
        (
            info(media=sip.SIPMediaConfig(codecs=[sip.SIPCodec(name="")])),
            "media.codecs[0].name",
        ),
        (
            info(media=sip.SIPMediaConfig(media_timeout=Duration(seconds=-1))),
            "media.media_timeout",
        ),
        (
            info(media=sip.SIPMediaConfig(media_timeout=Duration(seconds=601))),
            "media.media_timeout: must not exceed 600 s",
        ),
    ],
)
def test_invalid_rules(rule: sip.SIPDispatchRuleInfo, fragment: str) -> None:
    assert fragment in invalid(validate_rule, rule)


def test_room_name_with_trailing_newline_is_refused() -> None:
    assert "contains control characters" in invalid(validate_rule, info(direct("room\n")))


@pytest.mark.parametrize("make", [direct, individual, callee])
@pytest.mark.parametrize("room", ["a/b", "a\\b", "a?b", "a#b", "a%b", "sales/eu?x=1#y%20"])
def test_room_names_with_url_separators_are_accepted(
    make: Callable[[str], sip.SIPDispatchRule], room: str
) -> None:
    # LiveKit allows these; only the length and control characters are checked.
    rule = info(make(room))
    validate_rule(rule)
    assert rule_room_and_pin(rule.rule) == (room, "")


def test_room_name_at_the_length_limit_is_accepted() -> None:
    for make in (direct, individual, callee):
        validate_rule(info(make("r" * MAX_ROOM_NAME)))


# -- conflict keys --------------------------------------------------------------------------------


def test_rule_keys_of_a_catch_all_rule() -> None:
    assert list(rule_keys(info(direct("r")))) == [RuleKey("", "", "", "")]


def test_rule_keys_are_the_cross_product_normalised() -> None:
    rule = info(
        direct("r", "12"),
        trunk_ids=["ST_a", "ST_b"],
        inbound_numbers=["1 510 555 0100"],
        numbers=["+2", "3", "alice"],
    )
    keys = list(rule_keys(rule))
    assert len(keys) == 2 * 1 * 3
    assert set(keys) == {
        RuleKey("12", trunk, "+15105550100", number)
        for trunk in ("ST_a", "ST_b")
        for number in ("+2", "+3", "alice")
    }


def test_rule_keys_need_a_rule_kind() -> None:
    invalid(lambda r: list(rule_keys(r)), sip.SIPDispatchRuleInfo())


def stored(
    rule_id: str, rule: sip.SIPDispatchRule | None = None, **kw: Any
) -> sip.SIPDispatchRuleInfo:
    return info(rule, sip_dispatch_rule_id=rule_id, **kw)


@pytest.mark.parametrize(
    ("new", "existing", "conflict"),
    [
        # two catch-all rules without a PIN
        ({}, {}, True),
        # the kind of rule and the room do not matter, only the key
        ({"rule": direct("a")}, {"rule": callee("b")}, True),
        ({"rule": individual("x", "1")}, {"rule": direct("y", "1")}, True),
        # different PINs separate rules; PIN vs no PIN too
        ({"rule": direct("a", "1")}, {"rule": direct("a", "2")}, False),
        ({"rule": direct("a", "1")}, {"rule": direct("a")}, False),
        # trunks
        ({"trunk_ids": ["ST_a"]}, {"trunk_ids": ["ST_a"]}, True),
        ({"trunk_ids": ["ST_a", "ST_b"]}, {"trunk_ids": ["ST_c", "ST_b"]}, True),
        ({"trunk_ids": ["ST_a"]}, {"trunk_ids": ["ST_b"]}, False),
        # a rule naming trunks beats a catch-all one: no conflict
        ({"trunk_ids": ["ST_a"]}, {}, False),
        ({}, {"trunk_ids": ["ST_a"]}, False),
        # callers and called numbers, compared normalised
        ({"inbound_numbers": ["+1"]}, {"inbound_numbers": ["1"]}, True),
        ({"inbound_numbers": ["+1"]}, {"inbound_numbers": ["+2"]}, False),
        ({"inbound_numbers": ["+1"]}, {}, False),
        ({"numbers": ["+1 (510) 555-0100"]}, {"numbers": ["15105550100"]}, True),
        ({"numbers": ["+1"]}, {"numbers": ["+2"]}, False),
        ({"numbers": ["+1"]}, {}, False),
        (
            {"trunk_ids": ["ST_a"], "inbound_numbers": ["+1"], "numbers": ["+2"]},
            {"trunk_ids": ["ST_a"], "inbound_numbers": ["+1"], "numbers": ["+2"]},
            True,
        ),
        (
            {"trunk_ids": ["ST_a"], "inbound_numbers": ["+1"], "numbers": ["+2"]},
            {"trunk_ids": ["ST_a"], "inbound_numbers": ["+1"], "numbers": ["+3"]},
            False,
        ),
    ],
)
def test_find_rule_conflict(new: dict[str, Any], existing: dict[str, Any], conflict: bool) -> None:
    message = find_rule_conflict(info(**new), [stored("SDR_old", name="Old", **existing)])
    assert (message is not None) is conflict, message
    if message is not None:
        assert message == (
            "a dispatch rule for the same trunk, inbound number, number and PIN combination "
            "already exists: SDR_old 'Old'"
        )
    reverse = find_rule_conflict(info(**existing), [stored("SDR_new", **new)])
    assert (reverse is not None) is conflict


def test_a_rule_does_not_conflict_with_itself() -> None:
    old = stored("SDR_a", direct("r"))
    assert find_rule_conflict(old, [old]) is None
    updated = stored("SDR_a", direct("other"), numbers=["+1"])
    assert find_rule_conflict(updated, [old, stored("SDR_b", numbers=["+2"])]) is None
    assert find_rule_conflict(updated, [old, stored("SDR_b", numbers=["+1"])]) is not None


def test_first_conflicting_rule_is_reported() -> None:
    others = [stored("SDR_1", numbers=["+9"]), stored("SDR_2"), stored("SDR_3")]
    message = find_rule_conflict(info(), iter(others))
    assert message is not None
    assert "SDR_2" in message
    assert "SDR_3" not in message


@quick
@given(
    st.lists(st.sampled_from(["ST_a", "ST_b"]), max_size=2, unique=True),
    st.lists(st.sampled_from(["+1", "1", "+2"]), max_size=2, unique=True),
    st.lists(st.sampled_from(["+3", "3", "+4"]), max_size=2, unique=True),
    st.sampled_from(["", "1"]),
)
def test_a_rule_conflicts_with_its_copy_under_another_id(
    trunks: list[str], inbound: list[str], numbers: list[str], pin: str
) -> None:
    rule = info(direct("r", pin), trunk_ids=trunks, inbound_numbers=inbound, numbers=numbers)
    copy = stored("SDR_other", direct("elsewhere", pin), trunk_ids=trunks,
                  inbound_numbers=inbound, numbers=numbers)  # fmt: skip
    assert find_rule_conflict(rule, [copy]) is not None


# -- priority (SIP-BEHAVIOUR.md s3) ---------------------------------------------------------------

BOTH = {"inbound_numbers": ["+1"], "numbers": ["+2"]}


@pytest.mark.parametrize(
    ("kind", "pin", "filters", "priority"),
    [
        ("direct", "1", BOTH, 0),
        ("individual", "1", BOTH, 1),
        ("callee", "1", BOTH, 2),
        ("direct", "", BOTH, 100),
        ("individual", "", BOTH, 101),
        ("callee", "", BOTH, 102),
        ("direct", "1", {"numbers": ["+2"]}, 1000),
        ("direct", "1", {"inbound_numbers": ["+1"]}, 1000),
        ("direct", "1", {}, 2000),
        ("individual", "1", {"numbers": ["+2"]}, 1001),
        ("callee", "", {"inbound_numbers": ["+1"]}, 1102),
        ("callee", "", {}, 2102),
        ("individual", "", {}, 2101),
        ("direct", "", {}, 2100),
    ],
)
def test_rule_priority(kind: str, pin: str, filters: dict[str, Any], priority: int) -> None:
    assert rule_priority(info(KINDS[kind]("r", pin), **filters)) == priority


def test_trunk_ids_do_not_change_priority() -> None:
    assert rule_priority(info(direct("r"), trunk_ids=["ST_a"])) == rule_priority(info(direct("r")))


def test_rule_without_kind_sorts_last() -> None:
    last = rule_priority(sip.SIPDispatchRuleInfo())
    assert last == 2**31 - 1
    assert last > rule_priority(info(callee("c"), inbound_numbers=[], numbers=[]))


def test_sorting_by_priority() -> None:
    rules = {
        "open callee any": info(callee("c")),
        "pin direct both": info(direct("r", "1"), **BOTH),
        "open direct both": info(direct("r"), **BOTH),
        "pin callee both": info(callee("c", "1"), **BOTH),
        "pin individual one filter": info(individual("i", "1"), numbers=["+2"]),
        "open individual both": info(individual("i"), **BOTH),
        "pin direct any": info(direct("r", "1")),
    }
    order = sorted(rules, key=lambda name: rule_priority(rules[name]))
    assert order == [
        "pin direct both",
        "pin callee both",
        "open direct both",
        "open individual both",
        "pin individual one filter",
        "pin direct any",
        "open callee any",
    ]


# -- updates --------------------------------------------------------------------------------------


def full_rule() -> sip.SIPDispatchRuleInfo:
    return stored(
        "SDR_r",
        direct("room", "12"),
        trunk_ids=["ST_a", "ST_b"],
        inbound_numbers=["+1"],
        numbers=["+2"],
        name="name",
        metadata="meta",
        attributes={"a": "1", "b": "2"},
        hide_phone_number=True,
        krisp_enabled=True,
    )


def test_apply_rule_update_fields() -> None:
    before = full_rule()
    snapshot = sip.SIPDispatchRuleInfo()
    snapshot.CopyFrom(before)
    result = apply_rule_update(
        before,
        sip.SIPDispatchRuleUpdate(
            trunk_ids=ListUpdate(add=["ST_c"], remove=["ST_a"]),
            rule=individual("call"),
            name="renamed",
            metadata="",
            attributes={"a": "", "b": "3", "c": "4"},
        ),
    )
    assert before == snapshot, "the stored rule must not be modified"
    assert result.sip_dispatch_rule_id == "SDR_r"
    assert list(result.trunk_ids) == ["ST_b", "ST_c"]
    assert result.rule == individual("call")
    assert result.name == "renamed"
    assert result.metadata == ""
    assert dict(result.attributes) == {"b": "3", "c": "4"}
    # fields the update cannot touch are kept
    assert list(result.inbound_numbers) == ["+1"]
    assert list(result.numbers) == ["+2"]
    assert result.hide_phone_number
    assert result.krisp_enabled


def test_empty_rule_update_keeps_everything() -> None:
    before = full_rule()
    result = apply_rule_update(before, sip.SIPDispatchRuleUpdate())
    assert result.name == "name"
    assert result.metadata == "meta"
    assert dict(result.attributes) == {"a": "1", "b": "2"}
    assert list(result.trunk_ids) == ["ST_a", "ST_b"]
    assert result.rule == before.rule


def test_rule_update_clears_trunk_ids() -> None:
    result = apply_rule_update(
        full_rule(), sip.SIPDispatchRuleUpdate(trunk_ids=ListUpdate(clear=True))
    )
    assert list(result.trunk_ids) == []


@pytest.mark.parametrize(
    "update", [ListUpdate(), ListUpdate(set=["a"], add=["b"]), ListUpdate(remove=[""])]
)
def test_rule_update_refuses_bad_trunk_ids_update(update: ListUpdate) -> None:
    message = invalid(apply_rule_update, full_rule(), sip.SIPDispatchRuleUpdate(trunk_ids=update))
    assert message.startswith("update.trunk_ids: ")


def test_rule_update_media() -> None:
    result = apply_rule_update(full_rule(), sip.SIPDispatchRuleUpdate(media_encryption=REQUIRE))
    assert result.media_encryption == result.media.encryption == REQUIRE
    result = apply_rule_update(
        result, sip.SIPDispatchRuleUpdate(media=sip.SIPMediaConfig(encryption=ALLOW))
    )
    assert result.media_encryption == result.media.encryption == ALLOW
