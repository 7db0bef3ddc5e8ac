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
# (`make asan` is the first; not part of `make test`.) Python allocates with malloc
# (PYTHONMALLOC=malloc), so a read past a bytes object's end lands in ASan's red zone, not in
# pymalloc's pool. The first error aborts the process with its report on stderr.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
TREE=$ROOT/build/asan
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
fi

ASAN_LIB=$(gcc -print-file-name=libasan.so)
UBSAN_LIB=$(gcc -print-file-name=libubsan.so)
export LD_PRELOAD="$ASAN_LIB $UBSAN_LIB${LD_PRELOAD:+ $LD_PRELOAD}"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export PYTHONMALLOC=malloc
export PYTHONPATH="$TREE/src:$ROOT"
export SIPBRIDGE_INTERPRETED=1

# Every extension built and loaded, instrumented (an optional extension that failed to build
# would leave its Python fallback to be tested instead, and say nothing).
"$PYTHON" - <<'EOF'
import importlib
import sys

for name in ("_crelay", "_csipudp", "_csipthr", "sip._csipmsg"):
    module = importlib.import_module("sipbridge." + name)
    if "/build/asan/src/" not in module.__file__:
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
