"""`_csipthr.c` reads Max-Forwards and Content-Length from the datagram's own bytes (no strtol: a
datagram the thread read has no NUL after it, which ASan's strict_string_checks reported as a
heap-buffer-overflow, fuzz/README.md). At every boundary of those numbers the thread answers 100
exactly where the Python stack does, with its bytes, and leaves the rest to it."""

from __future__ import annotations

import pytest

from sipbridge.server.sip import udp_thread
from sipbridge.server.sip.udp_thread import trying
from tests.server.test_sip_thread import SERVER, invite, python_trying

pytestmark = pytest.mark.skipif(not udp_thread.built(), reason="the reader thread is not built")


def with_body(length: str, body: bytes) -> bytes:
    return invite(3, 5070).replace(
        b"Content-Length: 0\r\n\r\n", b"Content-Length: " + length.encode() + b"\r\n\r\n" + body
    )


@pytest.mark.parametrize(
    ("data", "answered"),
    [
        *[
            (invite(3, 5070).replace(b"Max-Forwards: 70", b"Max-Forwards: " + value), answered)
            for value, answered in [
                (b"1", True),
                (b"007", True),
                (b"999", True),
                (b"0", False),  # 483 from Python
                (b"000", False),
                (b"1000", False),  # four digits: Python decides
                (b"70 ", True),  # stripped
                (b"7 0", False),
                (b"-1", False),
                (b"+1", False),
            ]
        ],
        *[
            (with_body(length, body), answered)
            for length, body, answered in [
                ("4", b"v=0\n", True),
                ("00004", b"v=0\n", True),
                ("3", b"v=0\n", True),  # the body cut to it
                ("5", b"v=0\n", False),  # longer than the datagram's body
                ("000004", b"v=0\n", False),  # six digits
                ("99999", b"v=0\n", False),
                ("0", b"", True),
                ("00000", b"", True),
                ("1", b"", False),
            ]
        ],
    ],
)
def test_max_forwards_and_content_length_as_python_reads_them(data: bytes, answered: bool) -> None:
    ours = trying(data, "127.0.0.1", 5070, SERVER)
    assert (ours is not None) == answered, data
    if ours is not None:
        assert ours == python_trying(data, "127.0.0.1", 5070), data
