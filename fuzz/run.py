"""Run the fuzz targets of fuzz/targets.py under atheris (libFuzzer), one process each.

    python -m fuzz.run [--seconds N] [--runs N] [--seed N] [TARGET ...]   fuzz (all by default)
    python -m fuzz.run --replay TARGET FILE ...                           rerun saved inputs
    python -m fuzz.run --merge [TARGET ...]                               shrink the seed corpus

Each target starts from its seed corpus (fuzz/corpus/<target>/, never written to) and a working
corpus (fuzz/work/<target>/, gitignored) where libFuzzer keeps the inputs that found new
coverage, so a long run continues where the previous one stopped. An input that crashes, hangs
(--timeout seconds) or takes more than --rss-limit MiB is saved as fuzz/crashes/<target>-...
(gitignored), the run fails, and the command to replay it is printed. `make fuzz-smoke` runs
every target for a few seconds from a fixed seed; `make fuzz` for FUZZ_SECONDS each.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FUZZ = ROOT / "fuzz"
CORPUS = FUZZ / "corpus"
WORK = FUZZ / "work"
CRASHES = FUZZ / "crashes"
DICTIONARY = FUZZ / "sip.dict"
TARGET_NAMES = (
    "sip_message",
    "sip_stream",
    "sip_header",
    "sdp",
    "rtp",
    "dtmf",
    "digest",
    "endpoint",
    "user_agent",
    "sip_trying",
)
# The SIP layer refuses messages over 64 KiB (sip/message.py MAX_MESSAGE); a little more lets
# the fuzzer reach that limit. The binary formats are short.
MAX_LENGTH = {"rtp": 1500, "dtmf": 640, "sip_header": 4096, "digest": 8192}
DEFAULT_MAX_LENGTH = 66 * 1024


def child(target: str, libfuzzer_args: list[str]) -> None:
    """In the fuzzing process: instrument sipbridge, then hand the target to libFuzzer."""
    import atheris  # noqa: PLC0415 - only the fuzzing process needs it

    with atheris.instrument_imports(include=["sipbridge", "fuzz"]):
        from fuzz.targets import TARGETS  # noqa: PLC0415

    # libFuzzer reruns its own command line for -merge: FUZZ_SELF names an executable for it
    program = os.environ.get("FUZZ_SELF", sys.argv[0])
    atheris.Setup([program, *libfuzzer_args], TARGETS[target])
    atheris.Fuzz()


def fuzz(target: str, args: argparse.Namespace) -> bool:
    """Fuzz one target in its own process; True when it found nothing."""
    seeds = CORPUS / target
    CRASHES.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{target}-") as scratch:
        if args.keep:
            work = WORK / target
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(scratch)  # a smoke run keeps nothing
        before = set(CRASHES.glob(f"{target}-*"))
        libfuzzer = [
            f"-artifact_prefix={CRASHES}/{target}-",
            f"-max_len={MAX_LENGTH.get(target, DEFAULT_MAX_LENGTH)}",
            f"-timeout={args.timeout}",
            f"-rss_limit_mb={args.rss_limit}",
            f"-seed={args.seed}",
            f"-dict={DICTIONARY}",
            "-print_final_stats=1",
            "-print_pcs=0",
            "-reload=0",
        ]
        if args.runs is not None:
            libfuzzer.append(f"-runs={args.runs}")
        if args.seconds is not None:
            libfuzzer.append(f"-max_total_time={args.seconds}")
        command = [sys.executable, "-m", "fuzz.run", "--child", target, "--", *libfuzzer]
        command += [str(work), str(seeds)]
        started = time.monotonic()
        log = Path(scratch) / "log" if not args.keep else WORK / f"{target}.log"
        with log.open("w") as out:
            result = subprocess.run(
                command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, check=False
            )
        text = log.read_text(errors="replace")
        stats = _stats(text)
        elapsed = time.monotonic() - started
        if result.returncode == 0:
            print(f"{target:<12} ok    {stats} in {elapsed:.1f} s", flush=True)
            return True
        print(f"{target:<12} FAILED (exit {result.returncode}) after {elapsed:.1f} s", flush=True)
        print(_tail(text), flush=True)
        for crash in sorted(set(CRASHES.glob(f"{target}-*")) - before):
            saved = crash.relative_to(ROOT)
            print(f"saved {saved}; replay it with:")
            print(f"    PYTHONPATH=src python -m fuzz.run --replay {target} {saved}")
        return False


def _stats(text: str) -> str:
    """The executions libFuzzer reports (-print_final_stats)."""
    values = {}
    for line in text.splitlines():
        if line.startswith("stat::"):
            name, _, value = line.removeprefix("stat::").partition(":")
            values[name.strip()] = value.strip()
    runs = values.get("number_of_executed_units", "?")
    speed = values.get("average_exec_per_sec", "?")
    return f"{runs:>9} executions ({speed}/s)"


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


def replay(target: str, files: list[str]) -> bool:
    """Run saved inputs through the target without atheris, with the Python traceback."""
    from fuzz.targets import TARGETS  # noqa: PLC0415

    failed = False
    for name in files:
        data = Path(name).read_bytes()
        try:
            TARGETS[target](data)
        except Exception:  # every exception is what a replay is for
            failed = True
            print(f"{name}: {len(data)} octets {data[:200]!r}")
            traceback.print_exc()
        else:
            print(f"{name}: no crash")
    return not failed


def merge(target: str) -> None:
    """Keep only the seed inputs that add coverage (libFuzzer -merge=1), in place."""
    seeds = CORPUS / target
    CRASHES.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"merge-{target}-") as scratch:
        kept = Path(scratch) / "kept"
        kept.mkdir()
        program = Path(scratch) / "target"
        program.write_text(
            f'#!/bin/sh\nexec "{sys.executable}" -m fuzz.run --child {target} -- "$@"\n'
        )
        program.chmod(0o755)
        command = [str(program), "-merge=1", f"-max_len={DEFAULT_MAX_LENGTH}"]
        command.append(f"-artifact_prefix={CRASHES}/{target}-")
        command += [str(kept), str(seeds)]
        environment = {**os.environ, "FUZZ_SELF": str(program)}
        subprocess.run(command, cwd=ROOT, env=environment, check=True, capture_output=True)
        keep = {path.read_bytes() for path in kept.iterdir()}
        if not keep:
            raise SystemExit(f"{target}: the merge kept nothing; the seed corpus is left as is")
        removed = 0
        for path in seeds.iterdir():
            if path.read_bytes() not in keep:
                path.unlink()
                removed += 1
        print(f"{target}: kept {len(list(seeds.iterdir()))}, removed {removed}")


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[4:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", help="targets (all by default), or replay files")
    parser.add_argument("--seconds", type=int, help="run each target this long")
    parser.add_argument("--runs", type=int, help="run each target this many inputs")
    parser.add_argument(
        "--seed",
        type=int,
        default=int(os.environ.get("FUZZ_SEED", "1")),
        help="libFuzzer seed (0: a random one)",
    )
    parser.add_argument("--timeout", type=int, default=10, help="seconds one input may take")
    parser.add_argument("--rss-limit", type=int, default=2048, help="MiB the process may use")
    parser.add_argument("--keep", action="store_true", help="keep new inputs in fuzz/work/")
    parser.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="targets fuzzed at once (CPUs)"
    )
    parser.add_argument("--replay", action="store_true", help="TARGET FILE...: rerun inputs")
    parser.add_argument("--merge", action="store_true", help="shrink the seed corpus")
    args = parser.parse_args()
    if args.replay:
        if len(args.targets) < 2:
            parser.error("--replay TARGET FILE...")
        sys.exit(0 if replay(args.targets[0], args.targets[1:]) else 1)
    targets = args.targets or list(TARGET_NAMES)
    unknown = sorted(set(targets) - set(TARGET_NAMES))
    if unknown:
        parser.error(f"unknown targets {unknown}; known: {', '.join(TARGET_NAMES)}")
    if args.merge:
        for target in targets:
            merge(target)
        return
    if args.seconds is None and args.runs is None:
        parser.error("say how long: --seconds or --runs")
    # Each target is a process of its own: as many at once as there are CPUs.
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        clean = list(pool.map(lambda target: fuzz(target, args), targets))
    failed = [target for target, ok in zip(targets, clean, strict=True) if not ok]
    if failed:
        print(f"fuzzing found crashes in: {', '.join(failed)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
