"""Make the spoken prompts in src/sipbridge/media/prompts/ with espeak-ng.

Run by a developer when a prompt's words change (the .raw files are committed and shipped):

    apt-get install -y --no-install-recommends espeak-ng
    .venv/bin/python scripts/make_prompts.py

Each prompt is synthesised to a WAV file, resampled to 8 kHz with soxr, trimmed of leading and
trailing silence (keeping a short margin), normalised to a fixed peak and written as mono 16-bit
little-endian raw PCM, the format `sipbridge.media.prompts.load_prompt` reads.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np
import soxr
from numpy.typing import NDArray

from sipbridge.media.prompts import PROMPT_RATE, PROMPTS

OUTPUT = Path(__file__).resolve().parents[1] / "src" / "sipbridge" / "media" / "prompts"
VOICE = "en-us"
WORDS_PER_MINUTE = 150
PEAK = 0.7 * 32767  # about -3 dBFS: loud, with headroom for G.711 and mixing
SILENCE = 0.02  # of full scale: quieter than this at either end is trimmed
MARGIN_S = 0.05  # silence kept before and after the speech
MAX_BYTES = 80_000


def spoken(text: str) -> str:
    """The text as espeak-ng should read it: it spells out "PIN" in capitals, says "pin"."""
    return re.sub(r"\bPIN\b", "pin", text)


def synthesise(text: str, workdir: Path) -> tuple[NDArray[np.float64], int]:
    """espeak-ng's rendering of `text` as float samples in [-1, 1] and its sample rate."""
    path = workdir / "prompt.wav"
    subprocess.run(
        ["espeak-ng", "-v", VOICE, "-s", str(WORDS_PER_MINUTE), "-w", str(path), spoken(text)],
        check=True,
    )
    with wave.open(str(path), "rb") as reader:
        if reader.getnchannels() != 1 or reader.getsampwidth() != 2:
            raise SystemExit(f"espeak-ng wrote an unexpected format: {reader.getparams()}")
        rate = reader.getframerate()
        samples = np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2")
    return samples.astype(np.float64) / 32768.0, rate


def to_prompt(samples: NDArray[np.float64], rate: int) -> NDArray[np.int16]:
    """Resample to PROMPT_RATE, trim the silent ends, normalise the peak, quantise."""
    resampled = np.asarray(soxr.resample(samples, rate, PROMPT_RATE, quality="VHQ"))
    loud = np.flatnonzero(np.abs(resampled) > SILENCE)
    if len(loud) == 0:
        raise SystemExit("espeak-ng produced silence")
    margin = round(MARGIN_S * PROMPT_RATE)
    start = max(int(loud[0]) - margin, 0)
    end = min(int(loud[-1]) + 1 + margin, len(resampled))
    trimmed = resampled[start:end]
    scaled = trimmed * (PEAK / np.max(np.abs(trimmed)))
    pcm: NDArray[np.int16] = np.clip(np.rint(scaled), -32768, 32767).astype(np.int16)
    return pcm


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=OUTPUT, help="directory for the .raw files")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in PROMPTS.items():
            pcm = to_prompt(*synthesise(text, Path(tmp)))
            data = pcm.astype("<i2").tobytes()
            if len(data) > MAX_BYTES:
                raise SystemExit(f"{name}: {len(data)} bytes, more than {MAX_BYTES}")
            target = args.output / f"{name}.raw"
            target.write_bytes(data)
            print(f"{target}: {len(pcm) / PROMPT_RATE:.2f} s, {len(data)} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
