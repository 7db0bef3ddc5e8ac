"""Ids as LiveKit clients expect them: prefix, 12 base-57 characters, all of the alphabet used."""

from __future__ import annotations

import os

import pytest

from sipbridge import ids


def test_ids_keep_their_prefix_alphabet_and_length() -> None:
    made = {ids.new_id(ids.CALL) for _ in range(2000)}
    assert len(made) == 2000
    for made_id in made:
        assert made_id.startswith("SCL_") and len(made_id) == 4 + 12
        assert set(made_id[4:]) <= set(ids._ALPHABET)
    used = {c for made_id in made for c in made_id[4:]}
    assert used == set(ids._ALPHABET)  # every digit drawn (2000 x 12 draws of 57)


def by_digit(prefix: str, value: int) -> str:
    """The id of `value` one base-57 digit at a time, lower first (as `new_id` made it before)."""
    digits = []
    for _ in range(ids._LENGTH):
        value, digit = divmod(value, len(ids._ALPHABET))
        digits.append(ids._ALPHABET[digit])
    return prefix + "".join(digits)


def test_two_digits_at_a_time_make_the_id_one_digit_at_a_time_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same 128-bit draw gives the same id as the division digit by digit (lower first)."""
    draws = [bytes(16), b"\xff" * 16, (57**12 - 1).to_bytes(16), (57**12).to_bytes(16)]
    draws += [os.urandom(16) for _ in range(2000)]
    for raw in draws:
        monkeypatch.setattr(ids, "_draws", iter([int.from_bytes(raw)]))
        assert ids.new_id("RM_") == by_digit("RM_", int.from_bytes(raw))


def test_draws_read_from_the_os_together_are_each_given_once() -> None:
    """Past the draws read at once, fresh ones: no id twice over several reads."""
    made = [ids.new_id("TR_") for _ in range(ids._DRAWS * 5 + 3)]
    assert len(set(made)) == len(made)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_a_forked_child_gives_ids_of_its_own() -> None:
    """The draws read before a fork are the parent's: a child draws its own."""
    ids.new_id("RM_")  # draws read, some left
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(reader)
        os.write(writer, " ".join(ids.new_id("RM_") for _ in range(3)).encode())
        os._exit(0)
    os.close(writer)
    with os.fdopen(reader) as pipe:
        child = set(pipe.read().split())
    os.waitpid(pid, 0)
    parent = {ids.new_id("RM_") for _ in range(3)}
    assert len(child) == 3 and not child & parent
