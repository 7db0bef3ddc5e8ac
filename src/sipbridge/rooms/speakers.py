"""Who is speaking in a room, and how loud: the `SpeakersChanged` updates clients show as
"active speakers". Sans-IO: levels and times in, `SpeakersChanged` events out.

As LiveKit's server does (pkg/sfu/audio/audiolevel.go, pkg/rtc/room.go): each participant's
audio is observed as RFC 6464 levels (dBov, 0 loudest .. 127 silent) with the duration each
covers. Over every `update_interval` of audio, a participant counts as speaking when at least
`min_percentile` % of it was at or above `active_level` (-35 dBov); its level is then the
loudest level seen, lowered by how little of the window was speech, as a linear amplitude
(0..1), smoothed by an exponential moving average over `smooth_intervals`. A participant heard
of for two intervals is silent. Every update (each `update_interval`), the room's speakers are
sorted loudest first, levels rounded up to eighths so small changes send nothing, and when the
set or a level changed, one `SpeakersChanged` names every active speaker and every one that
stopped (level 0, not active).

LiveKit sends only the speakers that changed; the JavaScript SDK merges those into its list, but
the Rust core of the Python SDK takes each message's active speakers as the whole list
(rust-sdks `handle_speakers_changed`). Sending every active speaker whenever anything changed
is right for both.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

SILENT = 127
QUANTUM = 8  # levels are rounded up to 1/8: smaller changes are not worth an update


@dataclass(frozen=True, kw_only=True, slots=True)
class AudioLevelConfig:
    """When a participant counts as speaking (LiveKit's defaults, `audio` in its config)."""

    active_level: int = 35  # dBov: this loud or louder is speech (-35 dBov)
    min_percentile: int = 40  # % of an interval that must be speech
    update_interval: float = 0.4  # s: one window, and the cadence of updates
    smooth_intervals: int = 2  # EMA with the centre of mass of a 2-interval moving average

    @property
    def active_threshold(self) -> float:
        """The smallest linear level that is speech."""
        return amplitude(self.active_level)


DEFAULT_CONFIG = AudioLevelConfig()


def amplitude(dbov: float) -> float:
    """A level in dBov as a linear amplitude, 1.0 at 0 dBov."""
    return float(10.0 ** (-dbov / 20.0))


class AudioLevel:
    """The speech level of one participant over windows of `update_interval` of its audio."""

    __slots__ = (
        "_active_ms",
        "_interval_ms",
        "_last_observed",
        "_loudest",
        "_min_active_ms",
        "_observed_ms",
        "_smooth",
        "config",
        "smoothed",
    )

    def __init__(self, config: AudioLevelConfig = DEFAULT_CONFIG) -> None:
        self.config = config
        self._interval_ms = config.update_interval * 1000
        self._min_active_ms = config.min_percentile * self._interval_ms / 100
        self._smooth = 2.0 / (config.smooth_intervals + 1) if config.smooth_intervals else 1.0
        self.smoothed = 0.0
        self._last_observed: float | None = None
        self._reset(0.0)

    def _reset(self, smoothed: float) -> None:
        self.smoothed = smoothed
        self._loudest = SILENT
        self._active_ms = 0.0
        self._observed_ms = 0.0

    def observe(self, level: int, duration_ms: float, now: float) -> None:
        """`duration_ms` of audio at `level` dBov arrived at `now`."""
        self._last_observed = now
        self._observed_ms += duration_ms
        if level <= self.config.active_level:
            self._active_ms += duration_ms
            self._loudest = min(self._loudest, level)
        if self._observed_ms < self._interval_ms:
            return
        smoothed = 0.0  # too little speech in the window: silent at once
        if self._active_ms >= self._min_active_ms:
            # Speech through all the window adds nothing; through 40 % of it, 8 dB less.
            weight = 20.0 * math.log10(self._active_ms / self._interval_ms)
            linear = amplitude(self._loudest - weight)
            smoothed = self.smoothed + (linear - self.smoothed) * self._smooth
        self._reset(smoothed)

    def level(self, now: float) -> tuple[float, bool]:
        """(linear level 0..1, speaking) at `now`; silent when nothing came for two intervals."""
        last = self._last_observed
        if last is None or now - last >= 2 * self.config.update_interval:
            self._reset(0.0)
        return self.smoothed, self.smoothed >= self.config.active_threshold


@dataclass(frozen=True, kw_only=True, slots=True)
class Speaker:
    """One participant in a speaker update (livekit `SpeakerInfo`)."""

    sid: str
    level: float  # 0..1, in steps of 1/QUANTUM
    active: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class SpeakersChanged:
    """The active speakers, loudest first, then those who stopped speaking (level 0)."""

    speakers: tuple[Speaker, ...]


class ActiveSpeakers:
    """The speakers of one room: levels observed per participant sid, updates when they change."""

    def __init__(self, config: AudioLevelConfig = DEFAULT_CONFIG) -> None:
        self.config = config
        self.levels: dict[str, AudioLevel] = {}
        self._sent: dict[str, float] = {}  # sid -> level in the last update, of active ones

    def observe(self, sid: str, observations: Iterable[tuple[int, float]], now: float) -> None:
        """Levels of participant `sid`'s audio that arrived by `now`: (dBov, duration ms)."""
        meter = self.levels.get(sid)
        if meter is None:
            meter = self.levels[sid] = AudioLevel(self.config)
        for level, duration_ms in observations:
            meter.observe(level, duration_ms, now)

    def remove(self, sid: str) -> None:
        """The participant left (or has no audio any more): the next update says it stopped."""
        self.levels.pop(sid, None)

    def speakers(self, now: float) -> list[Speaker]:
        """The active speakers at `now`, loudest first (ties by sid), levels quantized."""
        found = []
        for sid, meter in self.levels.items():
            level, active = meter.level(now)
            if active:
                found.append((level, sid))
        found.sort(key=lambda item: (-item[0], item[1]))
        return [
            Speaker(sid=sid, level=math.ceil(level * QUANTUM) / QUANTUM, active=True)
            for level, sid in found
        ]

    def update(self, now: float) -> SpeakersChanged | None:
        """The room's update at `now` (call every `update_interval`): None when nothing changed."""
        active = self.speakers(now)
        current = {speaker.sid: speaker.level for speaker in active}
        stopped = [sid for sid in self._sent if sid not in current]
        if current == self._sent:
            return None
        self._sent = current
        quiet = tuple(Speaker(sid=sid, level=0.0, active=False) for sid in stopped)
        return SpeakersChanged(speakers=(*active, *quiet))
