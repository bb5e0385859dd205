"""Running a piece of CPU and memory heavy work (a derivative's decode, resize and encode) in a
forked child process, under limits that really stop it.

A deadline checked between steps cannot stop an encoder that runs for a minute inside one C call,
and nothing in-process stops it from taking gigabytes. A child can be killed: it gets an
address-space limit (RLIMIT_AS) of `memory_mb` above what it inherits, so an allocation past it
fails (MemoryError, or the child dies), and a SIGKILL at the deadline. Forking copies nothing up
front (the child sees the parent's memory, the open files and in-memory buffers included) and
costs about a millisecond. The child only runs `work` and writes its pickled result to a pipe: it
never touches the parent's connections (MongoDB, SQLite), locks or logs, and leaves with `_exit`.
"""

import contextlib
import ctypes
import os
import pickle
import resource
import select
import signal
import time
from collections.abc import Callable
from typing import Any

from rest_framework.exceptions import APIException

DONE, REFUSED, OUT_OF_MEMORY, FAILED = range(4)  # FAILED: anything else the work raised
M_MMAP_THRESHOLD = -3  # mallopt(3): heap memory that the parent freed would not count otherwise
INHERITED_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGABRT,
    signal.SIGALRM,
)


class OverLimit(Exception):
    """The work ran past its deadline ("time") or its memory ("memory"); `detail` says what the
    child saw, if anything."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail or reason


def _address_space() -> int:
    """This process's current virtual size, in bytes."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _child(work: Callable[[], Any], out: int, seconds: float, memory_mb: int) -> None:
    for number in INHERITED_SIGNALS:  # gunicorn's handlers are the parent's business
        signal.signal(number, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)
    with contextlib.suppress(OSError, AttributeError):  # glibc: every large block is a fresh mapping,
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, 128 * 1024)  # so it counts against the limit
    limit = _address_space() + memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    signal.alarm(int(seconds) + 2)  # should the parent die first: SIGALRM ends the child
    try:
        result = (DONE, work())
    except MemoryError:
        result = (OUT_OF_MEMORY, None)
    except APIException as exc:  # a refusal (a corrupt image, say): the parent raises it again
        result = (REFUSED, (type(exc), str(exc.detail), exc.get_codes()))
    except Exception as exc:  # noqa: BLE001 - libraries short of memory raise what they like
        result = (FAILED, f"{type(exc).__name__}: {exc}")
    data = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(data)
    while view:
        view = view[os.write(out, view) :]


def run_limited(work: Callable[[], Any], seconds: float, memory_mb: int) -> Any:
    """`work()`'s result, computed in a child; raises OverLimit when it takes longer than
    `seconds` or more than `memory_mb` MiB (counted above what this process has mapped: the child
    may reuse memory that the parent has freed), or when it fails otherwise (a library that runs
    out of memory reports it as it likes); an APIException that `work` raised is raised again."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.close(read_end)
            _child(work, write_end, seconds, memory_mb)
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    chunks = []
    deadline = time.monotonic() + seconds
    try:
        while (left := deadline - time.monotonic()) > 0:
            if select.select([read_end], [], [], left)[0]:
                if not (chunk := os.read(read_end, 1 << 20)):
                    break  # the child is done, or dead
                chunks.append(chunk)
        else:
            os.kill(pid, signal.SIGKILL)
            raise OverLimit("time")
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    if not chunks:  # killed by the kernel, or an abort() in a library, for want of memory
        raise OverLimit("memory")
    kind, value = pickle.loads(b"".join(chunks))
    if kind == OUT_OF_MEMORY:
        raise OverLimit("memory")
    if kind == REFUSED:
        cls, detail, code = value
        raise cls(detail, code=code)
    if kind == FAILED:  # within its limits, the work would have succeeded: the caller logs it
        raise OverLimit("memory", value)
    return value
