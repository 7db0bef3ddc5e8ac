"""The fuzz harness (fuzz/): its seed corpus replayed through every target without atheris.

Each input of fuzz/corpus/<target>/ must end in "parses" or "raises the parser's own error",
as under the fuzzer; a crash the fuzzer found and that was fixed belongs here too, as a file in
the corpus, so it stays fixed even where atheris is not installed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fuzz.run import CORPUS, TARGET_NAMES
from fuzz.targets import TARGETS


def test_the_runner_knows_every_target() -> None:
    assert set(TARGET_NAMES) == set(TARGETS)


@pytest.mark.parametrize("target", TARGET_NAMES)
def test_every_seed_input_parses_or_is_refused(target: str) -> None:
    files = sorted((CORPUS / target).iterdir())
    assert files, f"no seed corpus for {target}"
    for path in files:
        data = Path(path).read_bytes()
        try:
            TARGETS[target](data)
        except Exception as err:  # every exception that escapes a target is a finding
            raise AssertionError(f"{path.name} crashes {target}: {err!r}") from err
