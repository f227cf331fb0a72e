# Static types for _workers.py where setup.py compiles it, unchanged, into
# fastsock._cworkers (the compiled engine's pool); the pure engine imports
# _workers.py itself.  Cython finds the .pxd by the compiled module's name.

cimport cython


cdef class _Worker:
    # public: close() and the tests reach them as Python attributes.
    cdef public object baton, request, client_address, thread


cdef class WorkerPool:
    cdef object _server
    cdef object _run_request
    cdef object _baton
    cdef object _lock
    cdef readonly list _idle
    cdef set _workers
    cdef Py_ssize_t _running
    cdef object _limit
    cdef bint _accept_paused
    cdef Py_ssize_t _blocked
    cdef object _slot_freed
    cdef bint _closing
    cdef long long[::1] _loads, _states  # the fairness board, or None
    cdef Py_ssize_t _slot                # this worker's place there, or -1
    cdef long long _last_end
    cdef object __weakref__

    @cython.locals(worker=_Worker, running=Py_ssize_t, until="long long")
    cpdef submit(self, request, client_address)
    @cython.locals(worker=_Worker)
    cdef int _start_worker(self, request, client_address) except -1
    cpdef _work(self, _Worker worker)
    cdef int _claim_slot(self, limit) except -1
    cdef int _pause_accepting(self) except -1
    cdef int _end_request(self) except -1
    cdef bint _park(self, _Worker worker) except -1


@cython.locals(now="long long", lowest="long long", state="long long",
               until="long long", i=Py_ssize_t)
cpdef long long fair_pause(long long[::1] loads, long long[::1] states,
                           Py_ssize_t slot, long long load,
                           object bound, long long last_end=*) except -1
