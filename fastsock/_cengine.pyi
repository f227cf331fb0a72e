# The compiled engine (src/fastsock/_cengine.pyx); the interface every
# engine has is described in fastsock/_backend.py.

from typing import Final
from typing_extensions import Self, disjoint_base

from ._cio import stream_reader as stream_reader
from ._cio import stream_writer as stream_writer
from ._server import BaseServer
from ._workers import WorkerPool as _WorkerPool

NAME: Final = "cython"

@disjoint_base
class ServeLoop:
    # Built in __cinit__, so that a subclass cannot skip the set-up.
    def __new__(cls, server: BaseServer) -> Self: ...
    def run(self, poll_interval: float | None) -> None: ...
    def stop(self) -> None: ...
    # ``until``: a time.monotonic() deadline; None: until resumed.
    def pause_accepting(self, until: float | None = None) -> None: ...
    def resume_accepting(self) -> None: ...
    def close(self) -> None: ...

def wait_readable(fd: int, timeout: float | None) -> bool: ...

# fastsock._workers.WorkerPool as compiled into fastsock._cworkers.
def WorkerPool(server: BaseServer) -> _WorkerPool: ...
