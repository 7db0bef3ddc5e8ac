"""Partial updates: `ListUpdate` validation and application, and map diffs (SIP-BEHAVIOUR.md s7)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from livekit.protocol.models import ListUpdate
from livekit.protocol.sip import SIPInboundTrunkInfo

from sipbridge.errors import ApiError
from sipbridge.telephony.updates import apply_list_update, apply_map_diff, validate_list_update

quick = settings(database=None, max_examples=300)

items = st.lists(st.sampled_from(["a", "b", "c", "d", "e", "f"]), max_size=6)
unique_items = st.lists(st.sampled_from(["a", "b", "c", "d", "e", "f"]), max_size=6, unique=True)


# -- validate_list_update -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "update",
    [
        ListUpdate(clear=True),
        ListUpdate(set=["a"]),
        ListUpdate(set=["a", "b"]),
        ListUpdate(add=["a"]),
        ListUpdate(remove=["a"]),
        ListUpdate(add=["a"], remove=["b"]),
        ListUpdate(add=["a"], remove=["a"]),
    ],
)
def test_valid_list_updates(update: ListUpdate) -> None:
    validate_list_update(update, "update.numbers")


@pytest.mark.parametrize(
    ("update", "fragment"),
    [
        (ListUpdate(), "no operation"),
        (ListUpdate(clear=True, set=["a"]), "cannot clear and change"),
        (ListUpdate(clear=True, add=["a"]), "cannot clear and change"),
        (ListUpdate(clear=True, remove=["a"]), "cannot clear and change"),
        (ListUpdate(set=["a"], add=["b"]), "cannot set and add/remove"),
        (ListUpdate(set=["a"], remove=["b"]), "cannot set and add/remove"),
        (ListUpdate(set=[""]), "empty element"),
        (ListUpdate(add=["a", ""]), "empty element"),
        (ListUpdate(remove=[""]), "empty element"),
    ],
)
def test_invalid_list_updates(update: ListUpdate, fragment: str) -> None:
    with pytest.raises(ApiError) as info:
        validate_list_update(update, "update.numbers")
    assert info.value.code == "invalid_argument"
    assert info.value.message.startswith("update.numbers: ")
    assert fragment in info.value.message


# -- apply_list_update ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "update", "after"),
    [
        (["a", "b"], ListUpdate(clear=True), []),
        ([], ListUpdate(clear=True), []),
        (["a", "b"], ListUpdate(set=["c"]), ["c"]),
        (["a"], ListUpdate(set=["b", "a"]), ["b", "a"]),
        (["a", "b"], ListUpdate(add=["c"]), ["a", "b", "c"]),
        (["a", "b"], ListUpdate(add=["b", "c"]), ["a", "b", "c"]),
        (["a", "b"], ListUpdate(add=["c", "c"]), ["a", "b", "c"]),
        (["a", "b", "c"], ListUpdate(remove=["b"]), ["a", "c"]),
        (["a", "b"], ListUpdate(remove=["z"]), ["a", "b"]),
        (["a", "b"], ListUpdate(add=["c"], remove=["a"]), ["b", "c"]),
        # remove first, then add: an element both removed and added ends up last
        (["a", "b"], ListUpdate(add=["a"], remove=["a"]), ["b", "a"]),
        ([], ListUpdate(add=["x", "y"]), ["x", "y"]),
    ],
)
def test_apply_list_update(before: list[str], update: ListUpdate, after: list[str]) -> None:
    target = list(before)
    apply_list_update(target, update)
    assert target == after


def test_apply_list_update_works_on_protobuf_repeated_fields() -> None:
    trunk = SIPInboundTrunkInfo(numbers=["+1", "+2"])
    apply_list_update(trunk.numbers, ListUpdate(add=["+3"], remove=["+1"]))
    assert list(trunk.numbers) == ["+2", "+3"]
    apply_list_update(trunk.numbers, ListUpdate(set=["+9"]))
    assert list(trunk.numbers) == ["+9"]
    apply_list_update(trunk.numbers, ListUpdate(clear=True))
    assert list(trunk.numbers) == []


def test_apply_list_update_does_not_change_the_update() -> None:
    update = ListUpdate(add=["c"], remove=["a"])
    apply_list_update(["a", "b"], update)
    assert list(update.add) == ["c"]
    assert list(update.remove) == ["a"]


@quick
@given(unique_items, unique_items, unique_items)
def test_add_remove_invariants(before: list[str], add: list[str], remove: list[str]) -> None:
    update = ListUpdate(add=add, remove=remove)
    target = list(before)
    apply_list_update(target, update)
    # every added item is present; every removed item that was not re-added is gone
    assert all(v in target for v in add)
    assert not any(v in target for v in remove if v not in add)
    # nothing else appears or disappears
    assert set(target) == (set(before) - set(remove)) | set(add)
    # no duplicates, and survivors keep their relative order ahead of the new items
    assert len(target) == len(set(target))
    survivors = [v for v in before if v not in remove]
    assert target[: len(survivors)] == survivors


@quick
@given(items, unique_items)
def test_add_is_idempotent(before: list[str], add: list[str]) -> None:
    if not add:
        return
    update = ListUpdate(add=add)
    once = list(before)
    apply_list_update(once, update)
    twice = list(once)
    apply_list_update(twice, update)
    assert twice == once


@quick
@given(items, st.lists(st.sampled_from(["a", "b", "z"]), min_size=1, max_size=4))
def test_set_replaces_everything(before: list[str], new: list[str]) -> None:
    target = list(before)
    apply_list_update(target, ListUpdate(set=new))
    assert target == new


# -- apply_map_diff -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "diff", "after"),
    [
        ({}, {}, {}),
        ({"a": "1"}, {}, {"a": "1"}),
        ({}, {"a": "1"}, {"a": "1"}),
        ({"a": "1"}, {"a": "2"}, {"a": "2"}),
        ({"a": "1", "b": "2"}, {"a": ""}, {"b": "2"}),
        ({"a": "1"}, {"missing": ""}, {"a": "1"}),
        ({"a": "1", "b": "2"}, {"a": "", "b": "3", "c": "4"}, {"b": "3", "c": "4"}),
    ],
)
def test_apply_map_diff(
    before: dict[str, str], diff: dict[str, str], after: dict[str, str]
) -> None:
    target = dict(before)
    apply_map_diff(target, diff)
    assert target == after


@quick
@given(
    st.dictionaries(st.sampled_from("abcde"), st.sampled_from(["1", "2"])),
    st.dictionaries(st.sampled_from("abcde"), st.sampled_from(["", "1", "3"])),
)
def test_map_diff_invariants(before: dict[str, str], diff: dict[str, str]) -> None:
    target = dict(before)
    apply_map_diff(target, diff)
    for key, value in diff.items():
        assert target.get(key) == (value or None)
    for key, value in before.items():
        if key not in diff:
            assert target[key] == value
    assert "" not in target.values()
