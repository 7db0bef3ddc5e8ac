"""Active speakers: levels in, `SpeakersChanged` out, on fake time (rooms/speakers.py)."""

from __future__ import annotations

import pytest

from sipbridge.rooms.speakers import (
    DEFAULT_CONFIG,
    ActiveSpeakers,
    AudioLevel,
    AudioLevelConfig,
    Speaker,
    amplitude,
)

FRAME_MS = 20.0
TICK = DEFAULT_CONFIG.update_interval


def talk(meter: AudioLevel, levels: list[int], start: float) -> float:
    """20 ms frames at `levels`, one after the other from `start`; the time after the last."""
    now = start
    for level in levels:
        now += FRAME_MS / 1000
        meter.observe(level, FRAME_MS, now)
    return now


def test_speech_through_a_whole_window_is_its_loudest_level_smoothed() -> None:
    meter = AudioLevel()
    now = talk(meter, [20] * 20, 0.0)  # 400 ms at -20 dBov
    level, active = meter.level(now)
    # EMA with factor 2/3 from 0: two thirds of -20 dBov's amplitude
    assert level == pytest.approx(amplitude(20) * 2 / 3)
    assert active
    now = talk(meter, [20] * 20, now)
    assert meter.level(now)[0] == pytest.approx(amplitude(20) * (2 / 3 + 2 / 9))


def test_too_little_speech_in_a_window_is_silence_at_once() -> None:
    meter = AudioLevel()
    now = talk(meter, [20] * 20, 0.0)
    assert meter.level(now)[1]
    # 7 of 20 frames (35 %) loud: below the 40 % needed
    now = talk(meter, [20] * 7 + [90] * 13, now)
    assert meter.level(now) == (0.0, False)


def test_part_speech_counts_less_by_how_little_of_the_window_it_filled() -> None:
    meter = AudioLevel()
    now = talk(meter, [20] * 10 + [127] * 10, 0.0)  # half the window at -20 dBov
    level, active = meter.level(now)
    assert level == pytest.approx(amplitude(20 + 6.0206) * 2 / 3, rel=1e-3)
    assert active


def test_quiet_audio_is_not_speech() -> None:
    meter = AudioLevel()
    now = talk(meter, [40] * 40, 0.0)  # -40 dBov: below the -35 dBov threshold
    assert meter.level(now) == (0.0, False)


def test_a_participant_not_heard_of_for_two_intervals_is_silent() -> None:
    meter = AudioLevel()
    now = talk(meter, [10] * 20, 0.0)
    assert meter.level(now + 2 * TICK - 0.01)[1]
    assert meter.level(now + 2 * TICK) == (0.0, False)
    assert meter.level(now + 5) == (0.0, False)
    assert AudioLevel().level(0.0) == (0.0, False)  # never heard


def test_no_smoothing_takes_each_window_as_it_is() -> None:
    meter = AudioLevel(AudioLevelConfig(smooth_intervals=0))
    now = talk(meter, [20] * 20, 0.0)
    assert meter.level(now)[0] == pytest.approx(amplitude(20))


def test_updates_name_the_speakers_loudest_first_and_then_who_stopped() -> None:
    speakers = ActiveSpeakers()
    now = 0.0
    assert speakers.update(now) is None  # nobody yet
    speakers.observe("PA_phone", [(12, FRAME_MS)] * 20, now + TICK)
    speakers.observe("PA_agent", [(30, FRAME_MS)] * 20, now + TICK)
    speakers.observe("PA_quiet", [(127, FRAME_MS)] * 20, now + TICK)
    now += TICK
    update = speakers.update(now)
    assert update is not None
    assert [s.sid for s in update.speakers] == ["PA_phone", "PA_agent"]
    assert all(s.active for s in update.speakers)
    # quantized up to eighths, so small changes make no update
    assert update.speakers[0].level == 0.25  # 0.251 * 2/3 = 0.167 -> 0.25
    assert update.speakers[1].level == 0.125
    # the same levels again: both smoothed levels rise, but within their eighths
    speakers.observe("PA_phone", [(12, FRAME_MS)] * 20, now + TICK)
    speakers.observe("PA_agent", [(30, FRAME_MS)] * 20, now + TICK)
    now += TICK
    assert speakers.update(now) is None
    # the phone stops: after two intervals without audio it is named as stopped
    for _ in range(3):
        speakers.observe("PA_agent", [(30, FRAME_MS)] * 20, now + TICK)
        now += TICK
        update = speakers.update(now)
        if update is not None and any(not s.active for s in update.speakers):
            break
    assert update is not None
    assert update.speakers == (
        Speaker(sid="PA_agent", level=0.125, active=True),
        Speaker(sid="PA_phone", level=0.0, active=False),
    )
    # nothing changed: no update
    speakers.observe("PA_agent", [(30, FRAME_MS)] * 20, now + TICK)
    now += TICK
    assert speakers.update(now) is None


def test_a_steady_speaker_makes_no_update_once_its_level_settled() -> None:
    speakers = ActiveSpeakers()
    now, sent = 0.0, []
    for _ in range(20):
        speakers.observe("PA_a", [(15, FRAME_MS)] * 20, now + TICK)
        now += TICK
        update = speakers.update(now)
        if update is not None:
            sent.append(update)
    assert 1 <= len(sent) <= 3  # the EMA climbs through an eighth or two, then nothing
    assert sent[-1].speakers[-1].level == pytest.approx(0.25)


def test_a_participant_who_leaves_while_speaking_is_named_as_stopped() -> None:
    speakers = ActiveSpeakers()
    speakers.observe("PA_a", [(15, FRAME_MS)] * 20, TICK)
    assert speakers.update(TICK) is not None
    speakers.remove("PA_a")
    speakers.remove("PA_never")
    update = speakers.update(2 * TICK)
    assert update is not None
    assert update.speakers == (Speaker(sid="PA_a", level=0.0, active=False),)
    assert speakers.update(3 * TICK) is None


def test_ties_are_ordered_by_sid_for_stable_updates() -> None:
    speakers = ActiveSpeakers()
    for sid in ("PA_b", "PA_a"):
        speakers.observe(sid, [(15, FRAME_MS)] * 20, TICK)
    assert [s.sid for s in speakers.speakers(TICK)] == ["PA_a", "PA_b"]
