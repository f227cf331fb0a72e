"""What fastsock ships: its sdist, its pure wheel, its type information.

The fast half of the release checks; tools/check_dist.sh does the slow half
(wheels installed into fresh environments, the sdist without a compiler or
without Cython, cibuildwheel's matrix, auditwheel).  The builds here run in
a copy of the source tree, without build isolation, so that they take
seconds and leave the tree as it was.
"""

import importlib
import importlib.machinery
import os
import re
import shutil
import socketserver
import subprocess
import sys
import sysconfig
import tarfile
import types
import zipfile
from pathlib import Path

import pytest

import fastsock
from fastsock import _backend

SOURCE_ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIR = Path(fastsock.__file__).resolve().parent
COMPILED_MODULES = ["_cengine", "_cio"]
EXTENSION_SUFFIXES = tuple(importlib.machinery.EXTENSION_SUFFIXES)
BUILD_OUTPUTS = (".so", ".pyd", ".dylib", ".dll")

needs_source_tree = pytest.mark.skipif(
    not (SOURCE_ROOT / "setup.py").is_file(),
    reason="the tests were not run from a source tree")


def _extension_files():
    return sorted(path.name for path in PACKAGE_DIR.iterdir()
                  if path.name.endswith(EXTENSION_SUFFIXES))


def test_every_built_module_imports():
    # setup.py never fails for want of the compiled engine, and _backend
    # falls back to the pure engine when _cengine will not import: a module
    # that was built but cannot load would pass unnoticed but for this.
    built = _extension_files()
    for filename in built:
        name = filename.split(".", 1)[0]
        importlib.import_module(f"fastsock.{name}")
    has_cengine = any(name.startswith("_cengine.") for name in built)
    assert ("cython" in _backend.available()) == has_cengine


@pytest.mark.skipif(not os.environ.get("FASTSOCK_EXPECT_BACKEND"),
                    reason="set where a built artifact is tested")
def test_tests_run_against_the_built_artifact():
    # cibuildwheel and tools/check_dist.sh run these tests from the source
    # tree's tests/ against an installed wheel; they name the engine that
    # wheel must bring.
    assert fastsock.BACKEND == os.environ["FASTSOCK_EXPECT_BACKEND"]
    assert SOURCE_ROOT not in PACKAGE_DIR.parents, (
        f"imported the source tree's fastsock ({PACKAGE_DIR}), "
        "not the installed one")


# -- the sdist and the pure wheel --------------------------------------------

def _copy_tree_with_build_outputs(dest):
    """Copy the source tree as a developer has it after an in-place build."""
    shutil.copytree(SOURCE_ROOT, dest, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "build", "dist", "wheelhouse", "*.egg-info",
        "__pycache__", ".*_cache", ".hypothesis", ".benchmarks", "bench"))
    # What `setup.py build_ext --inplace` leaves, whether or not it ran.
    ext_suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    (dest / "fastsock" / f"_planted{ext_suffix}").write_bytes(b"\x7fELF")
    (dest / "src" / "fastsock").mkdir(parents=True, exist_ok=True)
    (dest / "src" / "fastsock" / "_planted.c").write_text("/* Cython */\n")


def _build(args, source, outdir, **env_changes):
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("FASTSOCK_")}
    env.update(env_changes)
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation",
         "--skip-dependency-check", *args, "--outdir", str(outdir),
         str(source)],
        env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _relative(root, pattern):
    return {path.relative_to(root).as_posix() for path in root.glob(pattern)
            if path.is_file() and "__pycache__" not in path.parts}


def _unpack(archive, dest):
    if hasattr(tarfile, "data_filter"):  # 3.10.12+: refuse odd members
        archive.extractall(dest, filter="data")
    else:
        archive.extractall(dest)


@needs_source_tree
def test_sdist_has_sources_and_builds_a_pure_wheel(tmp_path):
    tree = tmp_path / "tree"
    _copy_tree_with_build_outputs(tree)
    _build(["--sdist"], tree, tmp_path / "dist")
    [sdist] = (tmp_path / "dist").glob("fastsock-*.tar.gz")
    with tarfile.open(sdist) as archive:
        top = archive.getnames()[0].split("/")[0]
        members = {name.split("/", 1)[1] for name in archive.getnames()
                   if "/" in name}

    needed = ({"setup.py", "pyproject.toml", "README.md", "fastsock/py.typed"}
              | _relative(tree, "tests/**/*")
              | _relative(tree, "fastsock/*.py")
              | _relative(tree, "fastsock/*.pyi")
              | _relative(tree, "fastsock/*.pxd")
              | _relative(tree, "src/fastsock/*.pyx")
              | _relative(tree, "src/fastsock/*.pxd")
              | _relative(tree, "src/fastsock/includes/*"))
    assert needed - members == set()
    generated = {name for name in members
                 if name.endswith(BUILD_OUTPUTS)
                 or re.fullmatch(r"src/fastsock/[^/]+\.(c|cpp|html)", name)}
    assert generated == set()

    # The sdist alone builds, and without extensions the wheel is universal.
    with tarfile.open(sdist) as archive:
        _unpack(archive, tmp_path / "unpacked")
    proc = _build(["--wheel"], tmp_path / "unpacked" / top,
                  tmp_path / "wheel", FASTSOCK_NO_EXTENSIONS="1")
    assert "pure-Python engine only" in proc.stderr
    [wheel] = (tmp_path / "wheel").glob("*.whl")
    assert wheel.name == f"fastsock-{fastsock.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        files = set(archive.namelist())
    assert (_relative(tree, "fastsock/*.py") | _relative(tree, "fastsock/*.pyi")
            | {"fastsock/py.typed"}) - files == set()
    assert {name for name in files if name.endswith(BUILD_OUTPUTS)} == set()


@needs_source_tree
@pytest.mark.skipif(sys.platform == "win32",
                    reason="Windows builds no compiled engine in any case")
def test_a_free_threaded_build_gets_the_pure_engine():
    # The compiled modules rely on the GIL (README): on a free-threaded
    # interpreter setup.py builds none.  No such interpreter need be at
    # hand: setup.py runs here with sysconfig answering as one would.
    script = (
        "import runpy, sys, sysconfig\n"
        "real = sysconfig.get_config_var\n"
        "sysconfig.get_config_var = lambda name: (\n"
        "    1 if name == 'Py_GIL_DISABLED' else real(name))\n"
        "sys.argv = ['setup.py', '--name']\n"
        "runpy.run_path('setup.py', run_name='__main__')\n")
    env = {name: value for name, value in os.environ.items()
           if name not in ("FASTSOCK_NO_EXTENSIONS", "FASTSOCK_BUILD_ONLY")}
    proc = subprocess.run([sys.executable, "-c", script], cwd=SOURCE_ROOT,
                          env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "not built for free-threaded CPython" in proc.stderr
    assert "pure-Python engine only" in proc.stderr
    assert proc.stdout.split()[-1] == "fastsock"


# -- type information ----------------------------------------------------------

def _public_attrs(cls):
    return sorted({name for klass in cls.__mro__ if klass is not object
                   for name in vars(klass) if not name.startswith("_")})


# A program typed against socketserver, as its users write them; the last
# line is a type error that a checker must report.
CLIENT = '''
class EchoHandler(ss.StreamRequestHandler):
    def handle(self) -> None:
        line: bytes = self.rfile.readline()
        self.wfile.write(line)
        reveal_type(self.rfile)
        reveal_type(self.server)
        reveal_type(self.client_address)


class Server(ss.ThreadingMixIn, ss.TCPServer):
    allow_reuse_address = True
    daemon_threads = True


with Server(("127.0.0.1", 0), EchoHandler) as server:
    reveal_type(server)
    reveal_type(server.server_address)
    reveal_type(server.socket)
    reveal_type(server.get_request())
    server.serve_forever(poll_interval=0.1)
    server.shutdown()
udp = ss.UDPServer(("127.0.0.1", 0), ss.DatagramRequestHandler, False)
reveal_type(udp.get_request())
ss.TCPServer("127.0.0.1:80", EchoHandler)
'''


def _stdlib_probe(import_line):
    """Reveal every public class and attribute of the stdlib's socketserver."""
    lines = [import_line]
    for name in sorted(socketserver.__all__):
        lines.append(f"reveal_type(ss.{name})")
        lines += [f"reveal_type(ss.{name}.{attr})"
                  for attr in _public_attrs(getattr(socketserver, name))]
    return "\n".join(lines) + "\n" + CLIENT


def _fastsock_names_probe():
    """Reveal every public name of the fastsock module, as run."""
    names = [name for name, value in vars(fastsock).items()
             if not name.startswith("_")
             and not isinstance(value, types.ModuleType)]
    return "\n".join(["import fastsock"]
                     + [f"reveal_type(fastsock.{name})"
                        for name in sorted(names + ["BACKEND"])]) + "\n"


def _mypy_env():
    """Point mypy and the runtime at the fastsock these tests imported."""
    env = dict(os.environ)
    parent = str(PACKAGE_DIR.parent)
    env["PYTHONPATH"] = parent
    installed = {str(Path(sysconfig.get_paths()[key]).resolve())
                 for key in ("purelib", "platlib")}
    if parent not in installed:  # mypy refuses site-packages on MYPYPATH
        env["MYPYPATH"] = parent
    return env


def _mypy_messages(output, filename):
    """mypy's messages about one file, as (line, text), module names unified."""
    messages = []
    for line in output.splitlines():
        if line.startswith(filename + ":"):
            _, lineno, text = line.split(":", 2)
            text = re.sub(r"\b(socketserver|fastsock\._server|fastsock)\.",
                          "ss.", text.replace(filename[:-3] + ".", "probe."))
            messages.append((int(lineno), text.strip()))
    return messages


def test_mypy_sees_the_stdlib_api(tmp_path):
    (tmp_path / "on_stdlib.py").write_text(
        _stdlib_probe("import socketserver as ss"))
    (tmp_path / "on_fastsock.py").write_text(
        _stdlib_probe("import fastsock as ss"))
    (tmp_path / "fastsock_names.py").write_text(_fastsock_names_probe())
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", os.devnull,
         "--no-error-summary", "--hide-error-context", "--no-pretty",
         "on_stdlib.py", "on_fastsock.py", "fastsock_names.py"],
        cwd=tmp_path, env=_mypy_env(), capture_output=True, text=True,
        timeout=240)
    assert proc.stderr == ""
    on_stdlib = _mypy_messages(proc.stdout, "on_stdlib.py")
    on_fastsock = _mypy_messages(proc.stdout, "on_fastsock.py")
    assert on_fastsock == on_stdlib
    # The probe was checked, not waved through as Any: the client's last
    # line is the one error, and every revealed type is a real one.
    errors = [text for _, text in on_stdlib if text.startswith("error:")]
    assert len(errors) == 1 and "incompatible type" in errors[0]
    assert 'note: Revealed type is "io.BufferedIOBase"' in {
        text for _, text in on_fastsock}
    names = _mypy_messages(proc.stdout, "fastsock_names.py")
    assert [text for _, text in names if text.startswith("error:")] == []
    assert ('note: Revealed type is "Literal[\'cython\'] | '
            'Literal[\'python\']"') in {text for _, text in names}


# What Cython adds to every module it compiles.
CYTHON_ARTIFACTS = r"fastsock\.\w+\.(__test__|__reduce_cython__|__setstate_cython__)"


def _importable(module):
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def test_stubs_match_the_runtime(tmp_path):
    # mypy's stubtest imports each module and compares it with its stub:
    # names, signatures, classes.  The compiled modules are compared where
    # they were built.
    modules = ["fastsock._server"] + [
        f"fastsock.{name}" for name in COMPILED_MODULES
        if _importable(f"fastsock.{name}")]
    allowlist = tmp_path / "allowlist.txt"
    allowlist.write_text(CYTHON_ARTIFACTS + "\n")
    proc = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "--concise",
         "--allowlist", str(allowlist), "--ignore-unused-allowlist", *modules],
        cwd=tmp_path, env=_mypy_env(),
        capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
