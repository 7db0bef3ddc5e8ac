"""livekit.SIP trunks and dispatch rules, driven by the official `livekit-api` client against a
real `sipbridge serve` process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from livekit import api
from livekit.protocol import sip
from livekit.protocol.models import ListUpdate, Pagination

from tests.harness import leave_clean, module_server
from tests.helpers import ServerProcess, token, twirp


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the module (a start costs more than most tests here)."""
    yield from module_server(tmp_path_factory, "sip-api", clean_log=True)


@pytest.fixture
async def server(shared_server: ServerProcess) -> AsyncIterator[ServerProcess]:
    """The module's server, emptied after each test (`leave_clean`): every test starts from
    no trunk and no rule."""
    yield shared_server
    await leave_clean(shared_server)


def inbound(**kw: object) -> sip.CreateSIPInboundTrunkRequest:
    return sip.CreateSIPInboundTrunkRequest(trunk=sip.SIPInboundTrunkInfo(**kw))  # type: ignore[arg-type]


def outbound(**kw: object) -> sip.CreateSIPOutboundTrunkRequest:
    return sip.CreateSIPOutboundTrunkRequest(trunk=sip.SIPOutboundTrunkInfo(**kw))  # type: ignore[arg-type]


def direct(room: str, pin: str = "") -> sip.SIPDispatchRule:
    return sip.SIPDispatchRule(
        dispatch_rule_direct=sip.SIPDispatchRuleDirect(room_name=room, pin=pin)
    )


def rule(**kw: object) -> sip.CreateSIPDispatchRuleRequest:
    return sip.CreateSIPDispatchRuleRequest(dispatch_rule=sip.SIPDispatchRuleInfo(**kw))  # type: ignore[arg-type]


async def expect_error(code: str, coro: object, *fragments: str) -> api.TwirpError:
    with pytest.raises(api.TwirpError) as info:
        await coro  # type: ignore[misc]
    assert info.value.code == code, info.value
    for fragment in fragments:
        assert fragment in info.value.message, info.value.message
    return info.value


# -- inbound trunks -----------------------------------------------------------------------------


async def test_create_inbound_trunk_returns_stored_trunk(lk: api.LiveKitAPI) -> None:
    t = await lk.sip.create_inbound_trunk(
        inbound(
            name="Demo inbound trunk",
            numbers=["+15105550100"],
            headers_to_attributes={"X-Customer-Id": "customer.id"},
            krisp_enabled=True,
        )
    )
    assert t.sip_trunk_id.startswith("ST_") and len(t.sip_trunk_id) > 6
    assert t.name == "Demo inbound trunk"
    assert list(t.numbers) == ["+15105550100"]
    assert dict(t.headers_to_attributes) == {"X-Customer-Id": "customer.id"}
    assert t.krisp_enabled
    assert t.created_at.seconds > 0 and t.created_at == t.updated_at
    listed = await lk.sip.list_inbound_trunk(sip.ListSIPInboundTrunkRequest())
    assert [x.sip_trunk_id for x in listed.items] == [t.sip_trunk_id]
    assert listed.items[0] == t


@pytest.mark.parametrize(
    ("trunk", "fragments"),
    [
        ({"name": "open"}, ("for security",)),
        ({"sip_trunk_id": "ST_mine", "numbers": ["+1"]}, ("must not be set",)),
        ({"numbers": ["+1"], "headers": {"Call-ID": "x"}}, ("trunk.headers", "Call-ID")),
        ({"numbers": ["+1"], "headers": {"contact": "x"}}, ("trunk.headers", "contact")),
        ({"numbers": ["+1"], "headers": {"v": "x"}}, ("trunk.headers",)),
        ({"numbers": ["+1"], "headers": {"X-A": "1\r\nVia: evil"}}, ("control character",)),
        ({"numbers": ["+1"], "headers": {"X A": "1"}}, ("invalid characters",)),
        ({"numbers": ["+1"], "attributes_to_headers": {"a": "To"}}, ("attributes_to_headers",)),
        ({"allowed_addresses": ["10.0.0.0/33"]}, ("allowed_addresses[0]", "CIDR")),
        ({"allowed_addresses": ["bad host!"]}, ("allowed_addresses[0]",)),
        ({"auth_username": "u"}, ("auth_password",)),
        ({"numbers": [""]}, ("trunk.numbers[0]",)),
        ({"numbers": ["sip:alice@example.com"]}, ("trunk.numbers[0]",)),
        ({"numbers": ["+1"], "ringing_timeout_status": 200}, ("ringing_timeout_status",)),
    ],
)
async def test_create_inbound_trunk_validation(
    lk: api.LiveKitAPI, trunk: dict[str, object], fragments: tuple[str, ...]
) -> None:
    await expect_error(
        "invalid_argument", lk.sip.create_inbound_trunk(inbound(**trunk)), *fragments
    )
    assert not (await lk.sip.list_inbound_trunk(sip.ListSIPInboundTrunkRequest())).items


async def test_inbound_trunk_accepts_each_security_setting(lk: api.LiveKitAPI) -> None:
    a = await lk.sip.create_inbound_trunk(inbound(auth_username="u", auth_password="p"))
    b = await lk.sip.create_inbound_trunk(
        inbound(allowed_addresses=["192.0.2.0/24"], allowed_numbers=["+15550009"])
    )
    c = await lk.sip.create_inbound_trunk(inbound(numbers=["+15550001"]))
    assert len({a.sip_trunk_id, b.sip_trunk_id, c.sip_trunk_id}) == 3


async def test_inbound_trunk_conflicts(lk: api.LiveKitAPI) -> None:
    first = await lk.sip.create_inbound_trunk(inbound(numbers=["+1 (510) 555-0100"]))
    # Same number in another format, no allowed_numbers on either side.
    err = await expect_error(
        "invalid_argument",
        lk.sip.create_inbound_trunk(inbound(numbers=["15105550100"])),
        first.sip_trunk_id,
        "+15105550100",
    )
    assert "conflicting" in err.message
    # Same number, but callers restricted on the new one only: still overlapping? No - the
    # unrestricted trunk takes "any caller" and the restricted one "these callers", distinct keys.
    await lk.sip.create_inbound_trunk(
        inbound(numbers=["+15105550100"], allowed_numbers=["+15550001"])
    )
    await expect_error(
        "invalid_argument",
        lk.sip.create_inbound_trunk(
            inbound(numbers=["+15105550100"], allowed_numbers=["+1 555 0001", "+15550002"])
        ),
        "allowed number +15550001",
    )
    await lk.sip.create_inbound_trunk(
        inbound(numbers=["+15105550100"], allowed_numbers=["+15550002"])
    )
    # A wildcard trunk does not conflict with trunks listing the number.
    await lk.sip.create_inbound_trunk(inbound(allowed_addresses=["192.0.2.1"]))
    # Two wildcard trunks without allowed_numbers do.
    await expect_error(
        "invalid_argument",
        lk.sip.create_inbound_trunk(inbound(auth_username="a", auth_password="b")),
        "<any>",
    )
    assert len((await lk.sip.list_inbound_trunk(sip.ListSIPInboundTrunkRequest())).items) == 4


async def test_inbound_trunk_get_list_filters_and_pages(server: ServerProcess) -> None:
    async with api.LiveKitAPI(url=server.url, api_key="testkey", api_secret=_secret()) as lk:
        made = []
        for i in range(7):
            t = await lk.sip.create_inbound_trunk(inbound(numbers=[f"+1555000{i}"], name=f"t{i}"))
            made.append(t)
        wildcard = await lk.sip.create_inbound_trunk(inbound(allowed_addresses=["192.0.2.9"]))
        ids = sorted(t.sip_trunk_id for t in [*made, wildcard])

        everything = await lk.sip.list_inbound_trunk(sip.ListSIPInboundTrunkRequest())
        assert [t.sip_trunk_id for t in everything.items] == ids

        paged: list[str] = []
        after = ""
        while True:
            page = await lk.sip.list_inbound_trunk(
                sip.ListSIPInboundTrunkRequest(page=Pagination(after_id=after, limit=3))
            )
            if not page.items:
                break
            assert len(page.items) <= 3
            paged += [t.sip_trunk_id for t in page.items]
            after = page.items[-1].sip_trunk_id
        assert paged == ids

        # A limit of 0 or less is LiveKit's default page (1000), never an error.
        for limit in (0, -1):
            page = await lk.sip.list_inbound_trunk(
                sip.ListSIPInboundTrunkRequest(page=Pagination(after_id=ids[1], limit=limit))
            )
            assert [t.sip_trunk_id for t in page.items] == ids[2:]

        by_id = await lk.sip.list_inbound_trunk(
            sip.ListSIPInboundTrunkRequest(trunk_ids=[made[2].sip_trunk_id, "ST_missing"])
        )
        assert [t.sip_trunk_id for t in by_id.items] == [made[2].sip_trunk_id]

        # Numbers compare normalised; wildcard trunks are included.
        by_number = await lk.sip.list_inbound_trunk(
            sip.ListSIPInboundTrunkRequest(numbers=["1 555 0003"])
        )
        assert {t.sip_trunk_id for t in by_number.items} == {
            made[3].sip_trunk_id,
            wildcard.sip_trunk_id,
        }

        # Get (used by the lk CLI) through a raw Twirp call with an admin token.
        auth = "Bearer " + token(sip=api.SIPGrants(admin=True))
        status, _, body = await twirp(
            server.url,
            "livekit.SIP",
            "GetSIPInboundTrunk",
            sip.GetSIPInboundTrunkRequest(sip_trunk_id=made[1].sip_trunk_id).SerializeToString(),
            auth=auth,
        )
        assert status == 200
        assert sip.GetSIPInboundTrunkResponse.FromString(body).trunk == made[1]
        status, ctype, body = await twirp(
            server.url,
            "livekit.SIP",
            "GetSIPInboundTrunk",
            sip.GetSIPInboundTrunkRequest(sip_trunk_id="ST_nope").SerializeToString(),
            auth=auth,
        )
        assert (status, ctype) == (404, "application/json")
        assert b'"not_found"' in body


async def test_inbound_trunk_replace_and_update(lk: api.LiveKitAPI) -> None:
    t = await lk.sip.create_inbound_trunk(
        inbound(name="a", numbers=["+15550100"], allowed_numbers=["+15550001"])
    )
    other = await lk.sip.create_inbound_trunk(inbound(numbers=["+15550200"]))

    replaced = await lk.sip.update_inbound_trunk(
        t.sip_trunk_id, sip.SIPInboundTrunkInfo(name="b", numbers=["+15550101"])
    )
    assert replaced.sip_trunk_id == t.sip_trunk_id
    assert replaced.name == "b" and list(replaced.numbers) == ["+15550101"]
    assert not replaced.allowed_numbers
    assert replaced.created_at == t.created_at
    assert replaced.updated_at.ToNanoseconds() > t.updated_at.ToNanoseconds()

    # Replace is revalidated: conflict with the other trunk, and the security rule.
    await expect_error(
        "invalid_argument",
        lk.sip.update_inbound_trunk(t.sip_trunk_id, sip.SIPInboundTrunkInfo(numbers=["15550200"])),
        other.sip_trunk_id,
    )
    await expect_error(
        "invalid_argument",
        lk.sip.update_inbound_trunk(t.sip_trunk_id, sip.SIPInboundTrunkInfo(name="open")),
        "for security",
    )
    await expect_error(
        "invalid_argument",
        lk.sip.update_inbound_trunk(
            t.sip_trunk_id, sip.SIPInboundTrunkInfo(sip_trunk_id="ST_other", numbers=["+1"])
        ),
        "must be empty or match",
    )

    # Field updates: list set/add/remove/clear and optional scalars.
    u = await lk.sip.update_inbound_trunk_fields(
        t.sip_trunk_id,
        numbers=ListUpdate(add=["+15550102", "+15550103"], remove=["+15550101"]),
        allowed_numbers=["+15550001", "+15550002"],
        name="c",
        auth_username="user",
        auth_password="pw",
    )
    assert list(u.numbers) == ["+15550102", "+15550103"]
    assert list(u.allowed_numbers) == ["+15550001", "+15550002"]
    assert (u.name, u.auth_username, u.auth_password) == ("c", "user", "pw")
    u = await lk.sip.update_inbound_trunk_fields(t.sip_trunk_id, metadata="m")
    assert u.name == "c" and u.metadata == "m"  # unset optionals keep their value
    u = await lk.sip.update_inbound_trunk_fields(t.sip_trunk_id, name="")
    assert u.name == ""  # a set optional, even empty, is applied

    # An update that would conflict or break the security rule is refused and changes nothing.
    await expect_error(
        "invalid_argument",
        lk.sip.update_inbound_trunk_fields(
            t.sip_trunk_id, numbers=ListUpdate(set=["+15550200"]), allowed_numbers=ListUpdate()
        ),
    )
    bad = sip.SIPInboundTrunkUpdate(numbers=ListUpdate(clear=True, add=["+1"]))
    status, _, body = await _raw_update(lk, t.sip_trunk_id, bad)
    assert status == 400 and b"clear and change" in body
    after = await lk.sip.list_inbound_trunk(
        sip.ListSIPInboundTrunkRequest(trunk_ids=[t.sip_trunk_id])
    )
    assert after.items[0] == u

    await expect_error(
        "not_found",
        lk.sip.update_inbound_trunk_fields("ST_nope", name="x"),
        "ST_nope",
    )


async def _raw_update(
    lk: api.LiveKitAPI, trunk_id: str, update: sip.SIPInboundTrunkUpdate
) -> tuple[int, str, bytes]:
    url = lk.sip._client.host  # the URL the client was made with
    req = sip.UpdateSIPInboundTrunkRequest(sip_trunk_id=trunk_id, update=update)
    auth = "Bearer " + token(sip=api.SIPGrants(admin=True))
    return await twirp(
        url, "livekit.SIP", "UpdateSIPInboundTrunk", req.SerializeToString(), auth=auth
    )


# -- outbound trunks ----------------------------------------------------------------------------


async def test_outbound_trunk_lifecycle(lk: api.LiveKitAPI) -> None:
    t = await lk.sip.create_outbound_trunk(
        outbound(
            name="carrier",
            address="sip.example.com:5080",
            numbers=["+15105550100"],
            transport=sip.SIPTransport.SIP_TRANSPORT_TCP,
            auth_username="u",
            auth_password="p",
            headers={"X-Account": "42"},
        )
    )
    assert t.sip_trunk_id.startswith("ST_")
    assert t.transport == sip.SIPTransport.SIP_TRANSPORT_TCP
    u = await lk.sip.update_outbound_trunk_fields(
        t.sip_trunk_id,
        address="192.0.2.10",
        numbers=ListUpdate(add=["+15105550101"]),
        transport=sip.SIPTransport.SIP_TRANSPORT_UDP,
    )
    assert u.address == "192.0.2.10"
    assert list(u.numbers) == ["+15105550100", "+15105550101"]
    assert u.transport == sip.SIPTransport.SIP_TRANSPORT_UDP
    assert u.auth_username == "u" and dict(u.headers) == {"X-Account": "42"}

    listed = await lk.sip.list_outbound_trunk(
        sip.ListSIPOutboundTrunkRequest(numbers=["+15105550101"])
    )
    assert [x.sip_trunk_id for x in listed.items] == [t.sip_trunk_id]
    none = await lk.sip.list_outbound_trunk(sip.ListSIPOutboundTrunkRequest(numbers=["+1999"]))
    assert not none.items
    # An outbound trunk is not an inbound trunk.
    assert not (await lk.sip.list_inbound_trunk(sip.ListSIPInboundTrunkRequest())).items

    legacy = await lk.sip.delete_trunk(sip.DeleteSIPTrunkRequest(sip_trunk_id=t.sip_trunk_id))
    assert legacy.sip_trunk_id == t.sip_trunk_id
    assert legacy.kind == sip.SIPTrunkInfo.TrunkKind.TRUNK_OUTBOUND
    assert legacy.outbound_address == "192.0.2.10"
    await expect_error(
        "not_found", lk.sip.delete_trunk(sip.DeleteSIPTrunkRequest(sip_trunk_id=t.sip_trunk_id))
    )


@pytest.mark.parametrize(
    ("trunk", "fragment"),
    [
        ({"address": "sip.example.com"}, "trunk.numbers"),
        ({"numbers": ["+1"]}, "trunk.address"),
        ({"numbers": ["+1"], "address": "sip:carrier.example.com"}, "not a SIP URI"),
        ({"numbers": ["+1"], "address": "a.example.com;transport=tcp"}, "not a SIP URI"),
        ({"numbers": ["+1"], "address": "a.example.com:99999"}, "port"),
        ({"numbers": ["+1"], "address": "a.example.com", "from_host": "x@y"}, "from_host"),
        ({"numbers": ["+1"], "address": "a.example.com", "headers": {"From": "x"}}, "From"),
        ({"numbers": ["+1"], "address": "bad host"}, "trunk.address"),
        ({"numbers": ["+1"], "address": "bad!host"}, "trunk.address"),
        ({"numbers": ["+1"], "address": "my_pbx.local:0"}, "port"),
    ],
)
async def test_create_outbound_trunk_validation(
    lk: api.LiveKitAPI, trunk: dict[str, object], fragment: str
) -> None:
    await expect_error(
        "invalid_argument", lk.sip.create_outbound_trunk(outbound(**trunk)), fragment
    )


async def test_trunk_hosts_with_underscores_and_ipv6(lk: api.LiveKitAPI) -> None:
    for address in ["my_pbx.local", "my_pbx.local:5060", "2001:db8::1", "[2001:db8::1]:5061"]:
        t = await lk.sip.create_outbound_trunk(
            outbound(numbers=["+15550200"], address=address, from_host="from_host.example")
        )
        assert (t.address, t.from_host) == (address, "from_host.example")
    i = await lk.sip.create_inbound_trunk(
        inbound(allowed_addresses=["my_pbx.local", "bad_host", "[2001:db8::]/32", "2001:db8::1"])
    )
    assert list(i.allowed_addresses) == [
        "my_pbx.local",
        "bad_host",
        "[2001:db8::]/32",
        "2001:db8::1",
    ]
    assert len((await lk.sip.list_outbound_trunk(sip.ListSIPOutboundTrunkRequest())).items) == 4
    assert [
        t.sip_trunk_id
        for t in (await lk.sip.list_inbound_trunk(sip.ListSIPInboundTrunkRequest())).items
    ] == [i.sip_trunk_id]


async def test_list_sip_trunk_legacy_shows_both_kinds(server: ServerProcess) -> None:
    async with api.LiveKitAPI(url=server.url, api_key="testkey", api_secret=_secret()) as lk:
        i = await lk.sip.create_inbound_trunk(
            inbound(numbers=["+15550100"], allowed_addresses=["192.0.2.0/24"])
        )
        o = await lk.sip.create_outbound_trunk(outbound(numbers=["+15550200"], address="a.b"))
    auth = "Bearer " + token(sip=api.SIPGrants(admin=True))
    status, _, body = await twirp(server.url, "livekit.SIP", "ListSIPTrunk", b"", auth=auth)
    assert status == 200
    items = {t.sip_trunk_id: t for t in sip.ListSIPTrunkResponse.FromString(body).items}
    assert items[i.sip_trunk_id].kind == sip.SIPTrunkInfo.TrunkKind.TRUNK_INBOUND
    assert list(items[i.sip_trunk_id].inbound_addresses) == ["192.0.2.0/24"]
    assert items[i.sip_trunk_id].outbound_number == "+15550100"
    assert items[o.sip_trunk_id].kind == sip.SIPTrunkInfo.TrunkKind.TRUNK_OUTBOUND


# -- dispatch rules -----------------------------------------------------------------------------


async def test_dispatch_rule_create_both_styles(lk: api.LiveKitAPI) -> None:
    r = await lk.sip.create_dispatch_rule(
        rule(
            rule=direct("support"),
            name="support line",
            attributes={"team": "support"},
            metadata='{"x":1}',
            numbers=["+15105550100"],
        )
    )
    assert r.sip_dispatch_rule_id.startswith("SDR_")
    assert r.rule.dispatch_rule_direct.room_name == "support"
    assert dict(r.attributes) == {"team": "support"}
    assert r.created_at.seconds > 0
    # The legacy top-level fields.
    legacy = await lk.sip.create_dispatch_rule(
        sip.CreateSIPDispatchRuleRequest(
            rule=sip.SIPDispatchRule(
                dispatch_rule_individual=sip.SIPDispatchRuleIndividual(room_prefix="call")
            ),
            trunk_ids=["ST_abc"],
            hide_phone_number=True,
            inbound_numbers=["+15550001"],
            name="legacy",
            attributes={"a": "b"},
        )
    )
    assert legacy.rule.dispatch_rule_individual.room_prefix == "call"
    assert list(legacy.trunk_ids) == ["ST_abc"] and legacy.hide_phone_number
    assert list(legacy.inbound_numbers) == ["+15550001"] and legacy.name == "legacy"
    listed = await lk.sip.list_dispatch_rule(sip.ListSIPDispatchRuleRequest())
    assert {x.sip_dispatch_rule_id for x in listed.items} == {
        r.sip_dispatch_rule_id,
        legacy.sip_dispatch_rule_id,
    }


@pytest.mark.parametrize(
    ("info", "fragment"),
    [
        ({"name": "no rule"}, "rule"),
        ({"rule": direct("")}, "room_name"),
        ({"rule": direct("r", pin="12a")}, "pin"),
        ({"rule": direct("r"), "sip_dispatch_rule_id": "SDR_x"}, "must not be set"),
        ({"rule": direct("r"), "inbound_numbers": ["sip:x@y"]}, "inbound_numbers[0]"),
        (
            {"rule": direct("a\nb")},
            "rule.dispatch_rule_direct.room_name: room name 'a\\nb' contains control characters",
        ),
        ({"rule": direct("r" * 257)}, "rule.dispatch_rule_direct.room_name: room name too long"),
        (
            {
                "rule": sip.SIPDispatchRule(
                    dispatch_rule_individual=sip.SIPDispatchRuleIndividual(room_prefix="c\x7f")
                )
            },
            "rule.dispatch_rule_individual.room_prefix: ",
        ),
        (
            {
                "rule": sip.SIPDispatchRule(
                    dispatch_rule_callee=sip.SIPDispatchRuleCallee(room_prefix="c\t")
                )
            },
            "rule.dispatch_rule_callee.room_prefix: ",
        ),
    ],
)
async def test_dispatch_rule_validation(
    lk: api.LiveKitAPI, info: dict[str, object], fragment: str
) -> None:
    await expect_error("invalid_argument", lk.sip.create_dispatch_rule(rule(**info)), fragment)
    assert not (await lk.sip.list_dispatch_rule(sip.ListSIPDispatchRuleRequest())).items


async def test_dispatch_rule_room_names_may_hold_url_separators(lk: api.LiveKitAPI) -> None:
    # LiveKit allows "/ \\ ? # %" in room names; so does a rule's room name or prefix.
    names = ["a/b", "a\\b", "a?b", "a#b", "a%b"]
    made = [
        await lk.sip.create_dispatch_rule(rule(rule=direct(name), trunk_ids=[f"ST_{i}"]))
        for i, name in enumerate(names)
    ]
    assert [r.rule.dispatch_rule_direct.room_name for r in made] == names
    prefix = await lk.sip.create_dispatch_rule(
        rule(
            rule=sip.SIPDispatchRule(
                dispatch_rule_individual=sip.SIPDispatchRuleIndividual(room_prefix="calls/eu?#%")
            )
        )
    )
    assert prefix.rule.dispatch_rule_individual.room_prefix == "calls/eu?#%"
    listed = await lk.sip.list_dispatch_rule(sip.ListSIPDispatchRuleRequest())
    assert {r.sip_dispatch_rule_id for r in listed.items} == {
        r.sip_dispatch_rule_id for r in [*made, prefix]
    }


async def test_dispatch_rule_conflicts(lk: api.LiveKitAPI) -> None:
    first = await lk.sip.create_dispatch_rule(rule(rule=direct("a"), name="first"))
    # Same (pin, trunk, caller, called) = all catch-all: conflict.
    await expect_error(
        "invalid_argument",
        lk.sip.create_dispatch_rule(rule(rule=direct("b"))),
        first.sip_dispatch_rule_id,
    )
    # Different PIN, a specific trunk, or a specific number: no conflict.
    await lk.sip.create_dispatch_rule(rule(rule=direct("b", pin="1234")))
    on_trunk = await lk.sip.create_dispatch_rule(rule(rule=direct("c"), trunk_ids=["ST_1"]))
    await lk.sip.create_dispatch_rule(rule(rule=direct("d"), inbound_numbers=["+15550001"]))
    # Numbers compare normalised.
    await expect_error(
        "invalid_argument",
        lk.sip.create_dispatch_rule(rule(rule=direct("e"), inbound_numbers=["1-555-0001"])),
    )
    # Updating into a conflict is refused too.
    await expect_error(
        "invalid_argument",
        lk.sip.update_dispatch_rule_fields(
            on_trunk.sip_dispatch_rule_id, trunk_ids=ListUpdate(remove=["ST_1"])
        ),
        first.sip_dispatch_rule_id,
    )


async def test_dispatch_rule_update_and_replace(lk: api.LiveKitAPI) -> None:
    r = await lk.sip.create_dispatch_rule(
        rule(rule=direct("a"), trunk_ids=["ST_1"], attributes={"keep": "1", "drop": "2"})
    )
    u = await lk.sip.update_dispatch_rule_fields(
        r.sip_dispatch_rule_id,
        trunk_ids=ListUpdate(add=["ST_2"], remove=["ST_1"]),
        attributes={"drop": "", "new": "3"},
        name="renamed",
    )
    assert list(u.trunk_ids) == ["ST_2"]
    assert dict(u.attributes) == {"keep": "1", "new": "3"}
    assert u.name == "renamed"
    assert u.rule == r.rule and u.created_at == r.created_at
    u = await lk.sip.update_dispatch_rule_fields(
        r.sip_dispatch_rule_id,
        rule=sip.SIPDispatchRule(
            dispatch_rule_callee=sip.SIPDispatchRuleCallee(room_prefix="callee", randomize=True)
        ),
    )
    assert u.rule.dispatch_rule_callee.randomize and u.name == "renamed"

    replaced = await lk.sip.update_dispatch_rule(
        r.sip_dispatch_rule_id, sip.SIPDispatchRuleInfo(rule=direct("z"))
    )
    assert replaced.sip_dispatch_rule_id == r.sip_dispatch_rule_id
    assert not replaced.trunk_ids and not replaced.attributes and replaced.name == ""
    await expect_error(
        "invalid_argument",
        lk.sip.update_dispatch_rule(r.sip_dispatch_rule_id, sip.SIPDispatchRuleInfo()),
        "rule",
    )
    await expect_error(
        "not_found",
        lk.sip.update_dispatch_rule("SDR_nope", sip.SIPDispatchRuleInfo(rule=direct("z"))),
    )


async def test_dispatch_rule_list_filters_pages_and_delete(lk: api.LiveKitAPI) -> None:
    catch_all = await lk.sip.create_dispatch_rule(rule(rule=direct("all")))
    t1 = await lk.sip.create_dispatch_rule(rule(rule=direct("t1"), trunk_ids=["ST_1"]))
    t2 = await lk.sip.create_dispatch_rule(rule(rule=direct("t2"), trunk_ids=["ST_2"]))
    ids = sorted(r.sip_dispatch_rule_id for r in (catch_all, t1, t2))

    on_t1 = await lk.sip.list_dispatch_rule(sip.ListSIPDispatchRuleRequest(trunk_ids=["ST_1"]))
    assert {r.sip_dispatch_rule_id for r in on_t1.items} == {
        catch_all.sip_dispatch_rule_id,
        t1.sip_dispatch_rule_id,
    }
    by_id = await lk.sip.list_dispatch_rule(
        sip.ListSIPDispatchRuleRequest(dispatch_rule_ids=[t2.sip_dispatch_rule_id])
    )
    assert [r.sip_dispatch_rule_id for r in by_id.items] == [t2.sip_dispatch_rule_id]
    page = await lk.sip.list_dispatch_rule(
        sip.ListSIPDispatchRuleRequest(page=Pagination(after_id=ids[0], limit=1))
    )
    assert [r.sip_dispatch_rule_id for r in page.items] == [ids[1]]

    deleted = await lk.sip.delete_dispatch_rule(
        sip.DeleteSIPDispatchRuleRequest(sip_dispatch_rule_id=t1.sip_dispatch_rule_id)
    )
    assert deleted == t1
    await expect_error(
        "not_found",
        lk.sip.delete_dispatch_rule(
            sip.DeleteSIPDispatchRuleRequest(sip_dispatch_rule_id=t1.sip_dispatch_rule_id)
        ),
    )


# -- calls, grants, persistence ---------------------------------------------------------


async def test_call_methods_refuse_unknown_trunks_and_participants(lk: api.LiveKitAPI) -> None:
    await expect_error(
        "not_found",
        lk.sip.create_sip_participant(
            sip.CreateSIPParticipantRequest(
                sip_trunk_id="ST_x", sip_call_to="+15550100", room_name="r"
            )
        ),
    )
    await expect_error(
        "not_found",
        lk.sip.transfer_sip_participant(
            sip.TransferSIPParticipantRequest(
                room_name="r", participant_identity="p", transfer_to="sip:x@y"
            )
        ),
    )


async def test_sip_methods_need_the_sip_admin_grant(server: ServerProcess) -> None:
    body = inbound(numbers=["+1"]).SerializeToString()
    for grants in [
        {"video": api.VideoGrants(room_admin=True, room_create=True)},
        {"sip": api.SIPGrants(call=True)},
    ]:
        auth = "Bearer " + token(**grants)  # type: ignore[arg-type]
        status, _, reply = await twirp(
            server.url, "livekit.SIP", "CreateSIPInboundTrunk", body, auth=auth
        )
        assert status == 403 and b'"permission_denied"' in reply


async def test_restart_keeps_trunks_and_rules(server: ServerProcess) -> None:
    async with api.LiveKitAPI(url=server.url, api_key="testkey", api_secret=_secret()) as lk:
        i = await lk.sip.create_inbound_trunk(inbound(numbers=["+15550100"], name="in"))
        i = await lk.sip.update_inbound_trunk_fields(i.sip_trunk_id, metadata="after update")
        o = await lk.sip.create_outbound_trunk(outbound(numbers=["+15550200"], address="a.b"))
        r = await lk.sip.create_dispatch_rule(rule(rule=direct("room"), trunk_ids=[i.sip_trunk_id]))
        gone = await lk.sip.create_dispatch_rule(rule(rule=direct("gone")))
        await lk.sip.delete_dispatch_rule(
            sip.DeleteSIPDispatchRuleRequest(sip_dispatch_rule_id=gone.sip_dispatch_rule_id)
        )
    server.restart()
    async with api.LiveKitAPI(url=server.url, api_key="testkey", api_secret=_secret()) as lk:
        ins = await lk.sip.list_inbound_trunk(sip.ListSIPInboundTrunkRequest())
        outs = await lk.sip.list_outbound_trunk(sip.ListSIPOutboundTrunkRequest())
        rules = await lk.sip.list_dispatch_rule(sip.ListSIPDispatchRuleRequest())
        assert list(ins.items) == [i]
        assert list(outs.items) == [o]
        assert list(rules.items) == [r]
        # Conflict checks see the reloaded state.
        await expect_error(
            "invalid_argument", lk.sip.create_inbound_trunk(inbound(numbers=["15550100"]))
        )


def _secret() -> str:
    from tests.helpers import API_SECRET  # noqa: PLC0415

    return API_SECRET
