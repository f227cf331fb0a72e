"""Compile the benchmark's C programs with the system compiler.

Binaries are cached under ``bench/out/bin`` by a hash of their source and
flags, so an edited source is rebuilt (and the older build removed) and an
unchanged one is not.  The
compiler is ``$CC`` when set, else the first of cc, gcc and clang on PATH.
"""

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
OUT_DIR = BENCH_DIR / "out"
CFLAGS = ["-O2", "-Wall"]


class BuildError(RuntimeError):
    """No compiler, or the compiler rejected a source."""


def compiler():
    """The C compiler to use, or None when there is none."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def build(name, bin_dir=OUT_DIR / "bin"):
    """Return the path of the binary built from ``bench/NAME.c``."""
    source = BENCH_DIR / f"{name}.c"
    digest = hashlib.sha256(source.read_bytes() + " ".join(CFLAGS).encode())
    binary = Path(bin_dir) / f"{name}-{digest.hexdigest()[:12]}"
    if binary.exists():
        return binary
    cc = compiler()
    if cc is None:
        raise BuildError("no C compiler found (set CC, or install cc/gcc/clang)")
    binary.parent.mkdir(parents=True, exist_ok=True)
    # Build under a private name, then rename: concurrent runs never see a
    # half-written binary.
    partial = binary.with_name(f"{binary.name}.{os.getpid()}.tmp")
    result = subprocess.run(
        [cc, *CFLAGS, "-o", str(partial), str(source)],
        capture_output=True,
        check=False,
        text=True,
    )
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise BuildError(f"{cc} failed on {source.name}:\n{result.stderr}")
    os.replace(partial, binary)
    for stale in binary.parent.glob(f"{name}-*"):  # builds of older sources
        if stale != binary and not stale.name.endswith(".tmp"):
            stale.unlink(missing_ok=True)
    return binary
