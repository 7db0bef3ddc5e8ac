"""Connection quality: stream windows in, `ConnectionQualityChanged` out (rooms/quality.py)."""

from __future__ import annotations

import pytest

from sipbridge.rooms.quality import (
    LOSS_WEIGHT_G711,
    LOSS_WEIGHT_OPUS_FEC,
    MIN_SCORE,
    ConnectionQualities,
    ParticipantQuality,
    Quality,
    StreamScore,
    StreamWindow,
    mos_of,
    quality_of,
    window_score,
)

PACKETS = 250  # 5 s of 20 ms packets


def clean(**changes: object) -> StreamWindow:
    fields: dict[str, object] = {"packets": PACKETS, "lost": 0, "jitter": 0.002, "rtt": 0.02}
    fields.update(changes)
    return StreamWindow(**fields)  # type: ignore[arg-type]


def test_a_clean_lan_call_scores_near_100() -> None:
    score = window_score(clean(), LOSS_WEIGHT_G711)
    assert score == pytest.approx(100 - (10 + 4) / 40)
    assert quality_of(score) is Quality.EXCELLENT


@pytest.mark.parametrize(
    ("lost_pct", "expected"),
    [(0, Quality.EXCELLENT), (2, Quality.EXCELLENT), (3, Quality.GOOD), (7, Quality.GOOD),
     (8, Quality.POOR), (12, Quality.LOST)],
)  # fmt: skip
def test_g711_loss_thresholds(lost_pct: int, expected: Quality) -> None:
    window = StreamWindow(packets=1000, lost=lost_pct * 10, jitter=0.0, rtt=None)
    assert quality_of(window_score(window, LOSS_WEIGHT_G711)) is expected


def test_opus_with_fec_tolerates_more_loss() -> None:
    window = StreamWindow(packets=1000, lost=30, jitter=0.0)
    assert quality_of(window_score(window, LOSS_WEIGHT_G711)) is Quality.GOOD
    assert quality_of(window_score(window, LOSS_WEIGHT_OPUS_FEC)) is Quality.EXCELLENT


def test_delay_costs_little_up_to_160_ms_and_much_beyond() -> None:
    # RTT 300 ms and jitter 5 ms: 160 ms effective, 4 points
    assert window_score(clean(rtt=0.3, jitter=0.005), 8) == pytest.approx(96)
    # RTT 600 ms and jitter 20 ms: 340 ms effective -> (340 - 120) / 10 = 22 points
    assert window_score(clean(rtt=0.6, jitter=0.02), 8) == pytest.approx(78)
    assert quality_of(window_score(clean(rtt=2.0, jitter=0.1), 8)) is Quality.LOST
    assert window_score(clean(rtt=20.0), 8) == 0.0


def test_scores_fall_fast_and_recover_slowly_with_a_floor() -> None:
    stream = StreamScore(LOSS_WEIGHT_G711)
    assert stream.add(clean(lost=PACKETS // 10)) == pytest.approx(0.8 * 19.675 + 0.2 * 100, 0.01)
    for _ in range(3):
        stream.add(clean(lost=PACKETS // 2))
    assert stream.score == MIN_SCORE  # never below 30 while packets flow
    scores = [stream.add(clean()) for _ in range(4)]
    assert scores == sorted(scores)  # 40 % of the way up per window
    assert [quality_of(s) for s in scores] == [Quality.GOOD] * 2 + [Quality.EXCELLENT] * 2


def test_a_window_without_packets_keeps_the_score_unless_nothing_came_at_all() -> None:
    stream = StreamScore(LOSS_WEIGHT_G711)
    stream.add(clean(lost=25))
    before = stream.score
    assert stream.add(StreamWindow(packets=0, lost=0, jitter=0.0, heard=True)) == before
    assert stream.add(StreamWindow(packets=0, lost=0, jitter=0.0, heard=False)) == 20.0
    assert quality_of(stream.score) is Quality.LOST


def test_cumulative_counters_become_windows_and_a_new_source_restarts_them() -> None:
    stream = StreamScore(LOSS_WEIGHT_G711)
    assert stream.add_totals(expected=250, lost=0, jitter=0.001) > 99
    # 250 more expected, 50 of them lost (20 %): the window's loss, not the total's
    assert quality_of(stream.add_totals(expected=500, lost=50, jitter=0.001)) is Quality.POOR
    stream2 = StreamScore(LOSS_WEIGHT_G711)
    stream2.add_totals(expected=1000, lost=0, jitter=0.0)
    # the counters restarted lower (a new SSRC): this window is counted from zero
    stream2.add_totals(expected=100, lost=0, jitter=0.0)
    assert stream2.score > 99
    # duplicates can make the window's loss negative: no loss
    assert stream2.add_totals(expected=200, lost=-5, jitter=0.0) > 99


def test_mos_spans_1_to_4_5() -> None:
    assert mos_of(-5) == 1.0 and mos_of(0) == 1.0
    assert mos_of(100) == 4.5 and mos_of(120) == 4.5
    assert mos_of(80) == pytest.approx(1 + 2.8 + 0.000007 * 80 * 20 * 20)


def test_the_room_sends_every_participant_when_one_is_new_or_changed() -> None:
    room = ConnectionQualities()
    room.stream("PA_phone", "up", LOSS_WEIGHT_G711).add(clean())
    room.stream("PA_phone", "down", LOSS_WEIGHT_G711).add(clean())
    room.stream("PA_agent", "up", LOSS_WEIGHT_OPUS_FEC).add(clean())
    update = room.update(["PA_phone", "PA_agent"])
    assert update is not None
    assert [(q.sid, q.quality) for q in update.updates] == [
        ("PA_phone", Quality.EXCELLENT),
        ("PA_agent", Quality.EXCELLENT),
    ]
    assert all(4.3 < q.score <= 4.5 for q in update.updates)
    assert room.update(["PA_phone", "PA_agent"]) is None  # nothing changed
    # the phone's downstream loses 20 %: its worst stream is its quality
    room.stream("PA_phone", "down", LOSS_WEIGHT_G711).add(clean(lost=PACKETS // 5))
    update = room.update(["PA_phone", "PA_agent"])
    assert update is not None
    phone = update.updates[0]
    assert phone.quality is Quality.POOR and phone.score < 2.5
    # a new participant: everyone again
    update = room.update(["PA_phone", "PA_agent", "PA_new"])
    assert update is not None
    assert update.updates[-1] == ParticipantQuality(
        sid="PA_new", quality=Quality.EXCELLENT, score=4.5
    )
    # the lossy stream ends (its track went): the phone is EXCELLENT again
    room.keep_only("PA_phone", ["up"])
    update = room.update(["PA_phone", "PA_agent", "PA_new"])
    assert update is not None and update.updates[0].quality is Quality.EXCELLENT
    room.remove("PA_new")
    assert room.update(["PA_phone", "PA_agent"]) is None
    assert set(room.streams) == {"PA_phone", "PA_agent"}


def test_worst_stream_ties_take_the_lower_score() -> None:
    room = ConnectionQualities()
    room.stream("PA_a", "one", 8).add(clean(lost=10))
    room.stream("PA_a", "two", 8).add(clean(lost=11))
    worst = room.quality("PA_a")
    assert worst.quality is Quality.GOOD
    assert worst.score == round(mos_of(room.streams["PA_a"]["two"].score), 2)
