"""Reusable worker threads for ThreadingMixIn.

A request is handed to an idle worker when there is one; a new worker starts
only when none is idle.  Each worker runs one request at a time through the
server's ``process_request_thread`` and, once done, waits
``worker_idle_timeout`` seconds for the next before it exits.

The hand-off is a per-worker lock used as a baton: an idle worker blocks
acquiring its own baton; ``submit`` stores the job and releases it.  A worker
whose wait times out leaves the idle list under the pool lock, unless a job
was handed to it in the meantime, in which case it takes that job.
"""

import threading


class _Worker:
    __slots__ = ("baton", "job")

    def __init__(self, job):
        self.baton = threading.Lock()
        self.baton.acquire()
        self.job = job


class WorkerPool:
    """The worker threads of one server.

    ``len()`` is the number of live workers; ``join()`` (what
    ``server_close()`` calls through ``server._threads``) stops idle workers
    and waits for the non-daemon ones to finish their requests.
    """

    def __init__(self, server):
        self._server = server
        self._lock = threading.Lock()
        self._idle = []          # _Worker objects waiting, most recent last
        self._threads = set()    # live worker threads
        self._closing = False

    def __len__(self):
        with self._lock:
            return len(self._threads)

    def submit(self, request, client_address):
        """Run ``server.process_request_thread(request, client_address)``."""
        job = (request, client_address)
        with self._lock:
            if self._idle:
                worker = self._idle.pop()
                worker.job = job
                worker.baton.release()
                return
            worker = _Worker(job)
            thread = threading.Thread(target=self._work, args=(worker,),
                                      daemon=self._server.daemon_threads)
            self._threads.add(thread)
            # Started under the lock so that join() never sees it unstarted.
            thread.start()

    def _work(self, worker):
        server = self._server
        try:
            while True:
                request, client_address = worker.job
                worker.job = None
                server.process_request_thread(request, client_address)
                del request, client_address
                if not self._wait_for_job(worker, server.worker_idle_timeout):
                    return
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _wait_for_job(self, worker, idle_timeout):
        """Park ``worker``; return whether it got a job to run."""
        with self._lock:
            if self._closing:
                return False
            self._idle.append(worker)
        if not worker.baton.acquire(timeout=idle_timeout):
            with self._lock:
                if worker in self._idle:
                    self._idle.remove(worker)
                    return False
            worker.baton.acquire()  # handed a job just as the wait ran out
        return worker.job is not None

    def close(self, wait=True):
        """Stop taking jobs, release idle workers, and optionally wait."""
        with self._lock:
            self._closing = True
            idle, self._idle = self._idle, []
            threads = list(self._threads)
        for worker in idle:
            worker.baton.release()  # job is None: the worker exits
        if wait:
            me = threading.current_thread()
            for thread in threads:
                if thread is not me and not thread.daemon:
                    thread.join()

    def join(self):
        self.close(wait=True)
