"""SIGTERM stops a run as Ctrl-C does.

``kill``, ``timeout``, SLURM and Kubernetes stop a job with SIGTERM (and
SIGKILL after a grace period). Within :func:`sigterm_as_interrupt` it raises
:class:`KeyboardInterrupt` like SIGINT, so a run writes its log, keeps its
last checkpoint, stops its processes and removes its temporary folders;
:func:`interrupt_status` and :func:`interrupt_word` then say which signal it was.
"""

from __future__ import annotations

import signal
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
