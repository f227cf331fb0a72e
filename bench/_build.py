"""Compile the benchmark's C programs with the system compiler.

Binaries are cached under ``bench/out/bin`` by a hash of their source and
flags, so an edited source is rebuilt (and the older build removed) and an
unchanged one is not.  The
compiler is ``$CC`` when set, else the first of cc, gcc and clang on PATH.

Static builds (``static=True``) run on another Linux machine with no C
compiler and whatever C library it has: ``bench/prepare_device.sh`` makes
them with ``python bench/_build.py --static --bin-dir DIR loadgen ...``, and
``run.py --prebuilt-bin DIR`` finds them there by the same hash, so a binary
built from an older source is never used.
"""

import argparse
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
OUT_DIR = BENCH_DIR / "out"
CFLAGS = ["-O2", "-Wall"]
STATIC_FLAGS = ["-static"]


class BuildError(RuntimeError):
    """No compiler, or the compiler rejected a source."""


def compiler():
    """The C compiler to use, or None when there is none."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def build(name, bin_dir=OUT_DIR / "bin", static=False):
    """Return the path of the binary built from ``bench/NAME.c``."""
    source = BENCH_DIR / f"{name}.c"
    flags = CFLAGS + (STATIC_FLAGS if static else [])
    digest = hashlib.sha256(source.read_bytes() + " ".join(flags).encode())
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
        [cc, *flags, "-o", str(partial), str(source)],
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


def main(argv=None):
    parser = argparse.ArgumentParser(description="Build bench/NAME.c binaries.")
    parser.add_argument("names", nargs="+", metavar="NAME")
    parser.add_argument("--bin-dir", type=Path, default=OUT_DIR / "bin")
    parser.add_argument("--static", action="store_true", help="link statically")
    args = parser.parse_args(argv)
    for name in args.names:
        print(build(name, args.bin_dir, static=args.static))


if __name__ == "__main__":
    main()
