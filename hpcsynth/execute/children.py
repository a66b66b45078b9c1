"""Worker processes that do not outlive the process that started them.

A pool's workers (plan --jobs N, reduce --jobs N) are killed with their parent: when the parent is killed
(kill -9, the OOM killer, a Slurm time limit) they would otherwise run on into a plan or reduce that is gone,
or wait for ever for work nobody will hand them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal

PR_SET_PDEATHSIG = 1  # <sys/prctl.h>


def die_with_parent(parent: int) -> None:
    """In a worker just started by `parent`: be sent SIGKILL when it ends (Linux; a no-op elsewhere)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # no glibc, no prctl: the caller's own checks remain
        pass
    if os.getppid() != parent:  # the parent ended before the prctl above took effect
        os._exit(1)
