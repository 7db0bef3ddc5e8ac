#!/usr/bin/env bash
# The hand-written C extensions (_csipmsg.c, _csipthr.c, _crelay.c, _csipudp.c) under
# AddressSanitizer and UndefinedBehaviorSanitizer, in a tree of their own (build/asan/src: the
# Python sources copied, the four extensions built there with SIPBRIDGE_SANITIZE=1, nothing
# compiled by mypyc); the normal build in src/ is left as it is. Then one command runs with
# that tree first on PYTHONPATH and the sanitizers' runtime preloaded into Python:
#
#     fuzz/asan.sh                                   # the fuzz smoke of the targets that reach C
#     fuzz/asan.sh python -m fuzz.run --seconds 300 sip_trying
#     fuzz/asan.sh python -m pytest -q tests/sip/test_message_c.py
#
# (`make asan` is the first; not part of `make test`.) ASAN_COMPILED=1 (after `make compiled`):
# the mypyc-compiled core (not instrumented) beside the sanitized C, for tests whose servers
# must start and answer in time. Python allocates with malloc
# (PYTHONMALLOC=malloc), so a read past a bytes object's end lands in ASan's red zone, not in
# pymalloc's pool. The first error aborts the process with its report on stderr.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
TREE=$(cd "$ROOT" && realpath -m "${ASAN_TREE:-build/asan}") # (another: two builds at once)
RUNS=${FUZZ_SMOKE_RUNS:-4000}
SECONDS_EACH=${FUZZ_SMOKE_SECONDS:-30}
TARGETS=${FUZZ_TARGETS:-sip_message sip_stream sip_trying endpoint user_agent rtp}

cd "$ROOT"
# ASAN_REUSE=1: run on the tree the last call built (several commands at once).
if [ "${ASAN_REUSE:-0}" != 1 ] || [ ! -d "$TREE/src" ]; then
	rm -rf "$TREE/src"
	mkdir -p "$TREE/src"
	# The sources and their data: no extension of the normal build, no stamp of the mypyc build.
	(cd src && find sipbridge -type f ! -name '*.so' ! -name '_compiled.json' ! -path '*/__pycache__/*') |
		while read -r file; do
			mkdir -p "$TREE/src/$(dirname "$file")"
			cp -p "src/$file" "$TREE/src/$file"
		done
	SIPBRIDGE_SANITIZE=1 "$PYTHON" setup.py -q build_ext --force \
		--build-lib "$TREE/src" --build-temp "$TREE/temp" >"$TREE/build.log" 2>&1 ||
		{ cat "$TREE/build.log"; exit 1; }
	if [ "${ASAN_COMPILED:-0}" = 1 ]; then
		# the core as `make compiled` built it in src/ (mypyc's extensions, not instrumented,
		# and its stamp), beside the sanitized C: servers start and run as fast as they can
		[ -f src/sipbridge/_compiled.json ] || { echo "ASAN_COMPILED=1: no mypyc build in src/"; exit 1; }
		cp -p src/*__mypyc*.so "$TREE/src/"
		cp -p src/sipbridge/_compiled.json "$TREE/src/sipbridge/"
		(cd src && find sipbridge -name '*.so' ! -name '_c*.so') | while read -r file; do
			cp -p "src/$file" "$TREE/src/$file"
		done
	fi
	# the bytecode once: every process (a test's server each) then starts without compiling
	"$PYTHON" -m compileall -q "$TREE/src" >/dev/null
fi

ASAN_LIB=$(gcc -print-file-name=libasan.so)
UBSAN_LIB=$(gcc -print-file-name=libubsan.so)
export LD_PRELOAD="$ASAN_LIB $UBSAN_LIB${LD_PRELOAD:+ $LD_PRELOAD}"
# strict_string_checks: a C string function given bytes with no NUL after them is reported
# (strtol on a datagram, _csipthr.c, found so); no leak checks (Python's own would drown them).
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export PYTHONMALLOC=${PYTHONMALLOC:-malloc}
export PYTHONPATH="$TREE/src:$ROOT"
if [ "${ASAN_COMPILED:-0}" != 1 ]; then
	export SIPBRIDGE_INTERPRETED=1
fi
unset PYTHONDONTWRITEBYTECODE

# Every extension built and loaded, instrumented (an optional extension that failed to build
# would leave its Python fallback to be tested instead, and say nothing).
ASAN_TREE_SRC="$TREE/src/" "$PYTHON" - <<'EOF'
import importlib
import os
import sys

import sipbridge._compiled as core

if os.environ.get("ASAN_COMPILED") == "1" and core.MODE != "compiled":
    sys.exit(f"ASAN_COMPILED=1 but the core is {core.MODE}")
for name in ("_crelay", "_csipudp", "_csipthr", "sip._csipmsg"):
    module = importlib.import_module("sipbridge." + name)
    if not module.__file__.startswith(os.environ["ASAN_TREE_SRC"]):
        sys.exit(f"sipbridge.{name} is not the sanitizer build: {module.__file__}")
    if b"__asan_" not in open(module.__file__, "rb").read():
        sys.exit(f"sipbridge.{name} is not instrumented: {module.__file__}")
EOF

if [ $# -eq 0 ]; then
	# One target at a time (--jobs 1): the machine is shared, and ASan triples the memory.
	# shellcheck disable=SC2086
	set -- "$PYTHON" -m fuzz.run --jobs 1 --runs "$RUNS" --seconds "$SECONDS_EACH" \
		--seed "${FUZZ_SEED:-1}" $TARGETS
elif [ "$1" = python ]; then
	shift
	set -- "$PYTHON" "$@"
fi
exec "$@"
