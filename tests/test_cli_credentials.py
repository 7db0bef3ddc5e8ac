"""The client commands sign with the development key pair by default, without pyjwt's warning
about its short secret on every command (issue 14); a short secret of the user's still warns."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers import free_port


def room_list(*extra: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
    url = f"http://127.0.0.1:{free_port()}"  # nobody there: the command fails after signing
    done = subprocess.run(
        [sys.executable, "-m", "sipbridge", "room", "list", "--url", url, *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0 and "room list" in done.stderr, done.stderr
    return done.stderr


def test_the_development_secret_signs_without_a_warning() -> None:
    assert "InsecureKeyLengthWarning" not in room_list()


def test_a_short_secret_of_the_users_is_still_warned_about() -> None:
    assert "InsecureKeyLengthWarning" in room_list("--api-key", "k", "--api-secret", "short")
