"""Local audio for one leg, in 20 ms frames: players (a prompt, a tone) and the FIFO that turns
a producer's uneven chunks into frames of one size."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from mypy_extensions import mypyc_attr
from numpy.typing import NDArray

FRAME_MS = 20  # the frame of the shared clock, of mixing and of everything we make
Pcm = NDArray[np.int16]


class PcmFifo:
    """Samples queued between a producer of uneven chunks (a streaming resampler's output
    comes in bursts) and a 20 ms consumer. Nothing comes out until `prime` samples are queued,
    and again after it ran dry, so bursts never turn into gaps of silence mid-word."""

    __slots__ = ("buffer", "prime", "primed", "underruns")

    def __init__(self, prime: int = 0) -> None:
        self.buffer: Pcm = np.zeros(0, np.int16)
        self.prime = prime
        self.primed = prime == 0
        self.underruns = 0

    def push(self, pcm: Pcm) -> None:
        self.buffer = pcm if not len(self.buffer) else np.concatenate((self.buffer, pcm))

    def take(self, count: int) -> Pcm | None:
        if not self.primed:
            if len(self.buffer) < max(self.prime, count):
                return None
            self.primed = True
        if len(self.buffer) < count:
            self.underruns += 1
            self.primed = self.prime == 0
            if not self.primed:
                return None
            out = np.concatenate((self.buffer, np.zeros(count - len(self.buffer), np.int16)))
            self.buffer = self.buffer[:0]
            return out
        out = self.buffer[:count]
        self.buffer = self.buffer[count:]
        return out


@mypyc_attr(allow_interpreted_subclasses=True)  # subclassed outside the compiled packages
class Player:
    """Audio played to one leg: a prompt, a tone, in-band DTMF. `frame` returns None when done."""

    def frame(self, samples: int) -> Pcm | None:
        raise NotImplementedError


class PcmPlayer(Player):
    """Plays PCM already at the leg's rate, then calls `done` once."""

    def __init__(self, pcm: Pcm, done: Callable[[], None] | None = None) -> None:
        self.pcm = pcm
        self.position = 0
        self.done = done

    def frame(self, samples: int) -> Pcm | None:
        if self.position >= len(self.pcm):
            done, self.done = self.done, None
            if done is not None:
                done()
            return None
        chunk = self.pcm[self.position : self.position + samples]
        self.position += samples
        if len(chunk) < samples:
            chunk = np.concatenate((chunk, np.zeros(samples - len(chunk), np.int16)))
        return chunk
