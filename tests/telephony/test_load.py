"""Admission by load on fake time: refused while the loop lags or CPU is high, ready again after."""

from __future__ import annotations

import pytest

from sipbridge.telephony.load import LoadGate, LoadLimits


def test_an_idle_node_admits_calls() -> None:
    gate = LoadGate()
    assert gate.admit(0.0) is None
    gate.lag_sample(0.002, 1.0)
    gate.cpu_sample(12.0, 1.0)
    assert gate.admit(1.5) is None
    assert gate.refused == {}


def test_loop_lag_refuses_for_a_window_then_admits_again() -> None:
    gate = LoadGate(LoadLimits(max_lag=0.1, window=1.0))
    gate.lag_sample(0.9, 10.0)  # the loop was held most of a second
    for t in (10.0, 10.5, 11.0):
        assert gate.admit(t) == "loop_lag"
    gate.lag_sample(0.001, 11.01)
    assert gate.lag(11.01) == 0.001
    assert gate.admit(11.01) is None  # the slow sample is older than the window
    assert gate.refused == {"loop_lag": 3}


def test_one_slow_turn_among_quick_ones_is_not_overload() -> None:
    gate = LoadGate(LoadLimits(max_lag=0.1, window=1.0))
    for n in range(9):
        gate.lag_sample(0.002, n / 10)
    gate.lag_sample(0.15, 0.9)  # a collection, a burst of setups
    assert gate.worst_lag(0.9) == 0.15
    assert gate.refusal(0.9) is None


def test_every_turn_late_is_overload() -> None:
    gate = LoadGate(LoadLimits(max_lag=0.1, window=1.0))
    for n in range(5):
        gate.lag_sample(0.12, n * 0.22)
    assert gate.refusal(0.9) == "loop_lag"
    for n in range(5, 10):
        gate.lag_sample(0.01, n * 0.22)  # load falls
    assert gate.refusal(2.0) is None


def test_lag_at_the_limit_is_admitted() -> None:
    gate = LoadGate(LoadLimits(max_lag=0.1))
    gate.lag_sample(0.1, 0.0)
    assert gate.refusal(0.0) is None
    gate.lag_sample(0.1001, 0.1)
    assert gate.refusal(0.1) == "loop_lag"


def test_cpu_over_the_limit_refuses_until_a_sample_below_it() -> None:
    gate = LoadGate(LoadLimits(max_cpu=90.0, window=1.0))
    gate.cpu_sample(95.0, 1.0)
    assert gate.admit(1.0) == "cpu"
    assert gate.admit(2.5) == "cpu"  # the probe's next sample is late: the last one stands
    gate.cpu_sample(40.0, 2.6)
    assert gate.admit(2.6) is None
    assert gate.refused == {"cpu": 2}


def test_a_cpu_sample_stands_for_two_windows_at_most() -> None:
    gate = LoadGate(LoadLimits(max_cpu=50.0, window=1.0))
    gate.cpu_sample(99.0, 0.0)
    assert gate.cpu(2.0) == 99.0
    assert gate.cpu(2.01) == 0.0  # no probe for two windows: nothing to go on
    assert gate.refusal(2.01) is None


def test_cpu_is_reported_before_lag_and_both_can_refuse() -> None:
    gate = LoadGate(LoadLimits(max_cpu=1.0, max_lag=0.05))
    gate.lag_sample(0.2, 0.0)
    gate.cpu_sample(3.0, 0.0)
    assert gate.refusal(0.0) == "cpu"
    gate.cpu_sample(0.5, 0.5)
    assert gate.refusal(0.5) == "loop_lag"


def test_negative_samples_count_as_zero() -> None:
    gate = LoadGate()
    gate.lag_sample(-0.5, 0.0)  # a timer that fired early
    gate.cpu_sample(-1.0, 0.0)
    assert gate.lag(0.0) == gate.worst_lag(0.0) == 0.0
    assert gate.cpu(0.0) == 0.0


def test_a_zero_limit_refuses_any_load() -> None:
    gate = LoadGate(LoadLimits(max_cpu=0.0))
    gate.cpu_sample(0.01, 0.0)
    assert gate.refusal(0.0) == "cpu"


@pytest.mark.parametrize("limits", [{"max_cpu": -1.0}, {"max_lag": -0.1}, {"window": 0.0}], ids=str)
def test_absurd_limits_are_refused(limits: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        LoadLimits(**limits)
