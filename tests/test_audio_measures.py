"""The audio measures the interop tests judge calls by: they must tell a call that carried the
signal from one that did not, and survive the jitter-buffer shifts a real receiver makes."""

from __future__ import annotations

import numpy as np

from tests.audio import best_correlation, distinct_signal, windows_heard

RATE = 8000


def _delayed(pcm: np.ndarray, seconds: float) -> np.ndarray:
    return np.concatenate([np.zeros(int(seconds * RATE)), pcm])


def test_a_delayed_copy_is_heard_whole() -> None:
    sent = distinct_signal("a", RATE, 3.0, pad_s=0.5)
    assert windows_heard(sent, _delayed(sent * 0.5, 0.3), RATE) == 1.0
    coefficient, lag = best_correlation(sent, _delayed(sent, 0.3), RATE)
    assert coefficient > 0.999
    assert lag == 0.3


def test_one_time_shift_mid_call_costs_one_window_not_half_the_signal() -> None:
    sent = distinct_signal("a", RATE, 3.0, pad_s=0.5)
    heard = _delayed(sent, 0.3)
    cut = int(1.5 * RATE)
    shifted = np.concatenate([heard[:cut], np.zeros(int(0.06 * RATE)), heard[cut:]])
    coefficient, _ = best_correlation(sent, shifted, RATE)
    assert coefficient < 0.9  # what a single lag makes of it
    assert windows_heard(sent, shifted, RATE) >= 0.9


def test_another_signal_noise_or_silence_is_not_heard() -> None:
    sent = distinct_signal("a", RATE, 3.0)
    rng = np.random.default_rng(7)
    assert windows_heard(sent, distinct_signal("b", RATE, 3.0), RATE) == 0.0
    assert windows_heard(sent, rng.normal(0.0, 0.2, 4 * RATE), RATE) == 0.0
    assert windows_heard(sent, np.zeros(4 * RATE), RATE) == 0.0
    # the signal buried in noise louder than itself is not a call anyone would call heard
    assert windows_heard(sent, sent + rng.normal(0.0, 0.3, len(sent)), RATE) < 0.5


def test_a_quieter_copy_is_heard_from_its_first_window() -> None:
    """A receiver that plays the signal 6 dB down (an upmix, a gain stage) makes its soft onset
    fall under the silence threshold: the recording's leading silence then ends a block later than
    the reference's, and the first window must still be found whole (it once was not: the
    recording was trimmed to its first loud block, which cut the window's start off)."""
    rng = np.random.default_rng(3)
    onset = rng.normal(0.0, 0.0015, int(0.03 * RATE))  # a soft start, just above the threshold
    sent = np.concatenate([onset, distinct_signal("a", RATE, 3.0, pad_s=0.5)])
    assert windows_heard(sent, _delayed(sent * 0.5, 0.3), RATE) == 1.0
