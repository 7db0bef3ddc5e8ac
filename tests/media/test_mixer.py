"""Mixing: saturation instead of wrap-around, and mix-minus (everyone but yourself)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.typing import NDArray

from sipbridge.media.mixer import mix, mix_minus


def pcm(*samples: int) -> NDArray[np.int16]:
    return np.array(samples, dtype=np.int16)


def test_mix_adds() -> None:
    out = mix([pcm(1, 2, 3), pcm(10, 20, 30), pcm(-100, 0, 100)])
    assert out.dtype == np.int16
    assert out.tolist() == [-89, 22, 133]


def test_mix_saturates_instead_of_wrapping() -> None:
    loud = pcm(30000, -30000, 32767, -32768, 100)
    out = mix([loud, loud])
    assert out.tolist() == [32767, -32768, 32767, -32768, 200]
    # int32 accumulation: the intermediate overflow of int16 does not leak into the result
    assert mix([pcm(32767), pcm(32767), pcm(-32768), pcm(-32768)]).tolist() == [-2]


def test_mix_of_one_frame_is_that_frame() -> None:
    frame = pcm(1, 2, 3)
    assert mix([frame]) is frame


def test_mix_rejects_nothing_and_unequal_lengths() -> None:
    with pytest.raises(ValueError, match="nothing to mix"):
        mix([])
    with pytest.raises(ValueError, match="differ in shape"):
        mix([pcm(1, 2), pcm(1, 2, 3)])
    with pytest.raises(ValueError, match="differ in shape"):
        mix([pcm(1, 2), pcm(1)])  # would broadcast in numpy


def test_mix_minus_three_speakers() -> None:
    frames = {"alice": pcm(100, 1, 0), "bob": pcm(20, 2, 0), "carol": pcm(3, 4, 0)}
    out = mix_minus(frames, ["alice", "bob", "carol"])
    assert list(out) == ["alice", "bob", "carol"]
    assert {who: None if a is None else a.tolist() for who, a in out.items()} == {
        "alice": [23, 6, 0],
        "bob": [103, 5, 0],
        "carol": [120, 3, 0],
    }
    for array in out.values():
        assert array is not None
        assert array.dtype == np.int16


def test_mix_minus_excludes_own_and_saturates_at_the_end() -> None:
    frames = {1: pcm(30000, -30000), 2: pcm(30000, -30000), 3: pcm(-30000, 30000)}
    out = mix_minus(frames, [1, 2, 3, 4])
    # 1 hears 2 + 3 = 0: the total is clipped only after its own share is taken out
    assert out[1] is not None
    assert out[1].tolist() == [0, 0]
    assert out[3] is not None
    assert out[3].tolist() == [32767, -32768]
    assert out[4] is not None  # a listener who does not speak hears everyone
    assert out[4].tolist() == [30000, -30000]


def test_mix_minus_listeners_who_do_not_speak() -> None:
    frames = {"alice": pcm(1, 2), "bob": pcm(10, 20)}
    out = mix_minus(frames, ["carol", "dave", "alice"])
    assert set(out) == {"carol", "dave", "alice"}
    assert out["carol"] is out["dave"]  # one shared mix
    assert out["carol"] is not None
    assert out["carol"].tolist() == [11, 22]
    assert out["alice"] is not None
    assert out["alice"].tolist() == [10, 20]
    # speakers who do not listen get nothing
    assert "bob" not in out


def test_mix_minus_lone_speaker() -> None:
    frame = pcm(5, 6)
    out = mix_minus({"alice": frame}, ["alice", "bob"])
    assert out["alice"] is None  # nobody else is talking
    assert out["bob"] is frame


def test_mix_minus_nobody_speaks() -> None:
    assert mix_minus({}, ["alice", "bob"]) == {"alice": None, "bob": None}
    assert mix_minus({}, []) == {}


def test_mix_minus_only_speakers_listen() -> None:
    out = mix_minus({"a": pcm(1), "b": pcm(2)}, iter(["a", "b", "a"]))
    assert {k: None if v is None else v.tolist() for k, v in out.items()} == {"a": [2], "b": [1]}


def test_mix_minus_no_speaker_listens() -> None:
    out = mix_minus({"a": pcm(1), "b": pcm(2)}, ["c"])
    assert out["c"] is not None
    assert out["c"].tolist() == [3]


def test_mix_minus_rejects_unequal_lengths() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        mix_minus({"a": pcm(1, 2), "b": pcm(1)}, ["a"])


frames_strategy = st.integers(1, 40).flatmap(
    lambda n: st.lists(
        hnp.arrays(np.int16, n, elements=st.integers(-32768, 32767)), min_size=1, max_size=6
    )
)


@settings(max_examples=200, deadline=None)
@given(frames_strategy)
def test_mix_minus_is_the_mix_of_the_others(frames: list[NDArray[np.int16]]) -> None:
    by_speaker: dict[int | str, NDArray[np.int16]] = dict(enumerate(frames))
    listeners: list[int | str] = [*by_speaker, "silent"]
    out = mix_minus(by_speaker, listeners)
    for listener in listeners:
        others = [frame for who, frame in by_speaker.items() if who != listener]
        got = out[listener]
        if not others:
            assert got is None
            continue
        assert got is not None
        expected = np.clip(np.sum(others, axis=0, dtype=np.int64), -32768, 32767)
        assert got.tolist() == expected.tolist()
        assert mix(others).tolist() == expected.tolist()
