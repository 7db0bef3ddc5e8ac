"""`/metrics` by prometheus_client: every name the tests and README use, HELP and TYPE on each,
the histograms, bounded labels - read back with prometheus_client's own parser."""

from __future__ import annotations

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from sipbridge.server.api.metrics import BoundedLabel, Metrics, Sample, status_label
from tests.helpers import metric_samples

SCRAPED: list[Sample] = [
    ("sipbridge_api_requests_total", {}, 3),
    ("sipbridge_rooms", {}, 1),
    ("sipbridge_calls_active", {}, 2),
    ("sipbridge_calls_stuck", {}, 0),
    ("sipbridge_sip_messages_total", {"kind": "refused_flood"}, 4),
    ("sipbridge_sip_messages_total", {"kind": "received"}, 9),
    ("sipbridge_rtc_audio", {"counter": "frames_in"}, 150),
    ("sipbridge_media", {"counter": "packets_in"}, 50),
    ("sipbridge_outbound_total", {"outcome": "failed_486"}, 1),
    ("sipbridge_auth_blocked_sources", {}, 0),
    ("sipbridge_negotiation_refused_total", {"what": "foreign_offer"}, 1),
    ("sipbridge_registrations", {"state": "registered"}, 1),
    ("sipbridge_something_new", {"a": 'quote " and \\ back'}, 7),
]

HISTOGRAMS = {
    "sipbridge_sip_invite_trying_seconds",
    "sipbridge_sip_invite_answer_seconds",
    "sipbridge_api_request_seconds",
    "sipbridge_media_jitter_seconds",
    "sipbridge_media_loss_ratio",
    "sipbridge_event_loop_lag_seconds",
}


def histogram_families(text: str) -> dict[str, Metric]:
    """The metric families of `text` by name (the official parser's), once every histogram the
    server exports is there as one, with its HELP and TYPE lines."""
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in HISTOGRAMS:
        assert families[name].type == "histogram", name
        assert f"# HELP {name} " in text and f"# TYPE {name} histogram" in text, name
    return families


def metrics_with_observations() -> Metrics:
    metrics = Metrics(lambda: SCRAPED)
    metrics.call_ended("inbound", "ST_abc", 200)
    metrics.call_ended("inbound", "", 404)
    metrics.call_ended("outbound", "ST_out", 486)
    metrics.invite_trying.observe(0.0004)
    metrics.invite_answer.labels("inbound").observe(1.2)
    metrics.api_request("livekit.RoomService/ListRooms", 0.003)
    metrics.media_leg(jitter=0.004, lost=5, received=95)
    metrics.loop_lag.observe(0.002)
    return metrics


def test_every_existing_name_and_label_reads_back_as_before() -> None:
    got = metric_samples(metrics_with_observations().render().decode())
    assert got["sipbridge_api_requests_total"] == 3
    assert got["sipbridge_calls_stuck"] == 0
    assert got['sipbridge_sip_messages_total{kind="refused_flood"}'] == 4
    assert got['sipbridge_rtc_audio{counter="frames_in"}'] == 150
    assert got['sipbridge_media{counter="packets_in"}'] == 50
    assert got['sipbridge_outbound_total{outcome="failed_486"}'] == 1
    assert got['sipbridge_negotiation_refused_total{what="foreign_offer"}'] == 1
    assert got['sipbridge_registrations{state="registered"}'] == 1
    assert got['sipbridge_calls_total{code="200",direction="inbound",trunk="ST_abc"}'] == 1
    assert got['sipbridge_calls_total{code="404",direction="inbound",trunk="none"}'] == 1
    assert not any(key.endswith("_created") or "_created{" in key for key in got)


def test_the_parser_finds_help_type_and_the_histograms() -> None:
    text = metrics_with_observations().render().decode()
    families = histogram_families(text)
    assert families["sipbridge_calls"].type == "counter"
    assert families["sipbridge_sip_messages"].type == "counter"
    assert families["sipbridge_rooms"].type == "gauge"
    assert families["sipbridge_media"].type == "unknown"  # counters of several kinds
    assert families["sipbridge_rooms"].documentation == "Rooms open"
    assert families["sipbridge_something_new"].samples[0].labels == {"a": 'quote " and \\ back'}
    loss = {s.name: s.value for s in families["sipbridge_media_loss_ratio"].samples}
    assert loss["sipbridge_media_loss_ratio_sum"] == 0.05
    api = families["sipbridge_api_request_seconds"].samples
    assert {s.labels.get("method") for s in api} == {"livekit.RoomService/ListRooms"}


def test_a_leg_that_received_nothing_is_not_a_quality_sample() -> None:
    metrics = Metrics()
    metrics.media_leg(jitter=0.0, lost=0, received=0)
    got = metric_samples(metrics.render().decode())
    assert got["sipbridge_media_jitter_seconds_count"] == 0
    assert got["sipbridge_media_loss_ratio_count"] == 0


def test_label_values_are_bounded() -> None:
    label = BoundedLabel(limit=2)
    assert [label(v) for v in ("a", "b", "c", "a", "d")] == ["a", "b", "other", "a", "other"]
    assert [status_label(s) for s in (100, 200, 699, 99, 700, 0)] == [
        "100",
        "200",
        "699",
        "other",
        "other",
        "other",
    ]


def test_many_trunks_cannot_explode_the_series() -> None:
    metrics = Metrics()
    for n in range(1000):
        metrics.call_ended("inbound", f"ST_{n}", 200 + n)
    got = metric_samples(metrics.render().decode())
    calls = [key for key in got if key.startswith("sipbridge_calls_total{")]
    trunks = {key.split('trunk="')[1].split('"')[0] for key in calls}
    assert len(trunks) <= 201  # 200 distinct trunk ids, then "other"
    assert sum(got[key] for key in calls) == 1000


def test_registries_are_our_own() -> None:
    first, second = Metrics(), Metrics()  # (the global registry would refuse the second)
    first.call_ended("inbound", "ST_a", 200)
    assert "ST_a" not in second.render().decode()
