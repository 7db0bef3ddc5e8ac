"""Connection quality of each participant from the loss, jitter and round-trip time of its media:
the `ConnectionQualityUpdate` clients show as signal bars. Sans-IO: counters and times in,
`ConnectionQualityChanged` events out.

Scored as LiveKit's server does (pkg/sfu/connectionquality/scorer.go), in our own terms: every
`UPDATE_INTERVAL` each media stream of a participant (what it sends us, what we send it) gives a
window - packets expected, lost, the jitter and the round-trip time - and a simplified E-model
scores it out of 100: the effective delay (half the RTT plus twice the jitter) costs 1 point per
40 ms up to 160 ms and 1 per 10 ms beyond, and each percent of loss costs `loss_weight` points
(8 for G.711, which has no redundancy; 8/1.5 for Opus with in-band FEC, as the SDKs negotiate
it). Scores move slowly up (40 % of the way) and quickly down (80 %), never below 30 while
packets flow. A participant's quality is its worst stream's: above 80 EXCELLENT, above 40 GOOD,
above 20 POOR, else LOST. Updates go out when a participant is new or its quality changed.

Where we differ, on purpose: LiveKit gives G.711 loss no weight at all (only Opus, RED and video
have one), which would call a phone losing 20 % of its packets EXCELLENT. A window without
packets keeps the score when the peer was heard from in it (a phone that suppresses silence,
a stream on hold), and is LOST when nothing at all came (LiveKit: POOR while "dry").
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

UPDATE_INTERVAL = 5.0  # s, LiveKit's connectionquality.UpdateInterval
MAX_SCORE = 100.0
MIN_SCORE = 30.0  # the floor while packets flow: recovery need not climb from 0
INCREASE_FACTOR = 0.4
DECREASE_FACTOR = 0.8
LOSS_WEIGHT_G711 = 8.0  # 2.5 % loss: GOOD; 7.5 %: POOR
LOSS_WEIGHT_OPUS_FEC = 8.0 / 1.5  # 3.75 % loss: GOOD; 11.25 %: POOR


class Quality(enum.IntEnum):
    """livekit `ConnectionQuality`, same values."""

    POOR = 0
    GOOD = 1
    EXCELLENT = 2
    LOST = 3


_WORSE_FIRST = (Quality.LOST, Quality.POOR, Quality.GOOD, Quality.EXCELLENT)
LOST_SCORE = 20.0
_GOOD_ABOVE, _POOR_ABOVE, _LOST_ABOVE = 80.0, 40.0, LOST_SCORE


def quality_of(score: float) -> Quality:
    if score > _GOOD_ABOVE:
        return Quality.EXCELLENT
    if score > _POOR_ABOVE:
        return Quality.GOOD
    if score > _LOST_ABOVE:
        return Quality.POOR
    return Quality.LOST


def mos_of(score: float) -> float:
    """A score as a mean opinion score, 1.0 .. 4.5 (the E-model's R to MOS, ITU-T G.107)."""
    if score <= 0.0:
        return 1.0
    if score >= MAX_SCORE:
        return 4.5
    return 1.0 + 0.035 * score + 0.000007 * score * (score - 60.0) * (100.0 - score)


@dataclass(frozen=True, kw_only=True, slots=True)
class StreamWindow:
    """What one media stream did over a window: packets expected and lost in it, the jitter
    (s) and round-trip time (s, None when unknown) at its end, and whether the peer was heard
    from at all in it (RTP or RTCP)."""

    packets: int
    lost: int
    jitter: float
    rtt: float | None = None
    heard: bool = True


def window_score(window: StreamWindow, loss_weight: float) -> float:
    """The simplified E-model score (0..100) of one window with packets in it."""
    delay_ms = (window.rtt or 0.0) * 1000 / 2 + window.jitter * 1000 * 2
    delay_effect = delay_ms / 40.0 if delay_ms <= 160.0 else (delay_ms - 120.0) / 10.0
    lost = max(0, min(window.lost, window.packets))
    loss_effect = lost * 100.0 / window.packets * loss_weight if window.packets else 0.0
    return max(0.0, MAX_SCORE - delay_effect - loss_effect)


class StreamScore:
    """The score of one media stream, window after window; cumulative counters in."""

    __slots__ = ("_expected", "_lost", "loss_weight", "score")

    def __init__(self, loss_weight: float) -> None:
        self.loss_weight = loss_weight
        self.score = MAX_SCORE
        self._expected = 0
        self._lost = 0

    def add(self, window: StreamWindow) -> float:
        """Score one window; the new score."""
        if window.packets <= 0:
            if not window.heard:
                self.score = LOST_SCORE
            return self.score
        target = window_score(window, self.loss_weight)
        factor = INCREASE_FACTOR if target >= self.score else DECREASE_FACTOR
        self.score = max(MIN_SCORE, factor * target + (1.0 - factor) * self.score)
        return self.score

    def add_totals(
        self,
        *,
        expected: int,
        lost: int,
        jitter: float,
        rtt: float | None = None,
        heard: bool = True,
    ) -> float:
        """Score the window since the previous totals: `expected` and `lost` packets are
        cumulative counts (RFC 3550 A.3), which may restart lower with a new source."""
        if expected < self._expected:
            self._expected = self._lost = 0  # a new source: counting starts again
        window = StreamWindow(
            packets=expected - self._expected,
            lost=lost - self._lost,
            jitter=jitter,
            rtt=rtt,
            heard=heard,
        )
        self._expected, self._lost = expected, lost
        return self.add(window)


@dataclass(frozen=True, kw_only=True, slots=True)
class ParticipantQuality:
    """One participant in a quality update (livekit `ConnectionQualityInfo`)."""

    sid: str
    quality: Quality
    score: float  # MOS, 1.0 .. 4.5


@dataclass(frozen=True, kw_only=True, slots=True)
class ConnectionQualityChanged:
    """The quality of every participant scored, sent when one is new or changed."""

    updates: tuple[ParticipantQuality, ...]


class ConnectionQualities:
    """The streams of a room's participants and their scores (key: participant sid, stream)."""

    def __init__(self) -> None:
        self.streams: dict[str, dict[str, StreamScore]] = {}
        self._sent: dict[str, Quality] = {}

    def stream(self, sid: str, name: str, loss_weight: float) -> StreamScore:
        """Participant `sid`'s stream `name` (created at its first window)."""
        streams = self.streams.setdefault(sid, {})
        score = streams.get(name)
        if score is None:
            score = streams[name] = StreamScore(loss_weight)
        score.loss_weight = loss_weight
        return score

    def keep_only(self, sid: str, names: Iterable[str]) -> None:
        """Participant `sid`'s streams are `names` now: the others are forgotten."""
        kept = set(names)
        streams = self.streams.get(sid, {})
        for name in [n for n in streams if n not in kept]:
            del streams[name]

    def remove(self, sid: str) -> None:
        """The participant left."""
        self.streams.pop(sid, None)
        self._sent.pop(sid, None)

    def quality(self, sid: str) -> ParticipantQuality:
        """The worst of the participant's streams (EXCELLENT with none)."""
        worst, worst_score = Quality.EXCELLENT, MAX_SCORE
        for stream in self.streams.get(sid, {}).values():
            quality = quality_of(stream.score)
            if _WORSE_FIRST.index(quality) < _WORSE_FIRST.index(worst) or (
                quality == worst and stream.score < worst_score
            ):
                worst, worst_score = quality, stream.score
        return ParticipantQuality(sid=sid, quality=worst, score=round(mos_of(worst_score), 2))

    def update(self, sids: Iterable[str]) -> ConnectionQualityChanged | None:
        """The update for participants `sids` (those active), after their windows were added:
        every one of them when one is new or changed quality, else None."""
        current = [self.quality(sid) for sid in sids]
        changed = any(self._sent.get(q.sid) != q.quality for q in current)
        self._sent = {q.sid: q.quality for q in current}
        if not changed:
            return None
        return ConnectionQualityChanged(updates=tuple(current))
