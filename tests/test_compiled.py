"""The compiled core and its fallback (`sipbridge/_compiled.py`): which one a process runs.

The stamp's checks run on a package of our own in a temporary directory; the real build (when
`make compiled` made one) in fresh interpreters, with and without `SIPBRIDGE_INTERPRETED`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sipbridge import _compiled

SRC = Path(_compiled.__file__).resolve().parent.parent
PROBE = (
    "import sipbridge._compiled as c, sipbridge.sip.message as m, sipbridge.media as p; "
    "print(c.MODE, m.__file__.endswith('.py'), p.__file__.endswith('.py'))"
)


def _package(root: Path) -> dict[str, Path]:
    """Two modules and a package, each with a file standing for its extension."""
    sources = {"pkg.a": root / "a.py", "pkg.sub": root / "sub" / "__init__.py"}
    for path in sources.values():
        path.parent.mkdir(exist_ok=True)
        path.write_text("x = 1\n")
        _compiled.extension_of(path).write_bytes(b"")
    return sources


def test_a_build_is_current_until_a_source_or_an_extension_changes(tmp_path: Path) -> None:
    assert not _compiled.built(tmp_path) and _compiled.listed(tmp_path) == {}
    sources = _package(tmp_path)
    _compiled.write_stamp(sources, tmp_path)
    assert _compiled.built(tmp_path) and _compiled.listed(tmp_path) == sources
    assert _compiled.extension_of(sources["pkg.sub"]).name.startswith("__init__.cpython")

    sources["pkg.a"].write_text("x = 2\n")  # an edit after the build
    assert not _compiled.built(tmp_path) and _compiled.listed(tmp_path) == sources

    _compiled.write_stamp(sources, tmp_path)
    _compiled.extension_of(sources["pkg.sub"]).unlink()
    assert not _compiled.built(tmp_path)


@pytest.mark.parametrize(
    "stamp", ["", "{", '{"modules": 3}', '{"modules": {"pkg.a": ["a.py"]}}', "[]"]
)
def test_an_unreadable_stamp_means_no_build(tmp_path: Path, stamp: str) -> None:
    _package(tmp_path)
    (tmp_path / _compiled.STAMP.name).write_text(stamp)
    assert not _compiled.built(tmp_path)


def _probe(src: Path = SRC, **env: str) -> tuple[str, str]:
    """What a fresh interpreter importing sipbridge from `src` runs: (mode and whether two
    modules came from their sources, stderr)."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**os.environ, "PYTHONPATH": str(src), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip(), done.stderr


def test_interpreted_on_request_runs_every_listed_module_from_its_source() -> None:
    out, err = _probe(SIPBRIDGE_INTERPRETED="1")
    assert out == "interpreted True True" and "older than" not in err


def test_the_build_runs_when_it_is_current() -> None:
    if not _compiled.built(SRC / "sipbridge"):
        pytest.skip("no compiled build here (`make compiled`)")
    out, err = _probe(SIPBRIDGE_INTERPRETED="0")
    assert out == "compiled False False" and err == ""


def test_a_stale_build_runs_the_sources_and_says_so(tmp_path: Path) -> None:
    """A copy of the package whose stamp no longer matches one source: every listed module
    runs from its source, and stderr says why."""
    if not _compiled.built(SRC / "sipbridge"):
        pytest.skip("no compiled build here (`make compiled`)")
    copy = tmp_path / "src"
    subprocess.run(["cp", "-a", str(SRC), str(copy)], check=True, timeout=60)
    stamp = copy / "sipbridge" / _compiled.STAMP.name
    entries = json.loads(stamp.read_text())
    entries["modules"]["sipbridge.sip.message"][2] += 1  # as if edited after the build
    stamp.write_text(json.dumps(entries))
    out, err = _probe(copy, SIPBRIDGE_INTERPRETED="0")
    assert out == "stale True True" and "older than their sources" in err


def test_make_rebuilds_when_any_compiled_source_changes() -> None:
    """The Makefile's COMPILED_SOURCES (what `make` checks before compiling again) holds every
    source setup.py's COMPILED compiles: one missing would leave an edit of it unbuilt, and every
    process then runs the whole core from source (`stale`) until someone runs the build."""
    import ast  # noqa: PLC0415

    root = SRC.parent
    if not (root / "Makefile").exists() or not (root / "setup.py").exists():
        pytest.skip("not a checkout")
    tree = ast.parse((root / "setup.py").read_text())
    listed = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "COMPILED" for t in node.targets)
    )
    compiled = set()
    for entry in listed:
        path = root / entry
        files = [path] if path.suffix == ".py" else sorted(path.rglob("*.py"))
        compiled |= {str(f.relative_to(root)) for f in files}
    database = subprocess.run(
        ["make", "-pn", "-C", str(root)], capture_output=True, text=True, check=False
    ).stdout
    line = next(x for x in database.splitlines() if x.startswith("COMPILED_SOURCES :="))
    checked = set(line.split(":=", 1)[1].split())
    assert compiled and compiled <= checked, sorted(compiled - checked)
