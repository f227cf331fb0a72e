#!/bin/bash
# Issue 11's multi-core figures on a lent machine, in one command:
#
#     bash bench/device_multicore.sh      (from the repository root)
#
# Needs what bench/prepare_device.sh built here and the `run` tool carries
# there (carry: ["device/carry"]): a cp312 wheel of fastsock with its
# compiled engine, static builds of the load generator and C echo server,
# build-info.txt.  Needs no network and no C compiler: the wheel goes into a
# throwaway venv (--system-site-packages, for uvloop) with pip --no-index.
# Then `bench/run.py --multicore` measures the installed fastsock: servers on
# SERVER_CPUS, one load generator per CPU of LOADGEN_CPUS; the run is cut
# off (SIGTERM: it reports what it measured) after BUDGET seconds.
# Writes under $OUT: run.log, multicore.md, multicore.json (and
# multicore.png with matplotlib), build-info.txt.
#
# Settings (environment): SERVER_CPUS (0-7), LOADGEN_CPUS (8-15), WORKERS
# (one per server CPU), DURATION (2.5 s), REPS (3), WARMUP (0.5 s),
# FAIRNESS (256 connections), BUDGET (400 s), PY (python3), CARRY
# (device/carry), OUT (bench/out/device).  On a machine with fewer CPUs
# than the lists name, the CPUs it has are split in halves.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$(pwd)/bench/out/device}
CARRY=${CARRY:-device/carry}
PY=${PY:-python3}
SERVER_CPUS=${SERVER_CPUS:-0-7}
LOADGEN_CPUS=${LOADGEN_CPUS:-8-15}
WORKERS=${WORKERS:-}
DURATION=${DURATION:-2.5}
REPS=${REPS:-3}
WARMUP=${WARMUP:-0.5}
FAIRNESS=${FAIRNESS:-256}
BUDGET=${BUDGET:-400}
mkdir -p "$OUT"
exec > >(tee "$OUT/run.log") 2>&1
STARTED=$(date +%s)
step() { echo "== [$(( $(date +%s) - STARTED )) s] $*"; }

step "machine"
date -u
echo "CPUs: $(nproc) allowed of $(getconf _NPROCESSORS_ONLN);" \
    "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
uname -srm
# Whether server and load CPUs share physical cores (SMT siblings).
echo "SMT sibling sets: $(cat /sys/devices/system/cpu/cpu*/topology/thread_siblings_list 2>/dev/null | sort -u | tr '\n' ' ')"
"$PY" -c 'import sys; print("python", sys.version)'
"$PY" -c 'import uvloop; print("uvloop", uvloop.__version__)' 2>/dev/null \
    || echo "uvloop missing: its row is skipped"
cat "$CARRY/build-info.txt" || { echo "no $CARRY: run bench/prepare_device.sh and carry it"; exit 2; }
cp "$CARRY/build-info.txt" "$OUT/"

# CPU lists this machine cannot honour: halves of the CPUs it has.
read -r SERVER_CPUS LOADGEN_CPUS < <("$PY" - "$SERVER_CPUS" "$LOADGEN_CPUS" <<'EOF'
import os, sys
def cpus(text):
    out = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        out.update(range(int(first), int(last or first) + 1))
    return out
allowed = sorted(os.sched_getaffinity(0))
if cpus(sys.argv[1]) | cpus(sys.argv[2]) <= set(allowed):
    print(sys.argv[1], sys.argv[2])
else:
    half = max(1, len(allowed) // 2)
    server, load = allowed[:half], allowed[half:] or allowed
    print(",".join(map(str, server)), ",".join(map(str, load)))
    print(f"note: CPUs {sys.argv[1]} / {sys.argv[2]} not all available; "
          f"using servers {server}, load {load}", file=sys.stderr)
EOF
)
echo "server CPUs $SERVER_CPUS, load generator CPUs $LOADGEN_CPUS"

step "installing the carried wheel (no network)"
WHEEL=$(ls "$CARRY"/fastsock-*-cp312-*.whl | head -1)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/fastsock-device.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
if "$PY" -m venv --system-site-packages "$WORK/venv" \
    && "$WORK/venv/bin/python" -m pip install -q --no-index --no-deps "$WHEEL"; then
    VPY=$WORK/venv/bin/python
else
    echo "no venv with pip here: installing with --target instead"
    "$PY" -m pip install -q --no-index --no-deps --target "$WORK/site" "$WHEEL" || exit 2
    export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
    VPY=$PY
fi
(cd "$WORK" && "$VPY" -c '
import fastsock._backend as b, fastsock
print("fastsock", fastsock.__file__, "engines", b.available())
assert "cython" in b.available(), "the wheel has no compiled engine"') || exit 2
export FASTSOCK_BENCH_COMMIT
FASTSOCK_BENCH_COMMIT=$(sed -n 's/^commit: //p' "$CARRY/build-info.txt")

ARGS=(--multicore --installed-fastsock --prebuilt-bin "$CARRY/bin"
      --server-cpus "$SERVER_CPUS" --loadgen-cpus "$LOADGEN_CPUS"
      --duration "$DURATION" --reps "$REPS" --warmup "$WARMUP"
      --fairness-connections "$FAIRNESS")
[ -n "$WORKERS" ] && ARGS+=(--workers "$WORKERS")

step "plan"
"$VPY" bench/run.py "${ARGS[@]}" --estimate || exit 2
echo "(the run is cut off after $BUDGET s)"

step "measuring"
timeout -s TERM -k 30 "$BUDGET" "$VPY" bench/run.py "${ARGS[@]}" \
    --out "$WORK/out" --results "$OUT/multicore.md"
STATUS=$?
cp "$WORK/out/partial.json" "$OUT/multicore.json" 2>/dev/null
if [ "$STATUS" = 124 ]; then
    # (not 124: the run tool reads that as its own time limit)
    echo "cut off after $BUDGET s: the report holds what was measured"
    STATUS=3
fi
step "done (exit status $STATUS; 1: some server FAILED, 3: cut off); files in $OUT:"
ls -l "$OUT"
exit $STATUS
