"""Injected disk errors: a failpoint's `return(ENOSPC)` or `return(EIO)` becomes the OSError
the operating system would raise at that call site.

Owns: turning a failpoint verdict into an `OSError` with that errno (disk full, I/O error),
so the storage code under it takes exactly the path a real failure would take (the WAL or
the environment marks itself failed, the process stops writing). Never decides where the
failpoints are (the WAL and the environment call `raise_injected`).
"""

from __future__ import annotations

import errno
import os

from nokvpy import failpoints

ERRNOS = {"ENOSPC": errno.ENOSPC, "EIO": errno.EIO, "EDQUOT": errno.EDQUOT}


def raise_injected(name: str) -> None:
    """Check failpoint `name`; an active `return(ERRNO)` raises `OSError(ERRNO)`. Other
    actions behave as they do at any failpoint (`raise`, `exit`, `sleep`, ...)."""
    verdict = failpoints.check(name)
    if isinstance(verdict, failpoints.Return):
        code = ERRNOS.get(str(verdict.value).upper(), errno.EIO)
        raise OSError(code, f"{os.strerror(code)} (failpoint {name})")
