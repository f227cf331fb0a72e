#!/bin/sh
# Prepare what bench/device_multicore.sh needs on a lent machine, here.
#
#     sh bench/prepare_device.sh
#
# The lent machine has python3 = 3.12 (with Cython, pytest, uvloop), no
# network and maybe no C compiler, and gets the working tree without its
# ignored build outputs: so this builds, into device/carry/ (git-ignored),
#   - a cp312 wheel of this checkout's fastsock, with the compiled engine,
#     using pyenv's 3.12 and a build venv in device/venv312 (Cython and
#     setuptools from the configured package index);
#   - static builds of the load generator and the C echo server
#     (bench/_build.py --static: run.py --prebuilt-bin finds them by the
#     hash of their source, so a stale one is never used);
#   - build-info.txt: the commit, the wheel, the binaries;
# then checks the wheel in a throwaway venv and prints the `run` tool call.
# Rerun it after any change to fastsock/, src/ or bench/*.c.
set -eu
cd "$(dirname "$0")/.."
REPO=$(pwd)

PY312=${PY312:-}
if [ -z "$PY312" ]; then
    for dir in $(ls -d "$HOME"/.pyenv/versions/3.12* 2>/dev/null | sort -V -r); do
        [ -x "$dir/bin/python" ] && PY312=$dir/bin/python && break
    done
fi
[ -n "$PY312" ] || { echo "no Python 3.12 (set PY312)" >&2; exit 2; }
echo "Python 3.12: $PY312 ($("$PY312" -c 'import sys; print(sys.version.split()[0])'))"

BUILD_VENV=device/venv312
CARRY=device/carry
if [ ! -x "$BUILD_VENV/bin/python" ]; then
    "$PY312" -m venv "$BUILD_VENV"
fi
"$BUILD_VENV/bin/python" -m pip install -q "Cython>=3.0" "setuptools>=77" wheel

rm -rf "$CARRY"
mkdir -p "$CARRY/bin"
echo "building the wheel..."
"$BUILD_VENV/bin/python" -m pip wheel -q --no-deps --no-build-isolation -w "$CARRY" .
WHEEL=$(ls "$CARRY"/fastsock-*-cp312-*.whl 2>/dev/null | head -1)
[ -n "$WHEEL" ] || { echo "no cp312 wheel was built" >&2; ls "$CARRY" >&2; exit 1; }
# setup.py falls back to the pure engine when compiling fails: refuse that.
"$BUILD_VENV/bin/python" - "$WHEEL" <<'EOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
missing = [m for m in ("_cengine", "_cio", "_cworkers")
           if not any(n.startswith(f"fastsock/{m}.cpython-312") for n in names)]
if missing:
    sys.exit(f"the wheel lacks the compiled modules {missing}")
EOF

echo "building the static load generator and C echo server..."
"$BUILD_VENV/bin/python" bench/_build.py --static --bin-dir "$CARRY/bin" loadgen echo_server

# Check the wheel the way the lent machine installs it.
CHECK_VENV=$(mktemp -d "${TMPDIR:-/tmp}/fastsock-wheel-check.XXXXXX")
trap 'rm -rf "$CHECK_VENV"' EXIT
"$PY312" -m venv "$CHECK_VENV/venv"
"$CHECK_VENV/venv/bin/python" -m pip install -q --no-index --no-deps "$WHEEL"
(cd "$CHECK_VENV" && "$CHECK_VENV/venv/bin/python" -c '
import fastsock, fastsock._backend as b
assert "cython" in b.available(), b.available()
print("wheel check: fastsock", fastsock.__file__, "engines", b.available())')

# The newest glibc symbol version the wheel's modules need: the lent
# machine's glibc must be at least that.
WHEEL_GLIBC=$("$BUILD_VENV/bin/python" - "$WHEEL" <<'EOF'
import re, sys, zipfile
found = set()
with zipfile.ZipFile(sys.argv[1]) as wheel:
    for name in wheel.namelist():
        if name.endswith(".so"):
            found |= set(re.findall(rb"GLIBC_([0-9][0-9.]*[0-9])", wheel.read(name)))
versions = sorted(tuple(map(int, v.decode().split("."))) for v in found)
print(".".join(map(str, versions[-1])) if versions else "unknown")
EOF
)
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    COMMIT="$COMMIT (with uncommitted changes)"
fi
{
    echo "commit: $COMMIT"
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -srm)"
    echo "wheel: $(basename "$WHEEL")"
    echo "wheel needs glibc: ${WHEEL_GLIBC:-unknown}"
    echo "binaries: $(cd "$CARRY/bin" && ls | tr '\n' ' ')(static)"
} > "$CARRY/build-info.txt"
cat "$CARRY/build-info.txt"
SIZE=$(du -sk "$CARRY" | cut -f1)
echo "device/carry: ${SIZE} KiB (carry limit 64 MiB)"

cat <<EOF

Now, in a session that is lent the 16-core machine, make this one call
(tool \`run\`; about 5 minutes of device time, timeout leaves room):

  command:   bash bench/device_multicore.sh
  carry:     ["device/carry"]
  timeout_s: 480

It writes multicore.json, multicore.md and run.log under \$OUT.  Put the
figures in bench/RESULTS.md with the command and machine.
EOF
