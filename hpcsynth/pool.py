"""Worker pools that neither hang on a lost worker nor outlive the process that started them.

multiprocessing.Pool starts a new worker when one dies (the OOM killer, kill -9) and waits for ever on the
task the dead one held. A ProcessPoolExecutor notices instead and fails every task: process_pool() turns
that into one line, ends the other workers at once on any other failure, and has each worker killed with
its parent, so that a killed plan or reduce does not leave workers running into work that is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

PR_SET_PDEATHSIG = 1  # <sys/prctl.h>


@contextlib.contextmanager
def process_pool(workers: int, context: Any, lost: Exception, initializer: Callable[..., None] | None = None,
                 initargs: tuple = ()) -> Iterator[ProcessPoolExecutor]:
    """`workers` processes of `context`; `lost` is raised when one of them dies without a word."""
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_start,
                               initargs=(os.getpid(), initializer, initargs))
    try:
        yield pool
    except BrokenProcessPool:
        raise lost from None
    except BaseException:  # a task failed, or this process is stopped: end the workers now
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.kill()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _start(parent: int, initializer: Callable[..., None] | None, initargs: tuple) -> None:
    die_with_parent(parent)
    if initializer is not None:
        initializer(*initargs)


def die_with_parent(parent: int) -> None:
    """In a worker just started by `parent`: be sent SIGKILL when it ends (Linux; a no-op elsewhere)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # no glibc, no prctl: the caller's own checks remain
        pass
    if os.getppid() != parent:  # the parent ended before the prctl above took effect
        os._exit(1)


@contextlib.contextmanager
def stops_on_term_and_hup() -> Iterator[None]:
    """SIGTERM (`kill`, `hpcsynth cancel`, a batch system's limit) and SIGHUP (a closed terminal) unwind
    like Ctrl-C, so what this process started is stopped and its records removed; Python's default for
    both ended the process at once. Only the main thread may set handlers; elsewhere nothing changes."""
    def stop(signum: int, _frame: Any) -> None:
        raise Stopped(f"stopped by signal {signum}")

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP: unwinds like Ctrl-C (a waiting plan cancels its array, a launch ends its workers)."""
