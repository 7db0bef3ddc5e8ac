"""Admission by load, sans-IO: should this node take a new call now?

Beyond `--max-calls`, a node that is already slow makes every call on it worse: a lagging event
loop delays the media clock, the SIP retransmissions and the BYEs of the calls it has. So, as
LiveKit's SIP service does above 90% CPU, new calls are refused (503 with Retry-After, RFC 3261
s21.5.4) while the event loop lags or the process's CPU passes `--max-cpu`, and `/healthz` says
"not ready" so that a load balancer sends them elsewhere.

`LoadGate` takes samples - the event loop's lag (how late a timer fired) and the process's CPU
use over an interval - each with the time it was taken, and answers `refusal(now)`: the reason to
refuse, or None. The loop lags when its mean lag over the last `window` (a second) passes
`max_lag`: a loop held 150 ms once in a second of 10 ms turns is not overloaded (a collection, a
burst of call setups: nothing a caller would notice), one late by 100 ms on every turn, or held for
most of the second, is. The node is ready again as soon as the window's samples fall below the
limits. The asyncio side (server/load_probe.py) takes the samples; tests pass `now`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

DEFAULT_MAX_CPU = 90.0  # percent of one core: LiveKit's SIP service refuses calls above 90%
DEFAULT_MAX_LAG = 0.1  # seconds: a timer 100 ms late delays five 20 ms audio frames
DEFAULT_WINDOW = 1.0  # seconds a sample counts for


@dataclass(frozen=True, kw_only=True, slots=True)
class LoadLimits:
    """Above these, new calls are refused: `max_cpu` percent of one core (the process's CPU
    time over wall time), `max_lag` seconds of event loop lag (the mean over the last
    `window`)."""

    max_cpu: float = DEFAULT_MAX_CPU
    max_lag: float = DEFAULT_MAX_LAG
    window: float = DEFAULT_WINDOW

    def __post_init__(self) -> None:
        if self.max_cpu < 0 or self.max_lag < 0 or self.window <= 0:
            raise ValueError("load limits must be positive")


class LoadGate:
    """Recent load samples and the decision they lead to (see the module doc)."""

    def __init__(self, limits: LoadLimits | None = None) -> None:
        self.limits = limits or LoadLimits()
        self._lag: deque[tuple[float, float]] = deque()  # (at, seconds), oldest first
        self._cpu: deque[tuple[float, float]] = deque()  # (at, percent of one core)
        self.refused: dict[str, int] = {}  # calls refused, by reason ("cpu", "loop_lag")

    def lag_sample(self, seconds: float, now: float) -> None:
        """A timer of the event loop fired `seconds` late, at `now`."""
        self._lag.append((now, max(0.0, seconds)))
        self._expire(now)

    def cpu_sample(self, percent: float, now: float) -> None:
        """The process used `percent` of one core over the interval ending at `now`."""
        self._cpu.append((now, max(0.0, percent)))
        self._expire(now)

    def lag(self, now: float) -> float:
        """The mean lag over the window (0 with no sample)."""
        self._expire(now)
        return sum(value for _, value in self._lag) / len(self._lag) if self._lag else 0.0

    def worst_lag(self, now: float) -> float:
        """The worst lag over the window (0 with no sample)."""
        self._expire(now)
        return max((value for _, value in self._lag), default=0.0)

    def cpu(self, now: float) -> float:
        """The latest CPU sample, while it stands (0 with none)."""
        self._expire(now)
        return self._cpu[-1][1] if self._cpu else 0.0

    def refusal(self, now: float) -> str | None:
        """Why a new call should be refused now ("cpu" or "loop_lag"), or None to admit it."""
        if self.cpu(now) > self.limits.max_cpu:
            return "cpu"
        if self.lag(now) > self.limits.max_lag:
            return "loop_lag"
        return None

    def admit(self, now: float) -> str | None:
        """`refusal(now)`, counting a refusal in `refused`: for a call that arrives."""
        reason = self.refusal(now)
        if reason is not None:
            self.refused[reason] = self.refused.get(reason, 0) + 1
        return reason

    def _expire(self, now: float) -> None:
        # A CPU sample covers the interval before it: it stands until the next one is due (two
        # windows, so that a probe a little late never leaves a gap that admits calls).
        for samples, kept in ((self._lag, self.limits.window), (self._cpu, 2 * self.limits.window)):
            while samples and samples[0][0] < now - kept:
                samples.popleft()
