"""How evenly prefork workers share a burst of keep-alive connections.

    python bench/fairness_burst.py [--runs 30] [--busy 2] [--workers 4]
                                   [--connections 64] [--churn 2]
                                   [--at-once] [--warm 64]

Per engine, ``--runs`` times: start tests/_workers_child.py (a
ThreadingTCPServer with ``workers``), open ``--connections`` keep-alive
connections one after the other, each sending one request at once, and
count the connections each worker answered.  ``--busy`` processes spin on
the CPUs meanwhile, as other work on a loaded machine would (tests/
test_workers.py's fairness test checks the same on 2 cores without them).
Prints the least and most connections any worker held, and the runs in
which a worker fell outside 0.5..1.5 of its fair share.  ``--churn``
processes make short requests meanwhile (connect, one request, close, in a
loop, from before the burst to the count): a worker that has just ended
a request stands aside from the fairness rule (fastsock._workers.fair_pause),
and this shows whether the others still spread the burst.  ``--at-once``
starts every connect before the first request is sent, so that the whole
burst waits in the listen queue (as bench/run.py's fairness measurement
opens it); ``--warm N`` first makes N connections run requests for a
moment and close, so that the workers' pools hand the burst to idle
threads, as after a load.  Loopback only; every process it starts, it
ends.
"""

import argparse
import json
import multiprocessing
import os
import select
import socket
import subprocess
import sys
import time

from run import open_at_once  # bench/ is this script's folder

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CHILD = os.path.join(ROOT, "tests", "_workers_child.py")
TIMEOUT = 10.0


def spin():
    while True:
        pass


def churn(address, stop):
    """Connection per request until ``stop`` is set."""
    while not stop.is_set():
        try:
            with socket.create_connection(address, TIMEOUT) as sock:
                sock.sendall(b"pid\n")
                answering_pid(sock)
        except (OSError, ValueError):
            time.sleep(0.01)  # the server is going away


def answering_pid(sock):
    """The pid in the answer to the request sent on ``sock``."""
    with sock.makefile("rb") as answer:
        return int(answer.readline().split()[0])


def one_burst(engine, workers, connections, churners=0, at_once=False,
              warm=0):
    env = dict(os.environ, FASTSOCK_PURE="1" if engine == "python" else "0",
               PYTHONPATH=os.pathsep.join([ROOT] + sys.path))
    config = json.dumps({"kind": "threading", "workers": workers})
    proc = subprocess.Popen([sys.executable, CHILD, config], env=env,
                            stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    socks, churning = [], []
    stop = multiprocessing.Event()
    try:
        ready, _, _ = select.select([proc.stdout], [], [], TIMEOUT)
        if not ready:
            raise RuntimeError("the server did not start")
        address = tuple(json.loads(proc.stdout.readline())["address"])

        def connect():
            sock = socket.create_connection(address, TIMEOUT)
            socks.append(sock)
            return sock

        # Every worker answers before the burst: all are serving.
        seen, deadline = set(), time.monotonic() + TIMEOUT
        while len(seen) < workers:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only workers {seen} answered")
            with socket.create_connection(address, TIMEOUT) as sock:
                sock.sendall(b"pid\n")
                seen.add(answering_pid(sock))
        churning += [multiprocessing.Process(target=churn,
                                             args=(address, stop))
                     for _ in range(churners)]
        for process in churning:
            process.start()
        if churning:
            time.sleep(0.2)  # short requests in flight before the burst
        if warm:
            # Every worker's pool holds idle threads, as after a load: a
            # burst is then handed off without starting threads.
            warming = [connect() for _ in range(warm)]
            for _ in range(20):
                for sock in warming:
                    sock.sendall(b"pid\n")
                for sock in warming:
                    answering_pid(sock)
            for sock in warming:
                sock.close()
            socks.clear()
            time.sleep(0.2)  # every request over, out of the quiet window
        if at_once:
            socks.extend(open_at_once(address, connections, TIMEOUT))
            for sock in socks:
                sock.sendall(b"pid\n")
        else:
            for _ in range(connections):
                connect().sendall(b"pid\n")
        counts = {pid: 0 for pid in seen}
        for sock in socks:
            pid = answering_pid(sock)
            counts[pid] = counts.get(pid, 0) + 1
        return sorted(counts.values())
    finally:
        stop.set()
        for process in churning:
            process.join(TIMEOUT)
            if process.is_alive():
                process.kill()
                process.join()
        for sock in socks:
            sock.close()
        proc.kill()
        proc.wait()
        proc.stdout.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--busy", type=int, default=0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--churn", type=int, default=0)
    parser.add_argument("--at-once", action="store_true",
                        help="start every connect before sending a request")
    parser.add_argument("--warm", type=int, default=0,
                        help="connections that warm the pools up first")
    parser.add_argument("--engine", action="append",
                        choices=["python", "compiled"])
    args = parser.parse_args()
    spinners = [multiprocessing.Process(target=spin, daemon=True)
                for _ in range(args.busy)]
    for spinner in spinners:
        spinner.start()
    try:
        fair = args.connections / args.workers
        print(f"{args.connections} connections over {args.workers} workers "
              f"(fair share {fair:g}), {args.busy} busy loops, "
              f"{args.churn} connection-per-request clients, "
              f"{os.cpu_count()} CPUs")
        for engine in args.engine or ["python", "compiled"]:
            spreads = [one_burst(engine, args.workers, args.connections,
                                 args.churn, args.at_once, args.warm)
                       for _ in range(args.runs)]
            outside = sum(1 for counts in spreads
                          if counts[0] < 0.5 * fair or counts[-1] > 1.5 * fair)
            print(f"{engine}: {min(c[0] for c in spreads)}.."
                  f"{max(c[-1] for c in spreads)} connections per worker "
                  f"in {args.runs} runs; {outside} outside "
                  f"{0.5 * fair:g}..{1.5 * fair:g}")
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.join()


if __name__ == "__main__":
    main()
