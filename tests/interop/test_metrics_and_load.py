"""`/metrics` of a live server read with prometheus_client's parser after real calls, and
admission by load: `--max-cpu` low enough that any work passes it makes the server refuse new
calls (503 with Retry-After) and `/healthz` say not ready; the default takes them again."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

from livekit.protocol import sip

from tests.harness import client, eventually, metric, stop_cleanly
from tests.helpers import ServerProcess
from tests.interop.test_hostile_invites import raw_invite
from tests.interop.test_inbound import CALLER
from tests.interop.test_inbound_cases import (
    ServerFactory,
    dispatch_rule,
    header_of,
    inbound_trunk,
    serve,  # noqa: F401 - the fixture
    shared_server,  # noqa: F401 - the fixture (unused here: every test counts on its own server)
    status_of,
    udp_caller,
)
from tests.server.test_metrics import histogram_families


def scrape(server: ServerProcess) -> str:
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=5) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return str(resp.read().decode())


def healthz(server: ServerProcess) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"{server.url}/healthz", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


async def test_metrics_of_real_calls_parse_with_prometheus_client(
    serve: ServerFactory,  # noqa: F811
) -> None:
    server = await serve("--max-calls", "10")  # (a server of its own: counts start at 0)
    port = server.sip_port  # type: ignore[attr-defined]
    async with client(server) as lk, udp_caller(port) as caller:
        trunk_id = await inbound_trunk(lk)
        await dispatch_rule(  # a PIN room: the call is answered at once, for its prompt
            lk,
            sip.SIPDispatchRule(
                dispatch_rule_direct=sip.SIPDispatchRuleDirect(room_name="locked", pin="1234")
            ),
        )
        got = await caller.responses(raw_invite(port))
        assert status_of(got[-1]) == 200, got
        lag = "sipbridge_event_loop_lag_seconds_count"
        await eventually(lambda: metric(server, lag), "the loop lag probe's first reading")
        text = await asyncio.to_thread(scrape, server)
    families = histogram_families(text)

    def value(family: str, sample: str, **labels: str) -> float:
        for s in families[family].samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
        raise AssertionError(f"no {sample}{labels} in {families[family].samples}")

    calls = "sipbridge_calls_total"
    assert value("sipbridge_calls", calls, direction="inbound", trunk=trunk_id, code="200") == 1
    trying = "sipbridge_sip_invite_trying_seconds"
    assert value(trying, f"{trying}_count") >= 1
    answered = "sipbridge_sip_invite_answer_seconds_count"
    assert value("sipbridge_sip_invite_answer_seconds", answered, direction="inbound") == 1
    assert value("sipbridge_sip_invite_answer_seconds", answered, direction="outbound") == 0
    create = "livekit.SIP/CreateSIPInboundTrunk"
    api = "sipbridge_api_request_seconds_count"
    assert value("sipbridge_api_request_seconds", api, method=create) == 1
    assert value("sipbridge_event_loop_lag_seconds", lag) > 0
    assert value("sipbridge_calls_active", "sipbridge_calls_active") == 1
    assert value("sipbridge_calls_stuck", "sipbridge_calls_stuck") == 0
    assert families["sipbridge_sip_messages"].type == "counter"
    assert CALLER not in text  # a caller's number is never a label
    # The lines tests/helpers.py reads are still there, by the same names.
    lines = await asyncio.to_thread(server.metrics)
    assert lines["sipbridge_calls_active"] == 1
    assert lines[f'sipbridge_calls_total{{code="200",direction="inbound",trunk="{trunk_id}"}}'] == 1


async def test_a_server_over_its_cpu_limit_refuses_calls_until_the_limit_allows(
    serve: ServerFactory,  # noqa: F811
) -> None:
    # Any work at all passes 0.001% of a core: every CPU reading is over the limit.
    busy = await serve("--max-cpu", "0.001")
    port = busy.sip_port  # type: ignore[attr-defined]

    async def not_ready() -> bool:
        status, text = await asyncio.to_thread(healthz, busy)
        return status == 503 and "not ready" in text and "cpu" in text

    await eventually(not_ready, "/healthz to say not ready")
    async with udp_caller(port) as caller:
        got = await caller.responses(raw_invite(port))
        assert status_of(got[-1]) == 503, got
        assert header_of(got[-1], "Retry-After") == "5"
    lines = await asyncio.to_thread(busy.metrics)
    assert lines['sipbridge_load_refused_total{reason="cpu"}'] == 1
    assert lines['sipbridge_inbound_total{outcome="overload"}'] == 1
    assert lines['sipbridge_calls_total{code="503",direction="inbound",trunk="none"}'] == 1
    assert lines["sipbridge_process_cpu_percent"] > 0.001
    stop_cleanly(busy)

    # The default limit (90% of a core): ready, and the INVITE goes past admission (no trunk
    # here: 404, not 503).
    calm = await serve("--max-cpu", "90")
    port = calm.sip_port  # type: ignore[attr-defined]

    async def ready() -> bool:  # once its start-up's CPU reading (over the limit) has passed
        return await asyncio.to_thread(healthz, calm) == (200, "ok\n")

    await eventually(ready, "/healthz to say ok")
    async with udp_caller(port) as caller:
        got = await caller.responses(raw_invite(port))
        assert status_of(got[-1]) == 404, got
    assert (await asyncio.to_thread(calm.metrics)).get(
        'sipbridge_load_refused_total{reason="cpu"}', 0
    ) == 0
