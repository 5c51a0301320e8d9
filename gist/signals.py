"""SIGTERM stops a run as Ctrl-C does; a child process dies with its parent.

``kill``, ``timeout``, SLURM and Kubernetes stop a job with SIGTERM (and
SIGKILL after a grace period). Within :func:`sigterm_as_interrupt` it raises
:class:`KeyboardInterrupt` like SIGINT, so a run writes its log, keeps its
last checkpoint, stops its processes and removes its temporary folders;
:func:`interrupt_status` and :func:`interrupt_word` then say which signal it was.
:func:`die_with_parent` has the kernel kill a child (a rank, a torchrun
agent) when the process that started it dies, however it died.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Optional

_received: list[int] = []
"""The stopping signals received within :func:`sigterm_as_interrupt`, in order."""


def _raise_interrupt(signum: int, frame: Optional[FrameType]) -> None:
    _received.append(signum)
    raise KeyboardInterrupt


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises :class:`KeyboardInterrupt` in the main thread while inside (elsewhere: nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    _received.clear()
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interrupt_status() -> int:
    """The exit status of an interrupted command: ``128 +`` the signal (130 for Ctrl-C, 143 for SIGTERM)."""
    return 128 + (_received[0] if _received else signal.SIGINT)


def interrupt_word() -> str:
    """How a message names the interruption: ``interrupted`` (Ctrl-C) or ``stopped by SIGTERM``."""
    return f"stopped by {signal.Signals(_received[0]).name}" if _received else "interrupted"


def die_with_parent(parent_pid: Optional[int] = None) -> bool:
    """Have the kernel SIGKILL this process as soon as ``parent_pid`` (by
    default: the current parent), the process that started it, ends, also
    when nothing in it could run (SIGKILL, the out-of-memory killer, a batch
    system's kill): a rank left running would hold its memory and cores for
    ever, waiting on peers that are gone. The request survives ``exec``.
    Linux only (``PR_SET_PDEATHSIG``); elsewhere nothing changes.

    Call it first thing in the child. Returns False if the parent is already
    gone (the child should leave now). The kernel watches the *thread* that
    started the child, so start and join children from one thread.
    """
    parent = os.getppid() if parent_pid is None else parent_pid
    if not sys.platform.startswith("linux"):
        return True
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return True  # not allowed here (a seccomp filter): the old behaviour
    return os.getppid() == parent


PR_SET_PDEATHSIG = 1
"""``prctl`` option: the signal a process gets when its parent ends (``<linux/prctl.h>``)."""
