"""Host memory a process frees goes back to the operating system.

glibc's ``malloc`` serves an allocation below its *mmap threshold* from a
heap that keeps freed memory for reuse, and raises the threshold (up to
32 MiB) each time a larger block is freed. A process that allocates buffers
of a few MiB to tens of MiB in turn, as a sharded GIST rank does (the pieces
of the exchanges, the activations of the local steps, the chunks of the
evaluation), so keeps the largest mix of them it ever held: measured at
hidden 16384, ``m = 8``, a rank's peak during its local steps was 1.27 GB
with glibc's default and 1.06 GB with every block of 1 MiB or more mapped on
its own (and unmapped when freed).

Mapping and unmapping costs time where blocks of a few MiB are allocated at
every step (a 256-wide GraphSAGE on Cora steps measurably slower), so only
the processes whose point is memory (``--coordinator sharded``'s ranks) ask
for it; ``GIST_KEEP_FREED_MEMORY=1`` in the environment turns it off (to
measure what it costs).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["KEEP_FREED_MEMORY_ENV", "M_MMAP_THRESHOLD", "RELEASE_ABOVE_BYTES", "release_freed_memory"]

M_MMAP_THRESHOLD = -3
"""``mallopt`` parameter: allocations of at least this many bytes get a mapping of their own (``<malloc.h>``)."""
RELEASE_ABOVE_BYTES = 1 << 20
"""Blocks from 1 MiB up are mapped on their own."""
KEEP_FREED_MEMORY_ENV = "GIST_KEEP_FREED_MEMORY"
"""Set to ``1``: :func:`release_freed_memory` leaves glibc's default alone."""


def release_freed_memory(threshold: int = RELEASE_ABOVE_BYTES) -> bool:
    """Map every allocation of ``threshold`` bytes or more on its own, so that
    freeing it returns it to the system at once (and fix the threshold: glibc
    would otherwise raise it). Returns whether it applied (glibc on Linux,
    unless ``GIST_KEEP_FREED_MEMORY=1``); elsewhere it changes nothing."""
    if not sys.platform.startswith("linux") or os.environ.get(KEEP_FREED_MEMORY_ENV) == "1":
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))
