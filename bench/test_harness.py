"""Tests of the benchmark harness itself: it must measure what it claims.

They run with the normal suite and stay short: each starts a few servers on
loopback, drives them for a fraction of a second and kills them by PID.
"""

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
import report
import run
from _build import build, compiler
from workloads import BY_NAME, WORKLOADS

pytestmark = pytest.mark.skipif(
    compiler() is None, reason="no C compiler to build loadgen"
)


@pytest.fixture
def bench():
    b = run.Bench(
        run.Settings(duration=0.2, reps=1, warmup=0.05, http_client="loadgen")
    )
    yield b
    b.close()


def start_echo_server(bench, mode, *extra, unix=False):
    """A C echo server as a Target the bench can drive; caller stops it."""
    workload = {
        "stream": BY_NAME["tcp-keepalive"],
        "line": BY_NAME["tcp-cpr"],
        "udp": BY_NAME["udp"],
        "http": BY_NAME["http11"],
    }[mode]
    if unix:
        workload = BY_NAME["unix-keepalive"]
    target = run.Target(run.SERVERS[-1], workload, None, (4,))
    address = str(bench.workdir / "echo.sock") if unix else "127.0.0.1:0"
    family = "--unix" if unix else "--inet"
    argv = [
        str(bench.echo_server),
        mode,
        family,
        address,
        "-s",
        str(workload.size),
        *extra,
    ]
    target.process = run.ServerProcess(
        argv, os.environ.copy(), bench.workdir / "echo.log"
    )
    target.address = target.process.wait_ready(timeout=10)[0]
    return target


LOADGEN_MODES = [
    ("stream", "echo"),
    ("line", "echo-cpr"),
    ("udp", "udp"),
    ("http", "http11"),
    ("http", "http10"),
]


@pytest.mark.parametrize("server_mode, loadgen_mode", LOADGEN_MODES)
def test_wrong_answers_are_errors_not_throughput(bench, server_mode, loadgen_mode):
    target = start_echo_server(bench, server_mode, "--corrupt")
    try:
        target.workload = next(w for w in WORKLOADS if w.loadgen_mode == loadgen_mode)
        result = bench.run_loadgen(target, conc=4, seconds=0.2)
    finally:
        target.process.stop()
    assert result["errors"] > 0
    assert result["requests"] == 0
    assert result["rps"] == 0
    assert result["first_error"]


@pytest.mark.parametrize("server_mode, loadgen_mode", LOADGEN_MODES)
def test_right_answers_are_counted(bench, server_mode, loadgen_mode):
    target = start_echo_server(bench, server_mode)
    try:
        target.workload = next(w for w in WORKLOADS if w.loadgen_mode == loadgen_mode)
        result = bench.run_loadgen(target, conc=8, seconds=5, max_requests=500)
    finally:
        target.process.stop()
    assert result["errors"] == 0, result["first_error"]
    assert result["requests"] >= 500
    assert result["p50_us"] > 0 and result["p99_us"] >= result["p50_us"]


def test_unix_socket_echo(bench):
    target = start_echo_server(bench, "stream", unix=True)
    try:
        result = bench.run_loadgen(target, conc=4, seconds=5, max_requests=200)
    finally:
        target.process.stop()
    assert result["errors"] == 0 and result["requests"] >= 200


def test_answer_cut_short_is_an_error(bench):
    """A server that sends half the echo and closes earns no throughput."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    stop = threading.Event()

    def serve_halves():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                line = conn.makefile("rb").readline()
                conn.sendall(line[: len(line) // 2])

    server = threading.Thread(target=serve_halves)
    server.start()
    try:
        target = run.Target(run.SERVERS[0], BY_NAME["tcp-cpr"], None, (1,))
        target.address = f"127.0.0.1:{listener.getsockname()[1]}"
        result = bench.run_loadgen(target, conc=1, seconds=0.2)
    finally:
        stop.set()
        server.join(10)
        listener.close()
    assert result["requests"] == 0
    assert result["errors"] > 0
    assert "short" in result["errors_by_kind"]


def test_check_fails_a_server_that_answers_wrong(bench):
    target = start_echo_server(bench, "stream", "--corrupt")
    try:
        bench.check_all([target])
    finally:
        target.process.stop()
    assert target.failure and "correctness check" in target.failure
    assert bench.failures[0]["server"] == target.server.name


def _targets(workload, skip):
    """Every server on every class of a workload, at concurrency 16 or 1
    (a memory workload: at its own)."""
    concs = workload.concurrencies() if workload.measures_memory else (1, 16)
    argv = ["--workload", workload.name]
    for conc in concs:
        argv += ["--concurrency", str(conc)]
    return run.plan(run.parse_args(argv), skip)[0][1]


@pytest.mark.parametrize("workload", WORKLOADS, ids=lambda w: w.name)
def test_every_server_answers_correctly(bench, workload):
    """What the runner checks before timing: every server it would measure
    answers every request right, and runs the engine it claims to."""
    skip, _ = run.available_servers()
    targets = _targets(workload, skip)
    try:
        bench.start_all(targets)
        bench.check_all(targets)
    finally:
        bench.stop_all(targets)
    assert not bench.failures, bench.failures
    measured = {t.server.name for t in targets}
    assert {"stdlib", "fastsock-pure", "ceiling"} <= measured


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_stop_kills_forked_children(bench):
    """A forking server's children die with it: the benchmark leaves no
    processes behind."""
    target = run.Target(
        run.SERVERS[0], BY_NAME["tcp-keepalive"], "ForkingTCPServer", (1,)
    )
    bench.start(target)
    bench.wait_ready(target)
    pid = target.process.pid
    host, port = target.address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=5) as client:
            client.sendall(b"ping\n")
            assert client.recv(16) == b"ping\n"  # a child now serves us
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                children = [int(c) for c in f.read().split()]
            assert children
            target.process.stop()
    finally:
        target.process.stop()
    deadline = time.monotonic() + 5
    while any(map(_alive, children + [pid])) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(map(_alive, children + [pid]))


def test_idle_connections_measure_server_memory(bench):
    """The memory workload holds every connection open, each after one right
    echo, and reads the server's RSS and threads meanwhile."""
    target = run.Target(run.SERVERS[0], BY_NAME["tcp-idle"], "ThreadingTCPServer", (8,))
    bench.start(target)
    try:
        bench.wait_ready(target)
        assert target.base_rss_kib > 0
        held = bench.hold_idle(target, 8)
        sample = bench.measure(target, 8, rep=0)
    finally:
        target.process.stop()
    assert held["requests"] == 8 and held["errors"] == 0
    # One thread per held connection, besides the main one.
    assert held["threads"] == 9
    assert held["hwm_kib"] >= held["rss_kib"] > 0
    assert sample["rps"] is None and sample["errors"] == 0
    assert sample["threads"] == 9
    assert sample["peak_rss_mib"] >= sample["idle_rss_mib"] > sample["base_rss_mib"]
    assert sample["kib_per_conn"] == pytest.approx(
        (sample["idle_rss_mib"] - sample["base_rss_mib"]) * 1024 / 8
    )


def test_idle_check_fails_a_server_that_answers_wrong(bench):
    target = start_echo_server(bench, "stream", "--corrupt")
    target.workload = BY_NAME["tcp-idle"]
    try:
        bench.check_all([target])
    finally:
        target.process.stop()
    assert target.failure and "0 of 4 answers right" in target.failure


def test_memory_summary_and_table():
    def sample(server, rss, rep=0):
        return {
            "workload": "tcp-idle",
            "cls": "ThreadingTCPServer",
            "server": server,
            "conc": 256,
            "rep": rep,
            "rps": None,
            "requests": 256,
            "errors": 0,
            "peak_rss_mib": rss + 1,
            "base_rss_mib": 10.0,
            "idle_rss_mib": rss,
            "kib_per_conn": (rss - 10.0) * 1024 / 256,
            "threads": 257,
            "client": "run.py",
        }

    samples = [sample("stdlib", 20.0, rep) for rep in range(3)]
    samples += [sample("fastsock", r, rep) for rep, r in enumerate((14, 15, 30))]
    summary = report.summarize(samples)
    fast = summary[("tcp-idle", "ThreadingTCPServer", "fastsock", 256)]
    assert fast["idle_rss_mib"] == 15
    assert fast["peak_rss_mib"] == 31  # the peak of every repetition
    assert fast["vs_stdlib"] == pytest.approx(31 / 21)
    assert report.throughput_table(summary, [])[1] == []
    assert report.detail_table(summary)[1] == []
    header, rows = report.memory_table(summary)
    cells = dict(zip(header, rows[1]))
    assert cells["server"] == "fastsock"
    assert cells["KiB/conn"] == "20.0"
    assert cells["peak ×stdlib"] == "1.48"
    assert "Memory with idle connections" in report.results_markdown(
        {
            "settings": {"warmup_s": 0, "reps": 3, "duration_s": 1},
            "date": "",
            "commit": "",
            "command": "",
            "machine": "",
            "load": "",
            "python": "",
            "engines": [],
            "pinning": "",
            "clients": "",
            "notes": [],
        },
        summary,
        [],
        None,
    )


def test_summary_medians_ratios_and_ceiling_flag():
    def sample(server, rps, cls="TCPServer", errors=0):
        return {
            "workload": "tcp-cpr",
            "cls": cls,
            "server": server,
            "conc": 16,
            "rep": 0,
            "rps": rps,
            "requests": int(rps),
            "errors": errors,
            "p50_us": 10.0,
            "p99_us": 20.0,
            "cpu_us_per_req": 5.0,
            "peak_rss_mib": 10.0,
            "client": "loadgen",
        }

    samples = [sample("stdlib", r) for r in (900, 1000, 1100)]
    samples += [sample("fastsock", r) for r in (1900, 2000, 5000)]
    samples += [sample("fastsock-pure", 500, errors=3)]
    samples += [sample("ceiling", r, cls=None) for r in (2100, 2100, 2100)]
    summary = report.summarize(samples)
    fast = summary[("tcp-cpr", "TCPServer", "fastsock", 16)]
    assert fast["rps"] == 2000
    assert fast["vs_stdlib"] == pytest.approx(2.0)
    assert fast["spread_pct"] == pytest.approx(77.5)
    assert fast["at_ceiling"]  # 2000 is within 10% of 2100
    pure = summary[("tcp-cpr", "TCPServer", "fastsock-pure", 16)]
    assert not pure["at_ceiling"] and pure["errors"] == 3
    header, rows = report.throughput_table(
        summary,
        [{"workload": "tcp-cpr", "cls": None, "server": "uvloop", "reason": "x"}],
    )
    cells = dict(zip(header, rows[0]))
    assert cells["fastsock"] == "2k ±78% ×2.00*"
    assert cells["fastsock pure"].endswith("!3")
    assert cells["uvloop"] == "FAILED"


def test_quick_plan_runs_one_concurrency_per_class():
    groups = run.plan(run.parse_args(["--quick"]), skip={})
    for workload, targets in groups:
        for target in targets:
            concs = workload.classes.get(target.cls)
            expected = (16,) if concs and 16 in concs else concs
            if target.cls is None:
                assert set(target.concs) <= {1, 16} or workload.measures_memory
            else:
                assert target.concs == expected, (workload.name, target.cls)
    assert [w.name for w, _ in groups] == [w.name for w in WORKLOADS]


def test_binaries_are_cached():
    assert build("loadgen") == build("loadgen")


def test_command_line_run_writes_table_json_and_report(tmp_path):
    """A tiny end-to-end run of bench/run.py, in its own process."""
    results = tmp_path / "RESULTS.md"
    done = subprocess.run(
        [
            sys.executable,
            str(run.BENCH_DIR / "run.py"),
            "--workload",
            "udp",
            "--server",
            "stdlib",
            "--server",
            "ceiling",
            "--class",
            "UDPServer",
            "--concurrency",
            "1",
            "--duration",
            "0.1",
            "--reps",
            "2",
            "--warmup",
            "0",
            "--out",
            str(tmp_path),
            "--results",
            str(results),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "udp       UDPServer     1" in done.stdout
    data = json.loads((tmp_path / "partial.json").read_text())
    assert {(s["server"], s["rep"]) for s in data["samples"]} == {
        ("stdlib", 0),
        ("stdlib", 1),
        ("ceiling", 0),
        ("ceiling", 1),
    }
    assert all(s["errors"] == 0 and s["requests"] > 0 for s in data["samples"])
    assert data["failures"] == []
    assert "| udp | UDPServer | 1 |" in results.read_text()


def test_cpu_lists_and_even_splits():
    assert run.parse_cpu_list("0-3,8") == [0, 1, 2, 3, 8]
    assert run.parse_cpu_list("5") == [5]
    for bad in ("", "3-1", "a", "1-"):
        with pytest.raises(Exception):
            run.parse_cpu_list(bad)
    assert run.split_evenly(64, 8) == [8] * 8
    assert run.split_evenly(10, 3) == [4, 3, 3]
    assert run.split_evenly(1, 8) == [1]  # no load generator without connections


def test_merged_results_sum_the_load_generators():
    def result(requests, p50, p99, errors=0, first=""):
        return {
            "requests": requests,
            "errors": errors,
            "late": 0,
            "elapsed_s": 1.0,
            "rps": float(requests),
            "p50_us": p50,
            "p99_us": p99,
            "settle_ms": 1.0,
            "loadgen_cpu_s": 0.5,
            "errors_by_kind": {"reset": errors} if errors else {},
            "first_error": first,
            "client": "loadgen",
        }

    merged = run.merge_loadgen_results(
        [result(300, 10.0, 40.0), result(100, 30.0, 90.0, errors=2, first="x")]
    )
    assert merged["requests"] == 400 and merged["rps"] == 400
    assert merged["errors"] == 2 and merged["errors_by_kind"] == {"reset": 2}
    assert merged["first_error"] == "x"
    assert merged["p50_us"] == pytest.approx(15.0)  # weighted by requests
    assert merged["p99_us"] == 90.0
    assert merged["loadgen_processes"] == 2
    assert merged["loadgen_cpu"] == [0.5, 0.5]


def test_connections_are_split_over_several_load_generators(bench):
    """One load generator per load CPU (here twice the same CPU, which any
    machine has): every answer still checked, their counts summed."""
    cpu = min(os.sched_getaffinity(0))
    bench.loadgen_cpus = [cpu, cpu]
    target = start_echo_server(bench, "stream")
    try:
        result = bench.run_loadgen(target, conc=8, seconds=5, max_requests=500)
    finally:
        target.process.stop()
    assert result["errors"] == 0, result["first_error"]
    assert result["requests"] >= 500
    assert result["loadgen_processes"] == 2
    assert all(0 <= use <= 2 for use in result["loadgen_cpu"])
    assert result["server_cpu_s"] >= 0  # read when both had settled


def test_copies_share_a_port_and_connections_are_counted_per_process(bench):
    """The reference servers as N processes with SO_REUSEPORT listeners
    (here asyncio: uvloop may be missing), and the fairness count: every
    connection of a burst is found in exactly one copy."""
    copies = run.Server("asyncio", "asyncio", "asyncio", reference=True, copies=True)
    target = run.Target(copies, BY_NAME["tcp-keepalive"], None, (16,))
    bench.workers = 2
    bench.start(target)
    try:
        bench.wait_ready(target)
        assert len(target.process.worker_pids()) == 2
        record = bench.measure_fairness(target, 24, rep=0)
    finally:
        target.process.stop()
    assert record["answered"] == 24
    assert record["workers"] == 2
    assert sum(record["per_worker"]) == 24
    assert record["held_by_supervisor"] == 0
    assert record["fair_share"] == 12


@pytest.mark.skipif(
    "cython" not in run.available_servers()[1], reason="compiled engine not built"
)
def test_multicore_command_line_reports_ratios_and_fairness(tmp_path):
    """A tiny --multicore run with explicit placement, in its own process."""
    cpus = sorted(os.sched_getaffinity(0))
    load = cpus[-1]
    results = tmp_path / "multicore.md"
    done = subprocess.run(
        [
            sys.executable,
            str(run.BENCH_DIR / "run.py"),
            "--multicore",
            "--workload",
            "tcp-keepalive",
            "--concurrency",
            "64",
            "--server",
            "fastsock",
            "--server",
            "fastsock-workers",
            "--server-cpus",
            str(cpus[0]),
            "--loadgen-cpus",
            str(load),
            "--workers",
            "2",
            "--fairness-connections",
            "16",
            "--duration",
            "0.1",
            "--reps",
            "1",
            "--warmup",
            "0",
            "--out",
            str(tmp_path),
            "--results",
            str(results),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    data = json.loads((tmp_path / "partial.json").read_text())
    assert {s["server"] for s in data["samples"]} == {"fastsock", "fastsock-workers"}
    assert all(len(s["loadgen_cpu"]) == 1 for s in data["samples"])
    [fair] = data["meta"]["fairness"]
    assert fair["workers"] == 2 and sum(fair["per_worker"]) == 16
    text = results.read_text()
    assert "## Multi-core" in text and "| fastsock-workers | 1 | 16/16 | 2 |" in text


def test_every_server_has_a_place_in_the_report():
    # The report orders and names columns by this table: a server missing
    # from it fails a run after it measured.
    assert set(run.SERVER_NAMES) <= set(report.SERVER_LABELS)
