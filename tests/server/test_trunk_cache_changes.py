"""The trunk and rule cache following another node's writes (`SipConfig.changed`, `resync`):
two caches on one store, as two nodes on one Redis are, without the Redis (a SQLite file)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from livekit.protocol import sip

from sipbridge.server.state.trunk_cache import SipConfig
from sipbridge.store import SQLiteStore
from tests.stores import opened


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    async with opened(SQLiteStore(tmp_path / "shared.db")) as s:
        yield s


def trunk(name: str) -> sip.SIPInboundTrunkInfo:
    return sip.SIPInboundTrunkInfo(name=name, numbers=["+15105550100"])


def rule(name: str) -> sip.SIPDispatchRuleInfo:
    direct = sip.SIPDispatchRuleDirect(room_name=name)
    return sip.SIPDispatchRuleInfo(name=name, rule=sip.SIPDispatchRule(dispatch_rule_direct=direct))


async def test_a_change_message_reloads_one_record(store: SQLiteStore) -> None:
    here, there = SipConfig(store, lambda: 1.0), SipConfig(store, lambda: 1.0)
    await here.load()
    await there.load()
    made = await here.put_inbound(lambda _: trunk("first"))
    trunk_id = made.sip_trunk_id
    assert trunk_id not in there.inbound
    await there.changed("inbound_trunk", trunk_id)
    assert there.inbound[trunk_id] == made
    assert there.encoded[trunk_id] == here.encoded[trunk_id]

    await here.put_inbound(lambda old: trunk("renamed"), existing_id=trunk_id)
    await there.changed("inbound_trunk", trunk_id)
    assert there.get_inbound(trunk_id).name == "renamed"

    await here.delete_trunk(trunk_id)
    await there.changed("inbound_trunk", trunk_id)
    assert trunk_id not in there.inbound
    assert trunk_id not in there.encoded
    await there.changed("call", "SCL_x")  # a kind the cache does not hold: nothing to do


async def test_resync_reloads_everything_and_forgets_what_is_gone(store: SQLiteStore) -> None:
    here, there = SipConfig(store, lambda: 1.0), SipConfig(store, lambda: 1.0)
    await here.load()
    kept = await here.put_rule(lambda _: rule("kept"))
    gone = await here.put_rule(
        lambda _: sip.SIPDispatchRuleInfo(
            name="gone", rule=rule("gone").rule, numbers=["+15550001"]
        )
    )
    await there.resync()
    assert set(there.rules) == {kept.sip_dispatch_rule_id, gone.sip_dispatch_rule_id}
    await here.delete_rule(gone.sip_dispatch_rule_id)
    await there.resync()  # (as after a reconnection: the delete's message was missed)
    assert set(there.rules) == {kept.sip_dispatch_rule_id}
    assert gone.sip_dispatch_rule_id not in there.encoded


async def test_an_outbound_trunk_written_elsewhere_is_looked_up_before_its_message(
    store: SQLiteStore,
) -> None:
    here, there = SipConfig(store, lambda: 1.0), SipConfig(store, lambda: 1.0)
    await here.load()
    await there.load()
    made = await here.put_outbound(
        lambda _: sip.SIPOutboundTrunkInfo(
            name="carrier", address="sip.example.com", numbers=["+15105550100"]
        )
    )
    assert made.sip_trunk_id not in there.outbound  # its change message has not come yet
    await there.look_up_outbound(made.sip_trunk_id)
    assert there.get_outbound(made.sip_trunk_id) == made
    await there.look_up_outbound("ST_nosuchtrunk")  # a miss stays a miss
    assert "ST_nosuchtrunk" not in there.outbound
