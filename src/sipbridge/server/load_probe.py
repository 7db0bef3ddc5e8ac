"""The event loop's lag and the process's CPU, measured for admission by load and `/metrics`.

One timer every 100 ms: how late it fires is the loop's lag (anything that held the loop - a
burst of call setups, a slow callback - shows here); once a second the CPU time over the wall time
since the last reading, in percent of one core: the event loop's thread's for the `LoadGate`
(telephony/load.py), which decides - the loop is the one core the server cannot exceed; the
compiled relay engine's thread (server/media/crelay.py) runs on another - and the whole
process's for the metrics.
"""

from __future__ import annotations

import asyncio
import time

from sipbridge.server.api.metrics import Metrics, Sample
from sipbridge.telephony.load import LoadGate

PROBE_INTERVAL_S = 0.1
CPU_INTERVAL_S = 1.0


class LoadProbe:
    """Feeds `gate` (and `metrics`) from a timer on the running loop; `start`, `stop`."""

    def __init__(self, gate: LoadGate, metrics: Metrics | None = None) -> None:
        self.gate = gate
        self.metrics = metrics
        self.cpu_percent = 0.0  # the last reading
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._cpu_at = (0.0, 0.0, 0.0)  # (wall, process CPU, the loop's CPU) at the last reading
        self.loop_cpu_percent = 0.0
        if metrics is not None:
            metrics.sources.append(self.samples)

    def overloaded(self) -> bool:
        """A new call arrives: refuse it for load? (Refusals are counted by reason.)"""
        return self.gate.admit(time.monotonic()) is not None

    def not_ready(self) -> str | None:
        """What `/healthz` says while calls are refused for load, or None."""
        reason = self.gate.refusal(time.monotonic())
        return None if reason is None else f"not ready: overloaded ({reason.replace('_', ' ')})"

    def samples(self) -> list[Sample]:
        out: list[Sample] = [
            ("sipbridge_load_refused_total", {"reason": reason}, n)
            for reason, n in sorted(self.gate.refused.items())
        ]
        out.append(("sipbridge_process_cpu_percent", {}, self.cpu_percent))
        return out

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._cpu_at = (time.monotonic(), time.process_time(), time.thread_time())
        self._schedule(self._loop.time())

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule(self, now: float) -> None:
        assert self._loop is not None
        self._due = now + PROBE_INTERVAL_S
        self._timer = self._loop.call_at(self._due, self._fire)

    def _fire(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        lag = now - self._due
        # The gate's clock is time.monotonic (the server asks it so); the loop's may not be.
        at = time.monotonic()
        self.gate.lag_sample(lag, at)
        if self.metrics is not None:
            self.metrics.loop_lag.observe(max(0.0, lag))
            self.metrics.loop_lag_max.set(self.gate.worst_lag(at))
        wall, cpu, loop_cpu = self._cpu_at
        if at - wall >= CPU_INTERVAL_S:
            used, loop_used = time.process_time(), time.thread_time()
            self.cpu_percent = 100.0 * (used - cpu) / (at - wall)
            self.loop_cpu_percent = 100.0 * (loop_used - loop_cpu) / (at - wall)
            self._cpu_at = (at, used, loop_used)
            self.gate.cpu_sample(self.loop_cpu_percent, at)
        self._schedule(now)
