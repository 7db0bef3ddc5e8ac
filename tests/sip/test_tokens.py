"""sip/tokens.py: tags and branches sliced from one CSPRNG stream."""

from __future__ import annotations

import os

from sipbridge.sip import tokens
from sipbridge.sip.dialog import new_tag
from sipbridge.sip.transaction import new_branch


def test_tokens_are_hex_of_the_asked_size_and_never_repeat_across_blocks() -> None:
    # Enough tokens to refill the 4 KiB block several times over.
    seen = [tokens.token_hex(10) for _ in range(2_000)]
    assert all(len(t) == 20 and int(t, 16) >= 0 for t in seen)
    assert len(set(seen)) == len(seen)
    big = tokens.token_hex(5_000)  # more than a block at once
    assert len(big) == 10_000 and big not in seen


def test_tags_and_branches_come_from_the_stream() -> None:
    tags = {new_tag() for _ in range(500)}
    branches = {new_branch() for _ in range(500)}
    assert len(tags) == 500 and all(len(t) == 16 for t in tags)
    assert len(branches) == 500 and all(b.startswith("z9hG4bK") and len(b) == 27 for b in branches)


def test_a_forked_child_does_not_hand_out_its_parents_bytes() -> None:
    tokens.token_hex(1)  # the parent has a block under way
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next tokens, to the parent
        try:
            os.write(write, "".join(tokens.token_hex(8) for _ in range(8)).encode())
        finally:
            os._exit(0)
    os.close(write)
    child = b""
    while chunk := os.read(read, 4096):
        child += chunk
    os.close(read)
    os.waitpid(pid, 0)
    parent = "".join(tokens.token_hex(8) for _ in range(8))
    assert len(child) == 128
    assert child.decode() != parent
