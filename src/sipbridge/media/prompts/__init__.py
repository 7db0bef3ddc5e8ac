"""Spoken prompts shipped with the package: 8 kHz mono 16-bit little-endian raw PCM.

The files are made by ``scripts/make_prompts.py`` (espeak-ng, resampled with soxr, trimmed and
normalised) and read here as package data; nothing is synthesised while the server runs.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

import numpy as np
from numpy.typing import NDArray

__all__ = ["PROMPTS", "PROMPT_RATE", "load_prompt"]

PROMPT_RATE = 8000
"""Sample rate of every prompt, in Hz."""

PROMPTS = {
    "enter_pin": "Please enter the PIN, then press the pound key.",
    "wrong_pin": "That PIN is not correct. Goodbye.",
}
"""Each prompt's name and the words it says."""


@cache
def load_prompt(name: str) -> NDArray[np.int16]:
    """The samples of prompt `name` (a key of `PROMPTS`) at `PROMPT_RATE`, read-only.

    Raises KeyError for an unknown name.
    """
    if name not in PROMPTS:
        raise KeyError(f"no prompt named {name!r}; known: {', '.join(sorted(PROMPTS))}")
    data = resources.files(__name__).joinpath(f"{name}.raw").read_bytes()
    samples = np.frombuffer(data, dtype="<i2").astype(np.int16)
    samples.flags.writeable = False  # shared by every caller through the cache
    return samples
