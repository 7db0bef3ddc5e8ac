"""Recording files (`server/recording/writer.py`): a recorder in a room's mix writes what the room
says, in every format, closes the file playable, and fails with the reason on a slow disk."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import av
import numpy as np
import pytest

from sipbridge.media import codecs
from sipbridge.media.room_audio import AudioLeg, RoomAudio
from sipbridge.rooms.egress import FORMATS, MP4, OGG, WAV, FileFormat
from sipbridge.server.recording.writer import (
    FRAME,
    RATE,
    EncoderProcess,
    FileWriter,
    RecorderLeg,
    StereoRecorderLeg,
)
from tests.audio import distinct_signal, windows_heard


@pytest.fixture
async def encoder() -> AsyncIterator[EncoderProcess]:
    """The recordings' encoder process, ended after the test."""
    process = EncoderProcess()
    process.ensure()
    yield process
    await process.close()
    assert process.proc is None


class Clock:
    def add(self, room: RoomAudio) -> None:
        pass

    def discard(self, room: RoomAudio) -> None:
        pass


class Talker(AudioLeg):
    """A source playing `signal` (at 8 kHz) one 20 ms frame per pull."""

    def __init__(self, signal: np.ndarray) -> None:
        super().__init__(codecs.PCMU_SPEC)
        self.sending = False
        self.signal = signal
        self.at = 0

    def pull(self, now: float) -> np.ndarray | None:
        frame = self.signal[self.at : self.at + 160]
        self.at += 160
        return frame if len(frame) == 160 else None


def decode(path: Path) -> tuple[np.ndarray, int]:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(stream)])
        return pcm.astype(np.float64) / (32768 if pcm.dtype == np.int16 else 1), stream.rate


def signal_8k(seconds: float) -> np.ndarray:
    rng = np.random.default_rng(7)
    t = np.arange(int(8000 * seconds)) / 8000
    tone = np.sin(2 * np.pi * (300 + 2000 * rng.random()) * t)
    noise = np.convolve(rng.standard_normal(len(t)), np.ones(4) / 4, "same")
    return ((0.3 * tone + 0.2 * noise) * 12000).astype(np.int16)


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.container)
async def test_a_recorder_in_the_room_writes_what_the_room_says(
    tmp_path: Path, encoder: EncoderProcess, fmt: FileFormat
) -> None:
    opened: list[bool] = []
    path = tmp_path / "deep" / f"call{fmt.extension}"
    writer = FileWriter(str(path), fmt, on_opened=lambda: opened.append(True), encoder=encoder)
    room = RoomAudio("r", Clock())
    signal = signal_8k(2.0)
    talker = Talker(signal)
    room.add(talker)
    recorder = RecorderLeg(writer)
    room.add(recorder)
    writer.start()
    for tick in range(100 + 10):  # 2 s of signal, then silence
        room.tick(tick * 0.02)
    # mixed at the phone's 8 kHz, as it is: the encoder converts it to the file's 48 kHz
    assert recorder.spec.sample_rate == 8000
    writer.finish()
    result = await writer.done
    assert opened == [True]
    assert result.error == ""
    assert result.samples == 110 * FRAME
    assert result.size == path.stat().st_size > 1000
    recorded, rate = decode(path)
    assert rate == RATE
    assert abs(len(recorded) / rate - 2.2) < 0.1  # encoder padding at most
    assert windows_heard(signal / 32768, recorded, 8000, recorded_rate=rate) >= 0.9


async def test_a_track_recorder_hears_its_track_only(
    tmp_path: Path, encoder: EncoderProcess
) -> None:
    path = tmp_path / "track.ogg"
    writer = FileWriter(str(path), OGG, on_opened=lambda: None, encoder=encoder)
    room = RoomAudio("r", Clock())
    mine, other = Talker(signal_8k(1.0)), Talker(np.full(8000, 9000, np.int16))
    room.add(mine)
    room.add(other)
    room.add(RecorderLeg(writer, hears=mine))
    writer.start()
    for tick in range(50):
        room.tick(tick * 0.02)
    writer.finish()
    assert (await writer.done).error == ""
    recorded, rate = decode(path)
    assert windows_heard(mine.signal / 32768, recorded, 8000, recorded_rate=rate) >= 0.9


async def test_a_slow_disk_fails_the_recording_with_the_reason_and_a_closed_file(
    tmp_path: Path,
    encoder: EncoderProcess,
) -> None:
    path = tmp_path / "slow.mp4"
    writer = FileWriter(str(path), MP4, on_opened=lambda: None, max_queued_s=0.1, encoder=encoder)
    for _ in range(50):  # not even started: nothing drains the queue
        writer.push(None)
    assert writer.closing
    result = await writer.done  # failed at once, not when the encoder gets to it
    assert "too slow" in result.error
    assert result.samples == 0
    writer.start()
    await encoder.close()  # the encoder still closes the file, with what was queued in it
    assert decode(path)[0].size >= 5 * FRAME


async def test_a_file_that_cannot_be_created_fails_the_recording(
    tmp_path: Path, encoder: EncoderProcess
) -> None:
    (tmp_path / "taken.ogg").write_bytes(b"")
    writer = FileWriter(str(tmp_path / "taken.ogg"), OGG, on_opened=lambda: None, encoder=encoder)
    writer.start()
    result = await writer.done
    assert "cannot create" in result.error
    assert (tmp_path / "taken.ogg").read_bytes() == b""  # never overwritten


def decode_channels(path: Path) -> tuple[np.ndarray, int]:
    """(samples, channels) float array and the rate, planar or packed alike."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        channels = stream.codec_context.channels
        parts = []
        for frame in container.decode(stream):
            data = frame.to_ndarray()
            parts.append(data.T if frame.format.is_planar else data.reshape(-1, channels))
        pcm = np.concatenate(parts).astype(np.float64)
        return pcm / (32768 if np.abs(pcm).max() > 2 else 1), stream.rate


@pytest.mark.parametrize("fmt", [OGG, WAV], ids=lambda f: f.container)
async def test_a_stereo_recorder_puts_each_source_on_its_channel(
    tmp_path: Path, encoder: EncoderProcess, fmt: FileFormat
) -> None:
    path = tmp_path / f"stereo{fmt.extension}"
    writer = FileWriter(str(path), fmt, on_opened=lambda: None, channels=2, encoder=encoder)
    room = RoomAudio("r", Clock())
    left, right = (
        Talker((distinct_signal(name, 8000, 2.0, level=0.5) * 32767).astype(np.int16))
        for name in ("left", "right")
    )
    room.add(left)
    room.add(right)
    room.add(StereoRecorderLeg(writer, lambda source: 0 if source is left else 1))
    writer.start()
    for tick in range(100):
        room.tick(tick * 0.02)
    writer.finish()
    result = await writer.done
    assert (result.error, result.samples) == ("", 100 * FRAME)
    recorded, rate = decode_channels(path)
    assert recorded.shape[1] == 2
    for channel, talker in enumerate((left, right)):
        heard = windows_heard(talker.signal / 32768, recorded[:, channel], 8000, recorded_rate=rate)
        assert heard >= 0.9, (channel, heard)
        other = windows_heard(
            talker.signal / 32768, recorded[:, 1 - channel], 8000, recorded_rate=rate
        )
        assert other <= 0.1, (channel, other)


def test_a_recorder_leaves_a_forwarded_call_forwarded_and_decodes_only_what_it_mixes() -> None:
    """Two legs that forward to each other stay forwarded with a recorder in the room (it gives
    no audio, so it changes no one's sole source); the recorder mixes both sources, each pulled
    once per tick; a track recorder makes only its track buffered."""

    class Phone(Talker):
        def __init__(self) -> None:
            super().__init__(signal_8k(0.2))
            self.forwardable = True
            self.sending = True
            self.pulls = 0

        def pull(self, now: float) -> np.ndarray | None:
            self.pulls += 1
            return super().pull(now)

    room = RoomAudio("r", Clock())
    a, b = Phone(), Phone()
    room.add(a)
    room.add(b)
    assert (a.forward_to, b.forward_to, room.sources) == ([b], [a], {})
    writer = FileWriter.__new__(FileWriter)  # never started: only pushed to
    frames: list[object] = []
    writer.push = lambda pcm, rate=RATE: frames.append(pcm)  # type: ignore[method-assign]
    track = RecorderLeg(writer, hears=a)
    room.add(track)
    assert (a.forward_to, b.forward_to, list(room.sources)) == ([b], [a], [a])
    room.tick(0.0)
    assert (a.pulls, b.pulls, len(frames)) == (1, 0, 1)
    room.remove(track)
    room.add(RecorderLeg(writer))
    assert (a.forward_to, b.forward_to, set(room.sources)) == ([b], [a], {a, b})
    room.tick(0.02)
    assert (a.pulls, b.pulls, len(frames)) == (2, 1, 2)


def test_ticks_the_clock_skipped_are_silence_in_the_file() -> None:
    """A late event loop skips ticks of the shared clock (the next tick's `now` comes 40, 60
    ms later): the recording fills them with silence, so its file keeps its wall-clock length
    (up to ten seconds of it per gap)."""
    pushed: list[object] = []
    writer = FileWriter.__new__(FileWriter)
    writer.push = lambda pcm, rate=RATE: pushed.append(pcm)  # type: ignore[method-assign]
    leg = RecorderLeg(writer)
    frame = np.ones(FRAME, np.int16)
    for now in (0.0, 0.02, 0.08, 0.1, 5.0, 25.0):
        leg.send_pcm(frame, now)
    assert [p is None for p in pushed] == [
        *(False, False),
        *(True, True, False),  # 0.04 and 0.06 were skipped
        False,
        *([True] * 244),  # a 4.9 s stall
        False,
        *([True] * 500),  # a 20 s one: ten seconds of silence at most
        False,
    ]
    assert leg.filled == 746


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.container)
async def test_a_recording_of_whole_batches_closes_cleanly(
    tmp_path: Path, encoder: EncoderProcess, fmt: FileFormat
) -> None:
    """Ended on a batch boundary (200 ms): nothing is left to encode at the close, and an empty
    frame (an encoder error: EINVAL, ENOMEM for libopus) is never sent."""
    writer = FileWriter(
        str(tmp_path / f"whole{fmt.extension}"), fmt, on_opened=lambda: None, encoder=encoder
    )
    writer.start()
    for _ in range(20):
        writer.push(np.ones(160, np.int16), 8000)
    writer.finish()
    result = await writer.done
    assert (result.error, result.samples) == ("", 20 * FRAME)
