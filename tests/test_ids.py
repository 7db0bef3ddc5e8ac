"""Ids as LiveKit clients expect them: prefix, 12 base-57 characters, all of the alphabet used."""

from __future__ import annotations

from sipbridge import ids


def test_ids_keep_their_prefix_alphabet_and_length() -> None:
    made = {ids.new_id(ids.CALL) for _ in range(2000)}
    assert len(made) == 2000
    for made_id in made:
        assert made_id.startswith("SCL_") and len(made_id) == 4 + 12
        assert set(made_id[4:]) <= set(ids._ALPHABET)
    used = {c for made_id in made for c in made_id[4:]}
    assert used == set(ids._ALPHABET)  # every digit drawn (2000 x 12 draws of 57)
