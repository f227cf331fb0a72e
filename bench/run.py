"""Side-by-side load benchmark: stdlib socketserver against fastsock.

    python bench/run.py          # full run, under 20 minutes; rewrites bench/RESULTS.md
    python bench/run.py --quick  # under 2 minutes; writes bench/out/quick.* only
    python bench/run.py --workload tcp-keepalive --server stdlib --server fastsock
    python bench/run.py --list   # workloads, server classes and servers
    python bench/run.py --multicore  # only the multi-core section (workers)

Every server runs in a process of its own, pinned to one CPU, on loopback;
the load generator (``loadgen.c``, built here with the system compiler) runs
pinned to another.  For each workload the runner starts every server, checks
that each answers correctly under the load generator, then times them: per
concurrency a short warm-up, then several repetitions interleaved across the
servers, so that a slow phase of a shared machine hits all of them alike.
The C echo server (``echo_server.c``) is measured the same way: it shows the
load generator's ceiling.

The multi-core section: the server ``fastsock-workers`` is fastsock with
``workers = N``, one worker per CPU given to servers (all CPUs but the load
generator's; on a machine with fewer than 3 CPUs, all of them, shared with
the load generator, which the run's notes then say), measured against the
single-process ``fastsock`` on ThreadingTCPServer for the workloads and
concurrencies of ``workloads.MULTICORE``.  ``fastsock-pure-workers`` is the
same with the pure-Python engine, against ``fastsock-pure``; it runs only
when named (``--multicore --server fastsock-pure --server
fastsock-pure-workers``), as does ``fastsock-workers-timeout`` (the
workers with ``worker_timeout = 30``).  Its CPU time is the supervisor's
and its workers'; the notes give each worker's memory (RSS, and the part of
it that is its own: private pages, not shared copy-on-write with the
supervisor) and the ratio to one process.  A full run also measures
fairness (below) with those workers.

``--multicore`` runs that section alone, with more rows: the stdlib (one
process), ``fastsock-workers-affinity`` (the same with
``worker_cpu_affinity = True``) and ``uvloop-reuseport`` (uvloop as N
processes, each with its own ``SO_REUSEPORT`` listener and pinned to one
server CPU), plus a fairness measurement (connections per worker after a
burst of keep-alive connections).  ``--server-cpus`` and ``--loadgen-cpus``
place the processes explicitly; the load is then driven by one load
generator per load CPU, each pinned to its CPU, the connections split among
them and their results summed, and each one's CPU use is reported, to show
that the load generator was not the limit.  ``--estimate`` prints the plan
and its expected duration, and exits.

Output: a table on stdout (progress on stderr), a JSON file of every sample
and summary, and a PNG chart when matplotlib is importable.  Which files:

- full run (no --quick, no --workload/--server/--class/--concurrency):
  ``bench/out/full.json``, ``bench/RESULTS.md`` and ``bench/RESULTS.png``;
- ``--quick``: ``bench/out/quick.json`` and ``.png``;
- filtered runs: ``bench/out/partial.json`` and ``.png``.

``--results PATH`` writes a RESULTS.md-style report (and its chart beside it)
for any run.  HTTP workloads are driven by wrk when it is on PATH and
measurements last at least a second (wrk counts whole seconds), else by
loadgen, which also checks every answer's body; the correctness check always
uses loadgen.
"""

import argparse
import compileall
import ctypes
import datetime
import importlib.util
import json
import os
import platform
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import report
from _build import BuildError, build
from workloads import BY_NAME, MULTICORE, MULTICORE_CLASS, WORKLOADS

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
OUT_DIR = BENCH_DIR / "out"
SERVERS_PY = BENCH_DIR / "servers.py"
WRK_SCRIPT = BENCH_DIR / "wrk_report.lua"


@dataclass(frozen=True)
class Server:
    """One implementation under test (or for reference)."""

    name: str
    module: str | None  # module servers.py runs; None: the C echo server
    engine: str | None  # what servers.py must report running
    reference: bool = False
    # Serves with one worker process per server CPU (the multi-core section).
    workers: bool = False
    # With workers: worker_cpu_affinity = True (one worker per CPU).
    affinity: bool = False
    # With workers: their worker_timeout (seconds), or None.
    worker_timeout: float | None = None
    # Runs as that many processes with SO_REUSEPORT listeners (a reference).
    copies: bool = False
    # Measured only when asked for: with --multicore or by name (--server).
    multicore_only: bool = False

    @property
    def multiprocess(self):
        """Serves with several processes: the multi-core section's rows."""
        return self.workers or self.copies


SERVERS = [
    Server("stdlib", "socketserver", "stdlib"),
    Server("fastsock", "fastsock", "cython"),
    Server("fastsock-pure", "fastsock", "python"),
    Server("fastsock-workers", "fastsock", "cython", workers=True),
    Server(
        "fastsock-workers-affinity",
        "fastsock",
        "cython",
        workers=True,
        affinity=True,
        multicore_only=True,
    ),
    # The pure engine with workers, and workers watched for a stuck loop
    # (the compiled engine then takes one request per loop turn): by name
    # only (--server).
    Server("fastsock-pure-workers", "fastsock", "python", workers=True,
           multicore_only=True),
    Server("fastsock-workers-timeout", "fastsock", "cython", workers=True,
           worker_timeout=30.0, multicore_only=True),
    Server("asyncio", "asyncio", "asyncio", reference=True),
    Server("uvloop", "uvloop", "uvloop", reference=True),
    Server(
        "uvloop-reuseport",
        "uvloop",
        "uvloop",
        reference=True,
        copies=True,
        multicore_only=True,
    ),
    Server("ceiling", None, None, reference=True),
]
SERVER_NAMES = [s.name for s in SERVERS]
BY_SERVER = {s.name: s for s in SERVERS}
# The multi-core section's rows (--multicore), in report order.
MULTICORE_SERVERS = [
    "stdlib",
    "fastsock",
    "fastsock-workers",
    "fastsock-workers-affinity",
    "uvloop-reuseport",
]
# Keep-alive connections opened at once to measure how fairly a server with
# several processes spreads them (issue 11: 256 over 8 workers).
FAIRNESS_CONNECTIONS = 256
FAIRNESS_WORKLOAD = "tcp-keepalive"
# A load generator busier than this (CPU time / wall time while timed) may
# have been the limit.
LOADGEN_BUSY = 0.90
# What a run measures unless --server or --multicore says otherwise.
DEFAULT_SERVER_NAMES = [s.name for s in SERVERS if not s.multicore_only]


@dataclass
class Settings:
    duration: float  # seconds per timed measurement
    reps: int  # measurements per server and concurrency
    warmup: float  # seconds of untimed load before them
    http_client: str  # "wrk" or "loadgen"
    request_timeout: float = 5.0
    sources: int = 64  # 127.0.0.x addresses for connection-per-request


FULL = {"duration": 1.0, "reps": 3, "warmup": 0.25}
QUICK = {"duration": 0.25, "reps": 2, "warmup": 0.1}
QUICK_CONCURRENCY = 16
CHECK_SECONDS = 20  # the correctness check's limit; it normally takes far less


class HarnessError(RuntimeError):
    """The benchmark itself could not do what it was asked."""


def _die_with_parent():
    """In a server's child process: get SIGKILL when the runner dies, so that
    not even a killed runner leaves servers behind (Linux)."""
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _child_setup(cpus):
    """What a server's child process does before exec: die with the runner,
    and run on ``cpus`` (when given) from its first instruction, so that
    the workers or copies it forks inherit them, never the runner's."""

    def setup():
        _die_with_parent()
        if cpus:
            os.sched_setaffinity(0, cpus)

    return setup


try:
    _libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
except OSError:
    _libc = None
_PR_SET_PDEATHSIG = 1


class ServerProcess:
    """A server under test, in its own session so that it and any children
    it forks can be killed together."""

    def __init__(self, argv, env, log_path, cpus=None):
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
                # (it only calls prctl and sched_setaffinity)
                preexec_fn=_child_setup(cpus),  # noqa: PLW1509
            )

    @property
    def pid(self):
        return self.proc.pid

    def wait_ready(self, timeout):
        """Read the READY line; return its fields after the word READY."""
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = (
            self.proc.stdout.readline().decode(errors="replace").split()
            if ready
            else []
        )
        if not line or line[0] != "READY":
            raise HarnessError(f"server did not start: {self.log_tail()}")
        return line[1:]

    def _stat_fields(self):
        with open(f"/proc/{self.pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()

    def alive(self):
        """Whether it still runs (without reaping it, so its pid stays ours)."""
        try:
            return self._stat_fields()[0] not in ("Z", "X")
        except OSError:
            return False

    def cpu_seconds(self):
        """User + system time of the server and of its reaped children."""
        fields = self._stat_fields()
        return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")

    def has_children(self):
        """Whether processes it forked (ForkingMixIn) are still around."""
        try:
            with open(f"/proc/{self.pid}/task/{self.pid}/children") as f:
                return bool(f.read().split())
        except OSError:
            return False

    def settle(self, timeout=2.0, quiet=0.05, interval=0.025):
        """Wait (up to timeout) until the server has used no CPU for ``quiet``
        seconds and has no children left: finishing one run's connections
        must not eat into the next server's run."""
        deadline = time.monotonic() + timeout
        before, quiet_since = self.cpu_seconds(), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(interval)
            now = self.cpu_seconds()
            if now != before or self.has_children():
                before, quiet_since = now, time.monotonic()
            elif time.monotonic() - quiet_since >= quiet:
                return

    def status(self):
        """VmRSS, VmHWM (KiB) and Threads from /proc/PID/status; {} if gone."""
        fields = {}
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    name, _, value = line.partition(":")
                    if name in ("VmRSS", "VmHWM", "Threads"):
                        fields[name] = int(value.split()[0])
        except OSError:
            pass
        return fields

    def peak_rss_mib(self):
        peak = self.status().get("VmHWM")
        return None if peak is None else peak / 1024

    def log_tail(self, lines=5):
        try:
            text = Path(self.log_path).read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:]) or "(no output)"

    def stop(self):
        """Kill the server and everything it forked, and reap it."""
        if self.proc.returncode is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        self.proc.stdout.close()


class SupervisedProcess(ServerProcess):
    """A server with worker processes (or a parent of server copies): its
    CPU time and settling take its workers (its live children) in."""

    def worker_pids(self):
        try:
            with open(f"/proc/{self.pid}/task/{self.pid}/children") as f:
                return [int(pid) for pid in f.read().split()]
        except OSError:
            return []

    def cpu_seconds(self):
        total = super().cpu_seconds()
        for pid in self.worker_pids():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue  # exited meanwhile
            total += sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")
        return total

    def has_children(self):
        return False  # its workers stay

    def worker_memory(self):
        """[(Rss, its own: Private_Clean + Private_Dirty) in KiB] of each
        worker, from /proc/PID/smaps_rollup."""
        memory = []
        for pid in self.worker_pids():
            fields = {}
            try:
                with open(f"/proc/{pid}/smaps_rollup") as f:
                    for line in f:
                        name, _, value = line.partition(":")
                        if name in ("Rss", "Private_Clean", "Private_Dirty"):
                            fields[name] = int(value.split()[0])
            except OSError:
                continue
            memory.append(
                (
                    fields.get("Rss", 0),
                    fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0),
                )
            )
        return memory

    def connections_per_worker(self, port):
        """{worker pid: established TCP connections to ``port`` it holds},
        and the same count for the supervisor itself."""
        inodes = established_inodes(port)
        return {
            pid: sum(1 for inode in socket_inodes(pid) if inode in inodes)
            for pid in [self.pid, *self.worker_pids()]
        }


def established_inodes(port):
    """Socket inodes of the ESTABLISHED TCP connections whose local port is
    ``port`` (the server's side), from /proc/net/tcp and tcp6."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    local_port = int(fields[1].rsplit(":", 1)[1], 16)
                    if local_port == port and fields[3] == "01":  # ESTABLISHED
                        inodes.add(int(fields[9]))
        except OSError:
            continue
    return inodes


def socket_inodes(pid):
    """Inodes of the sockets process ``pid`` holds open."""
    inodes = []
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for name in names:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.append(int(link[8:-1]))
    return inodes


# The CPUs this process was given, before main() pins it to one.
_CPUS = frozenset(os.sched_getaffinity(0))


def parse_cpu_list(text):
    """CPUs in the kernel's list format ("0-7", "0,2,8-11"), sorted."""
    cpus = set()
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            first, dash, last = part.partition("-")
            first, last = int(first), int(last if dash else first)
            if first < 0 or last < first:
                raise ValueError(part)
            cpus.update(range(first, last + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a CPU list: {text!r}") from None
    if not cpus:
        raise argparse.ArgumentTypeError(f"not a CPU list: {text!r}")
    return sorted(cpus)


def merge_loadgen_results(results):
    """One result from those of load generators that ran side by side."""
    if len(results) == 1:
        merged = dict(results[0])
    else:
        requests = sum(r["requests"] for r in results)
        kinds = {}
        for r in results:
            for kind, count in r["errors_by_kind"].items():
                kinds[kind] = kinds.get(kind, 0) + count
        merged = {
            "requests": requests,
            "errors": sum(r["errors"] for r in results),
            "late": sum(r.get("late", 0) for r in results),
            "elapsed_s": max(r["elapsed_s"] for r in results),
            "rps": sum(r["rps"] for r in results),
            "p50_us": (
                sum(r["p50_us"] * r["requests"] for r in results) / requests
                if requests
                else 0.0
            ),
            "p99_us": max(r["p99_us"] for r in results),
            "settle_ms": max(r.get("settle_ms", 0.0) for r in results),
            "errors_by_kind": kinds,
            "first_error": next(
                (r["first_error"] for r in results if r["first_error"]), ""
            ),
            "client": "loadgen",
        }
    merged["loadgen_processes"] = len(results)
    merged["loadgen_cpu"] = [
        round(r["loadgen_cpu_s"] / r["elapsed_s"], 3) if r["elapsed_s"] else None
        for r in results
    ]
    return merged


def open_at_once(address, count, timeout):
    """``count`` TCP connections to ``address`` whose connects all start
    (non-blocking) before any is used, so that the whole burst waits in the
    listen queue as the server's workers wake; then blocking again, with
    ``timeout``.  A burst that cannot be opened is closed."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            socks.append(sock)
            sock.setblocking(False)
            sock.connect_ex(address)
        for sock in socks:
            sock.settimeout(timeout)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def split_evenly(total, parts):
    """``total`` split into at most ``parts`` positive shares, as even as
    can be (largest first)."""
    parts = max(1, min(parts, total))
    return [total // parts + (i < total % parts) for i in range(parts)]


def explicit_placement(server_cpus, loadgen_cpus):
    """(server CPUs, load generator CPUs) from --server-cpus/--loadgen-cpus:
    a list not given is every other CPU this process may use (all of them
    if none is left).  Raises HarnessError for CPUs it may not use."""
    allowed = sorted(_CPUS)
    for given in (server_cpus, loadgen_cpus):
        if given and not set(given) <= _CPUS:
            raise HarnessError(
                f"CPUs {sorted(set(given) - _CPUS)} are not among the CPUs "
                f"this process may use ({allowed})"
            )
    if not server_cpus:
        server_cpus = [c for c in allowed if c not in loadgen_cpus] or allowed
    if not loadgen_cpus:
        loadgen_cpus = [c for c in allowed if c not in server_cpus] or allowed
    return server_cpus, loadgen_cpus


def multicore_cpus(pinning):
    """(CPUs for a server with workers, whether the load generator shares
    them): every CPU but the load generator's, or all with fewer than 3."""
    cpus = set(_CPUS)
    if pinning and len(cpus) >= 3:
        return cpus - {pinning[1]}, False
    return cpus, True


@dataclass
class Target:
    """One server process: an implementation, a workload and a class."""

    server: Server
    workload: object
    cls: str | None
    concs: tuple
    process: ServerProcess | None = None
    address: str | None = None
    failure: str | None = None
    base_rss_kib: int | None = None  # VmRSS once started, before any request

    @property
    def label(self):
        return f"{self.server.name} {self.cls or ''}".strip()


class Progress:
    """One status line on stderr, rewritten in place on a terminal."""

    def __init__(self, total, stream=sys.stderr):
        self.total, self.done, self.stream = total, 0, stream
        self.start = self.last_print = time.monotonic()
        self.tty = stream.isatty()

    def show(self, text, advance=0):
        self.done += advance
        now = time.monotonic()
        elapsed = now - self.start
        eta = elapsed / self.done * (self.total - self.done) if self.done else 0
        line = (
            f"[{self.done}/{self.total}] {text}  "
            f"elapsed {elapsed:.0f}s, about {eta:.0f}s left"
        )
        if self.tty:
            width = shutil.get_terminal_size().columns - 1
            self.stream.write("\r" + line[:width].ljust(width))
            self.stream.flush()
        elif now - self.last_print >= 5:
            self.last_print = now
            print(line, file=self.stream, flush=True)

    def finish(self):
        if self.tty:
            self.stream.write(
                "\r" + " " * (shutil.get_terminal_size().columns - 1) + "\r"
            )
            self.stream.flush()


def cpus_for_pinning():
    """(server CPU, load generator CPU), or None with fewer than two CPUs."""
    cpus = sorted(os.sched_getaffinity(0))
    return (cpus[0], cpus[1]) if len(cpus) >= 2 else None


def installed_fastsock():
    """Whether to measure the fastsock installed for this interpreter
    (``--installed-fastsock``, or FASTSOCK_BENCH_INSTALLED=1) rather than
    the checkout's: a lent machine gets a wheel built elsewhere, since the
    checkout's compiled modules do not travel with it."""
    return os.environ.get("FASTSOCK_BENCH_INSTALLED", "") not in ("", "0")


def compile_fastsock():
    """Byte-compile the checkout's fastsock, as installing it would.

    The stdlib's socketserver is imported from bytecode; a server that
    compiled fastsock's source at every start (PYTHONDONTWRITEBYTECODE keeps
    it from caching the result) would pay time and about 1.3 MiB of peak
    memory that an installed copy never does."""
    if not installed_fastsock():
        compileall.compile_dir(REPO_DIR / "fastsock", quiet=1)


def server_env(server):
    env = os.environ.copy()
    if not installed_fastsock():
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(REPO_DIR), env.get("PYTHONPATH")])
        )
    env.pop("FASTSOCK_PURE", None)
    if server.engine == "python":
        env["FASTSOCK_PURE"] = "1"
    return env


class Bench:
    """Starts, checks and times servers; collects samples and failures."""

    def __init__(
        self,
        settings,
        pinning=None,
        workdir=None,
        server_cpus=None,
        loadgen_cpus=None,
        workers=None,
        prebuilt_bin=None,
    ):
        """``pinning``: (CPU of single-process servers, load generator CPU).
        ``server_cpus``/``loadgen_cpus`` (explicit placement): multi-process
        servers run on the first, one load generator per CPU of the second.
        ``workers``: processes of a multi-process server (default: one per
        server CPU).  ``prebuilt_bin``: a folder of static builds of the C
        programs (``_build.py --static``) to use instead of compiling."""
        self.settings = settings
        self.pinning = pinning
        if prebuilt_bin:
            self.loadgen = build("loadgen", prebuilt_bin, static=True)
            self.echo_server = build("echo_server", prebuilt_bin, static=True)
        else:
            self.loadgen = build("loadgen")
            self.echo_server = build("echo_server")
        compile_fastsock()
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="fastsock-bench-"))
        self.samples = []
        self.failures = []
        self.notes = []
        self.fairness = []  # connections per worker after a burst
        self.worker_memory = []  # RSS of each worker or copy
        self.progress = None
        self.fairness_connections = None  # set to measure fairness
        if server_cpus is None:
            self.multicore_cpus, self.multicore_shared = multicore_cpus(pinning)
            self.loadgen_cpus = [pinning[1]] if pinning else []
        else:
            self.multicore_cpus = set(server_cpus)
            self.loadgen_cpus = list(loadgen_cpus)
            self.multicore_shared = bool(self.multicore_cpus & set(loadgen_cpus))
        self.workers = workers or len(self.multicore_cpus)

    # -- servers ---------------------------------------------------------

    def start(self, target):
        """Launch the target's server (returns at once; see wait_ready)."""
        w, server = target.workload, target.server
        name = f"{server.name}-{w.name}-{target.cls or 'ref'}"
        address = (
            str(self.workdir / f"{name}.sock")
            if w.transport == "unix"
            else "127.0.0.1:0"
        )
        family = "--unix" if w.transport == "unix" else "--inet"
        if server.module is None:
            argv = [
                str(self.echo_server),
                w.ceiling_mode,
                family,
                address,
                "-s",
                str(w.size),
            ]
        else:
            argv = [sys.executable, str(SERVERS_PY), server.module, w.name, address]
            if target.cls:
                argv += ["--cls", target.cls]
            if server.workers:
                argv += ["--workers", str(self.workers)]
            if server.affinity:
                argv += ["--worker-cpu-affinity"]
            if server.worker_timeout is not None:
                argv += ["--worker-timeout", str(server.worker_timeout)]
            if server.copies:
                argv += ["--copies", str(self.workers)]
        process_class = SupervisedProcess if server.multiprocess else ServerProcess
        # Its workers or copies, forked once it serves, inherit the CPUs.
        if server.multiprocess:
            cpus = self.multicore_cpus
        else:
            cpus = {self.pinning[0]} if self.pinning else None
        target.process = process_class(
            argv, server_env(server), self.workdir / f"{name}.log", cpus
        )

    def wait_ready(self, target):
        fields = target.process.wait_ready(timeout=30)
        target.address = fields[0]
        engine = fields[1] if len(fields) > 1 else None
        if engine != target.server.engine:
            raise HarnessError(
                f"runs engine {engine!r}, expected {target.server.engine!r}"
            )
        target.process.settle()
        target.base_rss_kib = target.process.status().get("VmRSS")

    def fail(self, target, reason):
        target.failure = reason
        self.failures.append(
            {
                "workload": target.workload.name,
                "cls": target.cls,
                "server": target.server.name,
                "reason": reason,
            }
        )

    # -- load ------------------------------------------------------------

    def _loadgen_argv(self, target, conc, seconds, max_requests=None, max_errors=None):
        w, s = target.workload, self.settings
        family = "--unix" if w.transport == "unix" else "--inet"
        argv = [
            str(self.loadgen),
            w.loadgen_mode,
            family,
            target.address,
            "-c",
            str(conc),
            "-s",
            str(w.size),
            "-d",
            str(seconds),
            "-t",
            str(s.request_timeout),
            "-S",
            str(s.sources),
        ]
        if max_requests:
            argv += ["-n", str(max_requests)]
        if max_errors:
            argv += ["-e", str(max_errors)]
        return argv

    @staticmethod
    def _loadgen_result(returncode, stdout, stderr):
        if returncode != 0:
            raise HarnessError(f"loadgen failed: {stderr.strip()}")
        result = json.loads(stdout)
        result["client"] = "loadgen"
        return result

    def run_loadgen(self, target, conc, seconds, max_requests=None, max_errors=None):
        """Drive the target with loadgen; return its result.

        One load generator per load generator CPU (each pinned to its own),
        the connections (and ``max_requests``) split among them.  They start
        their clocks together, once every one has settled (``-W``); the
        server's CPU time is read at that moment (``server_cpu_s``).  The
        result sums theirs: requests, errors, rates; p99 is the highest of
        theirs and p50 their mean weighted by requests (an approximation
        when there are several); ``loadgen_cpu`` is each one's CPU time
        over its timed wall time."""
        shares = split_evenly(conc, len(self.loadgen_cpus) or 1)
        limit = seconds + self.settings.request_timeout + 30
        procs = []
        try:
            for i, share in enumerate(shares):
                per_proc = -(-max_requests * share // conc) if max_requests else None
                argv = self._loadgen_argv(target, share, seconds, per_proc, max_errors)
                proc = subprocess.Popen(
                    argv + ["-W", "1"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                procs.append(proc)
                if len(shares) > 1:
                    os.sched_setaffinity(proc.pid, {self.loadgen_cpus[i]})
            deadline = time.monotonic() + limit
            for proc in procs:
                if not self._wait_settled(proc, deadline):
                    stdout, stderr = proc.communicate(timeout=5)
                    raise HarnessError(f"loadgen failed: {stderr.strip() or stdout}")
            server_cpu = (
                target.process.cpu_seconds() if target.process is not None else None
            )
            for proc in procs:
                proc.stdin.write("go\n")
                proc.stdin.flush()
            results = []
            for proc in procs:
                stdout, stderr = proc.communicate(
                    timeout=max(1, deadline - time.monotonic())
                )
                last_line = stdout.strip().rsplit("\n", 1)[-1]  # after SETTLED
                results.append(self._loadgen_result(proc.returncode, last_line, stderr))
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate()
        merged = merge_loadgen_results(results)
        if server_cpu is not None:
            merged["server_cpu_s"] = server_cpu
        return merged

    @staticmethod
    def _wait_settled(proc, deadline):
        """Wait for a load generator's SETTLED line; False if it exited."""
        while True:
            ready, _, _ = select.select(
                [proc.stdout], [], [], max(0, deadline - time.monotonic())
            )
            if not ready:
                raise HarnessError("loadgen did not settle in time")
            return proc.stdout.readline().strip() == "SETTLED"

    def run_wrk(self, target, conc, seconds):
        """Drive an HTTP workload with wrk; same result keys as loadgen."""
        w = target.workload
        argv = [
            "wrk",
            "-t1",
            f"-c{conc}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            f"{self.settings.request_timeout:g}s",
            "-s",
            str(WRK_SCRIPT),
            f"http://{target.address}/",
        ]
        closing = w.loadgen_mode == "http10"
        if closing:
            argv[1:1] = ["-H", "Connection: close"]
        done = subprocess.run(
            argv, capture_output=True, check=False, text=True, timeout=seconds + 60
        )
        lines = [x for x in done.stdout.splitlines() if x.startswith("WRK_RESULT ")]
        if done.returncode != 0 or not lines:
            raise HarnessError(
                f"wrk failed: {done.stderr.strip() or done.stdout[-300:]}"
            )
        r = json.loads(lines[-1].split(" ", 1)[1])
        # wrk reports every connection the server closes as a read error:
        # for connection-per-request that is the normal end of a request.
        errors = r["connect"] + r["write"] + r["status"] + r["timeout"]
        errors += 0 if closing else r["read"]
        elapsed = r["duration_us"] / 1e6
        requests = r["requests"] - r["status"]
        return {
            "requests": requests,
            "errors": errors,
            "elapsed_s": elapsed,
            "rps": requests / elapsed,
            "p50_us": r["p50_us"],
            "p99_us": r["p99_us"],
            "first_error": "",
            "client": "wrk",
        }

    def hold_idle(self, target, conc):
        """Open ``conc`` connections, echo one line on each, and measure the
        server while they stay open and idle.

        Returns the number of right answers, errors, the first error, and
        the server's VmRSS, VmHWM and thread count (after it has gone
        quiet) while it holds them.  The connections are then closed.
        """
        w = target.workload
        line = bytes(ord("a") + i % 26 for i in range(w.size - 1)) + b"\n"
        if w.transport == "unix":
            family, address = socket.AF_UNIX, target.address
        else:
            host, port = target.address.rsplit(":", 1)
            family, address = socket.AF_INET, (host, int(port))
        conns, answers, errors, first_error = [], 0, 0, ""
        try:
            for _ in range(conc):
                conn = socket.socket(family, socket.SOCK_STREAM)
                conns.append(conn)
                conn.settimeout(self.settings.request_timeout)
                try:
                    conn.connect(address)
                    conn.sendall(line)
                    got = b""
                    while len(got) < len(line):
                        chunk = conn.recv(len(line) - len(got))
                        if not chunk:
                            break
                        got += chunk
                except OSError as exc:
                    got = exc
                if got == line:
                    answers += 1
                else:
                    errors += 1
                    first_error = first_error or f"connection {len(conns)}: {got!r}"
            target.process.settle()
            status = target.process.status()
        finally:
            for conn in conns:
                conn.close()
        return {
            "requests": answers,
            "errors": errors,
            "first_error": first_error,
            "rss_kib": status.get("VmRSS"),
            "hwm_kib": status.get("VmHWM"),
            "threads": status.get("Threads"),
        }

    def run_client(self, target, conc, seconds):
        if target.workload.is_http and self.settings.http_client == "wrk":
            return self.run_wrk(target, conc, seconds)
        return self.run_loadgen(target, conc, seconds)

    def check_all(self, targets):
        """Fail every target that does not answer each request correctly, at
        its highest concurrency.  Runs before anything is timed; the checks
        run side by side, since they test answers, not speed."""
        running = []
        for target in targets:
            if target.failure:
                continue
            conc = max(target.concs)
            if target.workload.measures_memory:
                self._guarded(target, self._check_idle, target, conc)
                continue
            wanted = max(2 * conc, 40)
            argv = self._loadgen_argv(target, conc, CHECK_SECONDS, wanted, max_errors=1)
            running.append(
                (
                    target,
                    wanted,
                    subprocess.Popen(
                        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
                    ),
                )
            )
        for target, wanted, proc in running:
            try:
                stdout, stderr = proc.communicate(timeout=CHECK_SECONDS + 30)
                result = self._loadgen_result(proc.returncode, stdout, stderr)
            except (HarnessError, subprocess.TimeoutExpired) as exc:
                proc.kill()
                proc.communicate()
                self.fail(target, f"correctness check: {exc}")
                continue
            if result["errors"] or result["requests"] < wanted:
                self.fail(
                    target,
                    f"correctness check: {result['requests']} of {wanted} "
                    f"answers right, {result['errors']} errors "
                    f"(first: {result['first_error'] or 'none'})",
                )
        for target, _, _ in running:
            self._guarded(target, target.process.settle)

    def _check_idle(self, target, conc):
        result = self.hold_idle(target, conc)
        if result["errors"] or result["requests"] < conc:
            self.fail(
                target,
                f"correctness check: {result['requests']} of {conc} answers "
                f"right (first error: {result['first_error'] or 'none'})",
            )

    def warm_up(self, target, conc):
        if target.workload.measures_memory:
            return  # the check held as many connections already
        if self.settings.warmup > 0:
            # loadgen even where wrk times: wrk cannot run under a second.
            self.run_loadgen(target, conc, self.settings.warmup)
            target.process.settle()

    def measure(self, target, conc, rep):
        """Time one run of the load generator; return the sample."""
        if target.workload.measures_memory:
            return self.measure_idle(target, conc, rep)
        process = target.process
        cpu_before = process.cpu_seconds()
        result = self.run_client(target, conc, self.settings.duration)
        # loadgen starts the clock once every keep-alive connection has been
        # answered; run_loadgen reads the server's CPU time at that moment.
        cpu_before = result.get("server_cpu_s", cpu_before)
        process.settle()  # the CPU time includes closing the run's connections
        cpu = process.cpu_seconds() - cpu_before
        requests = result["requests"]
        return {
            "workload": target.workload.name,
            "cls": target.cls,
            "server": target.server.name,
            "conc": conc,
            "rep": rep,
            "rps": result["rps"],
            "requests": requests,
            "errors": result["errors"],
            "elapsed_s": result["elapsed_s"],
            "p50_us": result["p50_us"] if requests else None,
            "p99_us": result["p99_us"] if requests else None,
            "settle_ms": result.get("settle_ms"),
            "cpu_us_per_req": cpu * 1e6 / requests if requests else None,
            "peak_rss_mib": process.peak_rss_mib(),
            "first_error": result["first_error"],
            "client": result["client"],
            # Each load generator's CPU time / wall time while timed.
            "loadgen_cpu": result.get("loadgen_cpu"),
        }

    def measure_idle(self, target, conc, rep):
        """Hold ``conc`` idle connections; return the memory sample."""
        result = self.hold_idle(target, conc)
        target.process.settle()
        base, rss = target.base_rss_kib, result["rss_kib"]
        # The kernel syncs its per-thread RSS counts lazily: VmHWM read
        # later can lag a VmRSS read earlier by a few pages.
        readings = [target.process.peak_rss_mib()]
        readings += [kib / 1024 for kib in (result["hwm_kib"], rss) if kib]
        peak = max((mib for mib in readings if mib), default=None)
        return {
            "workload": target.workload.name,
            "cls": target.cls,
            "server": target.server.name,
            "conc": conc,
            "rep": rep,
            "rps": None,
            "requests": result["requests"],
            "errors": result["errors"],
            "elapsed_s": None,
            "p50_us": None,
            "p99_us": None,
            "cpu_us_per_req": None,
            "peak_rss_mib": peak,
            "base_rss_mib": None if base is None else base / 1024,
            "idle_rss_mib": None if rss is None else rss / 1024,
            "kib_per_conn": (
                None if None in (base, rss) or not conc else (rss - base) / conc
            ),
            "threads": result["threads"],
            "first_error": result["first_error"],
            "client": "run.py",
        }

    def measure_fairness(self, target, conns, rep):
        """Open ``conns`` keep-alive connections at once (non-blocking
        connects in a burst), echo one line on each (so that every one has
        been accepted and is being served), then count the connections each
        worker holds, and close them.  Returns the fairness record."""
        host, port = target.address.rsplit(":", 1)
        address, port = (host, int(port)), int(port)
        line = bytes(ord("a") + i % 26 for i in range(63)) + b"\n"
        answers = 0
        socks = open_at_once(address, conns, self.settings.request_timeout)
        try:
            for sock in socks:
                try:
                    sock.sendall(line)
                except OSError:
                    pass
            for sock in socks:
                got = b""
                try:
                    while len(got) < len(line):
                        chunk = sock.recv(len(line) - len(got))
                        if not chunk:
                            break
                        got += chunk
                except OSError:
                    pass
                answers += got == line
            counts = target.process.connections_per_worker(port)
        finally:
            for sock in socks:
                sock.close()
        target.process.settle()
        supervisor = counts.pop(target.process.pid, 0)
        per_worker = sorted(counts.values())
        fair = conns / len(per_worker) if per_worker else None
        return {
            "server": target.server.name,
            "workload": target.workload.name,
            "rep": rep,
            "connections": conns,
            "answered": answers,
            "workers": len(per_worker),
            "per_worker": per_worker,
            "held_by_supervisor": supervisor,
            "fair_share": fair,
            "min_ratio": per_worker[0] / fair if fair else None,
            "max_ratio": per_worker[-1] / fair if fair else None,
        }

    def _fairness_step(self, workload, target):
        for rep in range(self.settings.reps):
            self._step(f"{workload.name}: fairness of {target.label} rep {rep + 1}")
            record = self._guarded(
                target, self.measure_fairness, target, self.fairness_connections, rep
            )
            if record is not None:
                self.fairness.append(record)

    # -- orchestration ---------------------------------------------------

    def start_all(self, targets):
        """Start every target's server; fail those that do not come up."""
        for target in targets:
            self.start(target)
        for target in targets:
            try:
                self.wait_ready(target)
            except HarnessError as exc:
                self.fail(target, str(exc))

    def stop_all(self, targets):
        for target in targets:
            if target.server.multiprocess and target.process is not None:
                self._note_worker_memory(target)
        for target in targets:
            if target.process is not None:
                target.process.stop()

    def _note_worker_memory(self, target):
        memory = target.process.worker_memory()
        if not memory:
            return
        supervisor = target.process.status().get("VmRSS")
        self.worker_memory.append(
            {
                "server": target.server.name,
                "workload": target.workload.name,
                "supervisor_rss_kib": supervisor,
                "worker_rss_kib": [rss for rss, _ in memory],
                "worker_private_kib": [own for _, own in memory],
            }
        )
        self.notes.append(
            f"{target.label} on {target.workload.name}: supervisor RSS "
            f"{report.format_mib((supervisor or 0) / 1024)} MiB; each worker RSS "
            + ", ".join(report.format_mib((rss or 0) / 1024) for rss, _ in memory)
            + " MiB, of which its own (private, not shared with the supervisor) "
            + ", ".join(report.format_mib(own / 1024) for _, own in memory)
            + " MiB"
        )

    def run_workload(self, workload, targets):
        """Start, check and time every target of one workload."""
        s = self.settings
        try:
            self.start_all(targets)
            self._step(f"{workload.name}: checking every server's answers")
            self.check_all(targets)
            for conc in sorted({c for t in targets for c in t.concs}):
                active = [t for t in targets if conc in t.concs]
                for target in active:
                    self._step(f"{workload.name} c={conc}: warming up {target.label}")
                    self._guarded(target, self.warm_up, target, conc)
                for rep in range(s.reps):
                    # Rotate the order so that no server is always first.
                    shift = rep % len(active)
                    for target in active[shift:] + active[:shift]:
                        self._measure_step(workload, target, conc, rep)
            if self.fairness_connections and workload.name == FAIRNESS_WORKLOAD:
                for target in targets:
                    if target.server.multiprocess:
                        self._fairness_step(workload, target)
        finally:
            self.stop_all(targets)

    def _measure_step(self, workload, target, conc, rep):
        reps = self.settings.reps
        text = f"{workload.name} c={conc}: {target.label} rep {rep + 1}/{reps}"
        self._step(text)
        sample = self._guarded(target, self.measure, target, conc, rep)
        if sample is None:
            self._step(text, advance=1)
            return
        self.samples.append(sample)
        if sample["rps"] is None:
            done = f"{report.format_mib(sample['idle_rss_mib'])} MiB RSS"
        else:
            done = f"{report.format_rate(sample['rps'])} req/s"
        self._step(f"{text}: {done}", advance=1)

    def _guarded(self, target, action, *args):
        """Run action(*args) for a target that has not failed; a harness error
        or the server's death fails the target instead of the whole run."""
        if target.failure:
            return None
        try:
            result = action(*args)
        except (HarnessError, subprocess.TimeoutExpired) as exc:
            self.fail(target, str(exc))
            return None
        if not target.process.alive():
            self.fail(target, f"server exited: {target.process.log_tail()}")
            return None
        return result

    def _step(self, text, advance=0):
        if self.progress:
            self.progress.show(text, advance)

    def close(self):
        """Remove the working folder (Unix sockets, server logs)."""
        shutil.rmtree(self.workdir, ignore_errors=True)


def available_servers():
    """({server name: why it cannot run here}, fastsock engines available)."""
    missing = {}
    checkout = [] if installed_fastsock() else [str(REPO_DIR)]
    sys.path[:0] = checkout
    try:
        from fastsock import _backend

        engines = _backend.available()
    finally:
        for path in checkout:
            sys.path.remove(path)
    if "cython" not in engines:
        for name in ("fastsock", "fastsock-workers", "fastsock-workers-affinity"):
            missing[name] = (
                f"compiled engine not built (fastsock._backend.available() "
                f"is {engines}); build it with "
                f"`python setup.py build_ext --inplace`"
            )
    if importlib.util.find_spec("uvloop") is None:
        missing["uvloop"] = missing["uvloop-reuseport"] = "uvloop is not installed"
    return missing, engines


def plan(args, skip):
    """[(workload, [Target])] for what the command line selects."""
    wanted = args.server or [
        s.name
        for s in SERVERS
        if not s.multicore_only or getattr(args, "multicore", False)
    ]
    servers = [s for s in SERVERS if s.name in wanted and s.name not in skip]
    groups = []
    for workload in WORKLOADS:
        if args.workload and workload.name not in args.workload:
            continue
        classes = {}
        for cls, concs in workload.classes.items():
            if args.cls and cls not in args.cls:
                continue
            if args.quick:
                concs = (
                    (QUICK_CONCURRENCY,) if QUICK_CONCURRENCY in concs else concs[:1]
                )
            if args.concurrency:
                concs = tuple(c for c in concs if c in args.concurrency)
            if getattr(args, "multicore", False) and not args.quick:
                # The single process only where the workers run.
                concs = tuple(c for c in concs if c in MULTICORE[workload.name])
            if concs:
                classes[cls] = concs
        all_concs = tuple(sorted({c for concs in classes.values() for c in concs}))
        targets = []
        for server in servers:
            if server.multiprocess:
                targets += multicore_targets(args, server, workload, classes)
            elif not server.reference:
                targets += [
                    Target(server, workload, cls, concs)
                    for cls, concs in classes.items()
                ]
            elif all_concs and (server.name == "ceiling" or workload.asyncio_reference):
                targets.append(Target(server, workload, None, all_concs))
        if targets:
            groups.append((workload, targets))
    return groups


def multicore_targets(args, server, workload, classes):
    """The multi-core section's target for ``workload``, if it has one."""
    concs = MULTICORE.get(workload.name, ())
    if not concs or MULTICORE_CLASS not in classes:
        return []
    if args.quick:  # where the quick run measures one process too
        concs = (QUICK_CONCURRENCY,)
    if args.concurrency:
        concs = tuple(c for c in concs if c in args.concurrency)
    cls = None if server.reference else MULTICORE_CLASS
    return [Target(server, workload, cls, concs)] if concs else []


def placement_text(bench):
    """Where the multi-process servers and the load generators ran."""
    cpus = sorted(bench.multicore_cpus)
    text = f"{bench.workers} workers (or processes) on CPUs {cpus}"
    if bench.multicore_shared:
        return text + (
            ", shared with the load generator (this machine has too few CPUs "
            "to give it CPUs of its own, or the CPU lists overlap)"
        )
    loads = bench.loadgen_cpus
    if len(loads) > 1:
        return text + f"; {len(loads)} load generators, one on each of CPUs {loads}"
    return text + f"; the load generator on CPU {loads[0]}"


def multicore_notes(bench, summary):
    """What a reader of the multi-core section needs: placement, ratios."""
    notes = []
    # Each server with workers, and the single process it is measured
    # against (the same module and engine).
    single = {
        s.name: next(o.name for o in SERVERS
                     if (o.module, o.engine, o.workers)
                     == (s.module, s.engine, False))
        for s in SERVERS if s.workers
    }
    if not any(key[2] in single for key in summary):
        return notes
    notes.append(f"fastsock workers: {placement_text(bench)}")
    for (workload, cls, server, conc), entry in summary.items():
        if server not in single:
            continue
        one = summary.get((workload, cls, single[server], conc))
        if one and one["rps"] and entry["rps"]:
            notes.append(
                f"{workload} {cls} c={conc}: {server}: {bench.workers} workers "
                f"{report.format_rate(entry['rps'])} req/s, one process "
                f"{report.format_rate(one['rps'])}: "
                f"×{report.format_ratio(entry['rps'] / one['rps'])}"
            )
    return notes


# Issue 11's targets for workers=8 against one pinned process, by workload.
MULTICORE_TARGETS = {"tcp-keepalive": 6.0, "tcp-cpr": 5.0}
UVLOOP_AIM = 0.9  # of uvloop as N processes on the same CPUs
FAIR_RANGE = (0.5, 1.5)  # of its fair share, for every worker


def _ratio(entry, base):
    if entry and base and entry["rps"] and base["rps"]:
        return entry["rps"] / base["rps"]
    return None


def _loadgen_busiest(samples, key):
    """The highest CPU use of any load generator in the samples of ``key``."""
    uses = [
        use
        for s in samples
        if (s["workload"], s["cls"], s["server"], s["conc"]) == key
        for use in (s.get("loadgen_cpu") or [])
        if use is not None
    ]
    return max(uses) if uses else None


def multicore_section(bench, summary):
    """The multi-core section of the report, as markdown lines: throughput
    with the ratios to one pinned process and to uvloop as N processes,
    the load generators' CPU use, the targets of issue 11, fairness and
    the workers' memory.  Empty when no multi-process server ran."""
    if not any(BY_SERVER[key[2]].multiprocess for key in summary):
        return []
    n = bench.workers
    single = bench.pinning[0] if bench.pinning else "-"
    lines = [
        f"Placement: single-process servers on CPU {single}"
        f"; {placement_text(bench)}.",
        "",
        f"| workload | conc | server | req/s | ×fastsock 1 process (pinned) "
        f"| ×uvloop {n} processes "
        "| CPU µs/req | busiest load generator CPU |",
        "|---|---|---|---|---|---|---|---|",
    ]
    verdicts, busy = [], []
    cases = sorted(
        {(w, c) for (w, _, _, c) in summary if w in MULTICORE},
        key=lambda wc: (list(MULTICORE).index(wc[0]), wc[1]),
    )
    for workload, conc in cases:
        one = summary.get((workload, MULTICORE_CLASS, "fastsock", conc))
        uv = summary.get((workload, None, "uvloop-reuseport", conc))
        for name in MULTICORE_SERVERS:
            cls = None if BY_SERVER[name].reference else MULTICORE_CLASS
            key = (workload, cls, name, conc)
            entry = summary.get(key)
            if entry is None:
                continue
            vs_one, vs_uv = _ratio(entry, one), _ratio(entry, uv)
            use = _loadgen_busiest(bench.samples, key)
            if use is not None and use >= LOADGEN_BUSY:
                busy.append(f"{workload} c={conc} {name}")
            label = report.SERVER_LABELS[name].replace(" N ", f" {n} ")
            lines.append(
                f"| {workload} | {conc} | {label} "
                f"| {report.format_rate(entry['rps'])}"
                + (f" !{entry['errors']}" if entry["errors"] else "")
                + f" | {'-' if vs_one is None else report.format_ratio(vs_one)}"
                f" | {'-' if vs_uv is None else report.format_ratio(vs_uv)}"
                f" | {report._number(entry['cpu_us_per_req'], 1)}"
                f" | {'-' if use is None else f'{use:.0%}'} |"
            )
            if not BY_SERVER[name].workers:
                continue
            goal = MULTICORE_TARGETS.get(workload)
            if goal and vs_one is not None:
                verdicts.append(
                    f"{workload} c={conc} {name}: ×{report.format_ratio(vs_one)} "
                    f"one pinned process (target ≥ {goal:g}× with 8 workers): "
                    + ("met" if vs_one >= goal else "NOT met")
                )
            if vs_uv is not None:
                verdicts.append(
                    f"{workload} c={conc} {name}: ×{report.format_ratio(vs_uv)} "
                    f"uvloop as {n} processes (aim ≥ {UVLOOP_AIM:g}×): "
                    + ("met" if vs_uv >= UVLOOP_AIM else "NOT met")
                )
    lines += [
        "",
        "Ratios are of medians from this run.  Load generator CPU: CPU time over "
        "wall time while timed, of the busiest load generator process (at 100% "
        "it, not the server, may be the limit).",
        "",
    ]
    if busy:
        lines += [
            f"**The load generator was busy (≥ {LOADGEN_BUSY:.0%} of a CPU) in: "
            + ", ".join(busy)
            + ".**  Give it more CPUs (--loadgen-cpus) for those rows.",
            "",
        ]
    else:
        lines += [
            f"No load generator was busier than {LOADGEN_BUSY:.0%} of its CPU.",
            "",
        ]
    if bench.multicore_shared:
        lines += [
            "The servers shared their CPUs with the load generator: the targets "
            "below are for a machine with CPUs for each (issue 11: at least 12).",
            "",
        ]
    if verdicts:
        lines += ["Targets (issue 11):", "", *(f"- {v}" for v in verdicts), ""]
    lines += fairness_lines(bench.fairness) + memory_lines(bench.worker_memory)
    return lines


def fairness_lines(records):
    """Markdown table of the fairness bursts: connections per worker."""
    if not records:
        return []
    lines = [
        "Fairness: keep-alive connections opened at once, each answered once, "
        "then counted per worker (the supervisor's own count in brackets when "
        f"not 0); every worker should hold {FAIR_RANGE[0]}× to {FAIR_RANGE[1]}× "
        "its fair share.",
        "",
        "| server | rep | connections | workers | fair share | per worker "
        "| min/fair | max/fair | within |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        within = (
            r["min_ratio"] is not None
            and FAIR_RANGE[0] <= r["min_ratio"]
            and r["max_ratio"] <= FAIR_RANGE[1]
            and r["answered"] == r["connections"]
        )
        held = r["held_by_supervisor"]
        lines.append(
            f"| {r['server']} | {r['rep'] + 1} | {r['answered']}/{r['connections']} "
            f"| {r['workers']} | {r['fair_share'] or 0:.1f} "
            f"| {' '.join(map(str, r['per_worker']))}"
            + (f" [{held}]" if held else "")
            + f" | {r['min_ratio'] or 0:.2f} | {r['max_ratio'] or 0:.2f} "
            f"| {'yes' if within else 'NO'} |"
        )
    return lines + [""]


def memory_lines(records):
    """Markdown lines: RSS per extra worker (medians over the workloads)."""
    lines = []
    by_server = {}
    for r in records:
        by_server.setdefault(r["server"], []).append(r)
    for server, recs in by_server.items():
        rss = [kib for r in recs for kib in r["worker_rss_kib"]]
        own = [kib for r in recs for kib in r["worker_private_kib"]]
        sup = [r["supervisor_rss_kib"] for r in recs if r["supervisor_rss_kib"]]
        if not rss:
            continue
        lines.append(
            f"- {server}: each extra worker RSS median "
            f"{report.format_mib(statistics.median(rss) / 1024)} MiB, of which "
            f"its own (private, not shared copy-on-write) "
            f"{report.format_mib(statistics.median(own) / 1024)} MiB"
            + (
                f"; supervisor (or parent) RSS "
                f"{report.format_mib(statistics.median(sup) / 1024)} MiB"
                if sup
                else ""
            )
            + f" ({len(recs)} servers, {len(rss)} workers)"
        )
    return (["Memory per worker:", "", *lines, ""]) if lines else []


def estimate_seconds(groups, settings, fairness_connections):
    """About how long running ``groups`` takes: the timed runs plus what
    each costs around them (starting servers, checks, settling)."""
    total = 0.0
    for workload, targets in groups:
        total += 3 + 0.5 * len(targets)  # start, check, stop
        for target in targets:
            runs = len(target.concs)
            total += runs * (settings.warmup + 0.5)
            total += runs * settings.reps * (settings.duration + 0.5)
            if (
                fairness_connections
                and workload.name == FAIRNESS_WORKLOAD
                and target.server.multiprocess
            ):
                total += settings.reps * 1.5
    return total


def git_commit():
    def git(*argv):
        return subprocess.run(
            ["git", "-C", str(REPO_DIR), *argv],
            capture_output=True,
            check=False,
            text=True,
        ).stdout.strip()

    if os.environ.get("FASTSOCK_BENCH_COMMIT"):  # a copy without .git (device)
        return os.environ["FASTSOCK_BENCH_COMMIT"]
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    if git("status", "--porcelain", "--untracked-files=no"):
        commit += " (with uncommitted changes)"
    return commit


def machine_description():
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                x.split(":", 1)[1].strip() for x in f if x.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}"


def wrk_version():
    done = subprocess.run(
        ["wrk", "--version"], capture_output=True, check=False, text=True
    )
    return (done.stdout + done.stderr).split("[")[0].strip()


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Side-by-side load benchmark of socketserver implementations.",
        epilog="Full run: rewrites bench/RESULTS.md; --quick and filtered runs do not "
        "(see --results).",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="concurrency 16 (1 for one-connection-at-a-time servers), "
        "short measurements: under 2 minutes",
    )
    parser.add_argument(
        "--workload",
        action="append",
        choices=sorted(BY_NAME),
        help="only this workload (repeatable)",
    )
    parser.add_argument(
        "--server",
        action="append",
        choices=SERVER_NAMES,
        help="only this server (repeatable)",
    )
    parser.add_argument(
        "--class",
        dest="cls",
        action="append",
        metavar="CLASS",
        help="only this server class, e.g. ThreadingTCPServer (repeatable)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        action="append",
        help="only this concurrency (repeatable)",
    )
    parser.add_argument("--duration", type=float, help="seconds per measurement")
    parser.add_argument("--reps", type=int, help="measurements per server and case")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up per case")
    parser.add_argument(
        "--http-client",
        choices=["auto", "wrk", "loadgen"],
        default="auto",
        help="auto: wrk when on PATH and measurements last >= 1 s",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=OUT_DIR,
        help="folder for the JSON file and chart (default bench/out)",
    )
    parser.add_argument(
        "--results",
        type=Path,
        help="write a RESULTS.md-style report here (default: "
        "bench/RESULTS.md for a full run only)",
    )
    parser.add_argument(
        "--multicore",
        action="store_true",
        help="only the multi-core section: fastsock with workers against one "
        "process (see workloads.MULTICORE)",
    )
    parser.add_argument(
        "--server-cpus",
        type=parse_cpu_list,
        metavar="LIST",
        help="CPUs for the servers, e.g. 0-7: multi-process servers run one "
        "process per CPU, single-process ones on the first (default: every "
        "CPU not given to the load generator)",
    )
    parser.add_argument(
        "--loadgen-cpus",
        type=parse_cpu_list,
        metavar="LIST",
        help="CPUs for the load generator, e.g. 8-15: one load generator "
        "process per CPU, pinned to it, the connections split among them "
        "(default: every CPU not given to servers)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="processes of the multi-process servers (default: one per server CPU)",
    )
    parser.add_argument(
        "--fairness-connections",
        type=int,
        metavar="N",
        help=f"keep-alive connections opened at once to count connections "
        f"per worker of the multi-process servers (default "
        f"{FAIRNESS_CONNECTIONS} in a full or --multicore run, not --quick; "
        f"0: do not measure)",
    )
    parser.add_argument(
        "--installed-fastsock",
        action="store_true",
        help="measure the fastsock installed for this Python, not the checkout's",
    )
    parser.add_argument(
        "--prebuilt-bin",
        type=Path,
        metavar="DIR",
        help="static builds of loadgen and echo_server in DIR "
        "(python bench/_build.py --static --bin-dir DIR ...), used instead "
        "of compiling",
    )
    parser.add_argument(
        "--estimate",
        action="store_true",
        help="print what would run and about how long it takes, and exit",
    )
    parser.add_argument(
        "--list", action="store_true", help="list what can be run and exit"
    )
    return parser.parse_args(argv)


def print_list():
    print("Workloads (server classes: concurrencies):")
    for w in WORKLOADS:
        print(f"  {w.name:18} {w.title}")
        for cls, concs in w.classes.items():
            print(f"  {'':18}   {cls}: {', '.join(map(str, concs))}")
    print("Servers:", ", ".join(DEFAULT_SERVER_NAMES))
    print("Named only (--server):",
          ", ".join(s.name for s in SERVERS if s.multicore_only))


def make_settings(args):
    defaults = QUICK if args.quick else FULL
    duration = args.duration or defaults["duration"]
    http_client = args.http_client
    if http_client == "auto":
        http_client = "wrk" if shutil.which("wrk") and duration >= 1 else "loadgen"
    return Settings(
        duration=duration,
        reps=args.reps or defaults["reps"],
        warmup=defaults["warmup"] if args.warmup is None else args.warmup,
        http_client=http_client,
    )


def describe_run(
    argv, settings, pinning, engines, load_before, wall_s, notes, bench=None
):
    """The facts a reader needs to judge the numbers (meta of the JSON)."""
    clients = "loadgen (bench/loadgen.c: epoll, closed loop, checks every byte)"
    if settings.http_client == "wrk":
        clients += f"; HTTP workloads: {wrk_version()} (-t1)"
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(["python", "bench/run.py", *argv]),
        "commit": git_commit(),
        "machine": machine_description(),
        # Other work on the machine skews every number: say how much there was.
        "load": (
            f"{load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end "
            f"(1-minute averages; {os.cpu_count()} CPUs)"
        ),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "engines": engines,
        "pinning": (
            f"servers pinned to CPU {pinning[0]}, load generator to CPU {pinning[1]}"
            if pinning
            else "no pinning (fewer than 2 CPUs)"
        )
        + (
            f"; multi-process servers: {placement_text(bench)}"
            if bench is not None
            and any(BY_SERVER[x["server"]].multiprocess for x in bench.samples)
            else ""
        ),
        "fastsock": fastsock_origin(),
        "clients": clients,
        "settings": {
            "duration_s": settings.duration,
            "reps": settings.reps,
            "warmup_s": settings.warmup,
            "http_client": settings.http_client,
            "request_timeout_s": settings.request_timeout,
            "source_addresses": settings.sources,
        },
        "wall_s": wall_s,
        "notes": notes,
    }


def fastsock_origin():
    """Which fastsock the servers import: the checkout, or an installed one."""
    if not installed_fastsock():
        return f"the checkout ({REPO_DIR / 'fastsock'})"
    spec = importlib.util.find_spec("fastsock")
    return f"installed: {spec.origin if spec else 'not found'}"


def print_report(summary, failures, notes):
    throughput = report.throughput_table(summary, failures)
    if throughput[1]:
        print(report.render_text(*throughput))
        print()
        print(report.legend_text())
        print()
        print(report.render_text(*report.detail_table(summary)))
    memory = report.memory_table(summary)
    if memory[1]:
        if throughput[1]:
            print()
        print(report.render_text(*memory))
    for note in notes:
        print(f"note: {note}")
    for f in failures:
        print(
            f"note: FAILED {f['server']} {f['cls'] or ''} on {f['workload']}: "
            f"{f['reason']}"
        )


def write_outputs(meta, bench, summary, out_dir, name, results_path):
    """JSON file, chart and (when results_path) RESULTS.md; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if results_path:
        results_path.parent.mkdir(parents=True, exist_ok=True)
    chart_path = (
        results_path.with_suffix(".png") if results_path else out_dir / f"{name}.png"
    )
    chart_note = report.write_chart(chart_path, summary)
    if chart_note:
        meta["notes"].append(chart_note)
        print(f"note: {chart_note}")
    json_path = out_dir / f"{name}.json"
    report.write_json(json_path, meta, bench.samples, summary, bench.failures)
    written = [json_path] + ([] if chart_note else [chart_path])
    if results_path:
        chart_name = None if chart_note else chart_path.name
        results_path.write_text(
            report.results_markdown(meta, summary, bench.failures, chart_name)
        )
        written.append(results_path)
    return written


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.list:
        print_list()
        return 0
    settings = make_settings(args)
    if args.installed_fastsock:
        os.environ["FASTSOCK_BENCH_INSTALLED"] = "1"  # the servers inherit it
    if args.multicore:
        args.server = args.server or list(MULTICORE_SERVERS)
        args.cls = args.cls or [MULTICORE_CLASS]
        args.workload = args.workload or list(MULTICORE)
        if not args.quick:  # quick: both at QUICK_CONCURRENCY
            args.concurrency = args.concurrency or sorted(
                {c for concs in MULTICORE.values() for c in concs}
            )
    filtered = args.workload or args.server or args.cls or args.concurrency
    name = "quick" if args.quick else "partial" if filtered else "full"
    results_path = args.results or (
        BENCH_DIR / "RESULTS.md" if name == "full" else None
    )

    skip, engines = available_servers()
    notes = [
        f"{server} skipped: {reason}"
        for server, reason in skip.items()
        if not args.server or server in args.server
    ]
    groups = plan(args, skip)
    if not groups:
        print(
            "nothing to run: the filters select no server and workload", file=sys.stderr
        )
        return 2
    server_cpus = loadgen_cpus = None
    if args.server_cpus or args.loadgen_cpus:
        try:
            server_cpus, loadgen_cpus = explicit_placement(
                args.server_cpus, args.loadgen_cpus
            )
        except HarnessError as exc:
            print(exc, file=sys.stderr)
            return 2
        pinning = (server_cpus[0], loadgen_cpus[0])
    else:
        pinning = cpus_for_pinning()
    fairness = args.fairness_connections
    if fairness is None:
        # The multi-core section's runs, but not --quick ones, measure it.
        measured = args.multicore or name == "full"
        fairness = FAIRNESS_CONNECTIONS if measured and not args.quick else 0
    if fairness and fairness < 1:
        fairness = 0
    estimate = estimate_seconds(groups, settings, fairness)
    print(
        f"plan: {sum(len(t) for _, t in groups)} servers on "
        f"{len(groups)} workloads, "
        f"{sum(len(t.concs) for _, ts in groups for t in ts) * settings.reps} "
        f"measurements of {settings.duration:g} s; estimated {estimate:.0f} s",
        file=sys.stderr,
    )
    if args.estimate:
        for workload, targets in groups:
            for t in targets:
                print(f"  {workload.name:14} {t.label:40} c={list(t.concs)}")
        print(f"estimated {estimate:.0f} s")
        return 0
    if loadgen_cpus:
        os.sched_setaffinity(0, set(loadgen_cpus))  # the load generators inherit it
    elif pinning:
        os.sched_setaffinity(0, {pinning[1]})  # the load generators inherit it
    try:
        bench = Bench(
            settings,
            pinning,
            server_cpus=server_cpus,
            loadgen_cpus=loadgen_cpus,
            workers=args.workers,
            prebuilt_bin=args.prebuilt_bin,
        )
    except BuildError as exc:
        print(f"cannot build the load generator: {exc}", file=sys.stderr)
        return 2
    bench.fairness_connections = fairness

    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    bench.progress = Progress(
        sum(len(t.concs) * settings.reps for _, targets in groups for t in targets)
    )
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    # A terminated runner still stops its servers (in run_workload's finally).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        for workload, targets in groups:
            bench.run_workload(workload, targets)
    except KeyboardInterrupt:
        notes.append("interrupted: partial results")
        print("\ninterrupted: reporting what was measured", file=sys.stderr)
        if not args.results:
            results_path = None  # a partial run must not replace RESULTS.md
    finally:
        bench.progress.finish()
        bench.close()

    wall_s = round(time.monotonic() - started, 1)
    summary = report.summarize(bench.samples)
    notes += multicore_notes(bench, summary) + bench.notes
    meta = describe_run(
        argv, settings, pinning, engines, load_before, wall_s, notes, bench
    )
    meta["estimate_s"] = round(estimate)
    meta["multicore"] = multicore_section(bench, summary)
    meta["fairness"] = bench.fairness
    meta["worker_memory"] = bench.worker_memory
    print_report(summary, bench.failures, notes)
    if meta["multicore"]:
        print("\nMulti-core\n\n" + "\n".join(meta["multicore"]))
    written = write_outputs(meta, bench, summary, args.out, name, results_path)
    print(f"\n{wall_s:.0f} s; wrote " + ", ".join(map(str, written)))
    return 1 if bench.failures else 0


if __name__ == "__main__":
    sys.exit(main())
