"""Telling a slow rank from a dead or hung one.

A blocking ``torch.distributed`` call cannot tell why a peer is silent, and
gloo's own timeout bounds the whole wait: a worker whose local steps take
longer than the timeout would be killed although it is alive. So the process
group is created with a long timeout, and every rank runs a heartbeat thread
that publishes, every ``period`` seconds, to the job's TCP store::

    gist-liveness/<rank> = "<beat> <cpu seconds> <waiting>"

``beat`` counts up; ``cpu`` is the CPU time the rank's other threads (the
training, OpenMP, the transport) have used; ``waiting`` is 1 while the rank
is blocked on another rank. A rank that waits on peers runs the blocking
call in a helper thread and, while it waits, judges each peer it waits on
(:class:`PeerWatch`), on its own clock:

- **dead**: its beat has not changed for ``timeout`` seconds (the process is
  gone or frozen);
- **hung**: its beat goes on, but for ``timeout`` seconds it has used less
  than :data:`MIN_CPU_S` of CPU and was never waiting on another rank (a
  deadlock, a stuck read, a sleep);
- otherwise **alive** (busy, however slowly, or waiting its turn): the wait
  goes on as long as it takes.

A peer whose process exits closes its connections, so the blocking call
itself fails at once; the heartbeat catches the rest within ``timeout``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Optional, TypeVar

import torch.distributed as dist

MIN_CPU_S = 0.05
"""CPU seconds a peer must use within ``timeout`` (unless it is waiting on
another rank) to count as working rather than hung."""
KEY_PREFIX = "gist-liveness"
T = TypeVar("T")


class PeerSilent(RuntimeError):
    """A peer was judged dead or hung while this rank waited on it."""

    def __init__(self, rank: int, reason: str) -> None:
        super().__init__(reason)
        self.rank = rank


@dataclass(frozen=True)
class Beat:
    """One heartbeat record of a rank."""

    beat: int
    cpu: float
    waiting: bool

    def encode(self) -> str:
        return f"{self.beat} {self.cpu:.4f} {int(self.waiting)}"

    @classmethod
    def decode(cls, text: str) -> Beat:
        beat, cpu, waiting = text.split()
        return cls(int(beat), float(cpu), waiting == "1")


def heartbeat_period(timeout_s: float) -> float:
    """Seconds between heartbeats (and between a waiter's checks): an eighth
    of the timeout, within [0.05, 2]."""
    return min(2.0, max(0.05, timeout_s / 8))


class PeerWatch:
    """What a waiting rank has seen of the peers it waits on since it began
    to wait, and its verdict on them (times from its own monotonic clock)."""

    def __init__(self, peers: Sequence[int], timeout_s: float, now: float) -> None:
        self.timeout_s = timeout_s
        self.last: dict[int, Optional[Beat]] = {p: None for p in peers}
        self.changed = {p: now for p in peers}
        self.progressed = {p: now for p in peers}
        self.cpu_mark: dict[int, float] = {}

    def update(self, peer: int, record: Optional[Beat], now: float) -> None:
        """Note ``peer``'s latest record (``None``: none could be read)."""
        if record is None:
            return
        last = self.last[peer]
        if last is not None and record.beat != last.beat:
            self.changed[peer] = now
        if peer not in self.cpu_mark:
            self.cpu_mark[peer] = record.cpu
        if record.waiting or record.cpu - self.cpu_mark[peer] >= MIN_CPU_S:
            self.progressed[peer] = now
            self.cpu_mark[peer] = record.cpu
        self.last[peer] = record

    def verdict(self, now: float) -> Optional[PeerSilent]:
        """The first peer judged dead or hung, else ``None``."""
        for peer in self.last:
            silent = now - self.changed[peer]
            if silent > self.timeout_s:
                return PeerSilent(
                    peer,
                    f"rank {peer} sent no heartbeat for {silent:.0f} s: its process died or froze, "
                    "or the network to its host is down",
                )
            idle = now - self.progressed[peer]
            if idle > self.timeout_s:
                return PeerSilent(
                    peer,
                    f"rank {peer} is alive but hung: it used no CPU and waited on no other rank for {idle:.0f} s "
                    f"(raise --timeout if it may rightly sit idle that long)",
                )
        return None


class Liveness:
    """This rank's heartbeat and its watched waits (see the module docstring)."""

    def __init__(self, rank: int, timeout_s: float, host: str, port: int) -> None:
        self.rank = rank
        self.timeout_s = timeout_s
        self.period = heartbeat_period(timeout_s)
        self._address = (host, port)
        self._waiting = 0
        self._stop = threading.Event()
        self._started = threading.Event()
        self._reader = self._store()
        self._beat = 0
        self._thread = threading.Thread(target=self._run, name=f"gist-heartbeat-{rank}", daemon=True)
        self._thread.start()
        self._started.wait(self.timeout_s)

    @classmethod
    def from_environment(cls, rank: int, timeout_s: float) -> Liveness:
        """Heartbeats through the store at ``MASTER_ADDR:MASTER_PORT`` (the
        rendezvous store of torchrun and of :func:`gist.comm.launch.launch_local`)."""
        return cls(rank, timeout_s, os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]))

    def _store(self) -> dist.Store:
        host, port = self._address
        store = dist.TCPStore(
            host, port, is_master=False, timeout=timedelta(seconds=max(10.0, self.timeout_s)), wait_for_workers=False
        )
        return dist.PrefixStore(KEY_PREFIX, store)

    def _publish(self, store: dist.Store, waiting: bool) -> None:
        cpu = time.process_time() - time.thread_time()  # every thread of this process but the heartbeat
        self._beat += 1
        store.set(str(self.rank), Beat(self._beat, cpu, waiting).encode())

    def _run(self) -> None:
        try:
            store = self._store()
            self._publish(store, waiting=False)
            self._started.set()
            while not self._stop.wait(self.period):
                self._publish(store, waiting=self._waiting > 0)
        except Exception:  # noqa: BLE001 - the store's host is gone: our silence tells the others
            return
        finally:
            self._started.set()

    def stop(self) -> None:
        self._stop.set()

    def read(self, peer: int) -> Optional[Beat]:
        """``peer``'s latest record, ``None`` if it has none yet or the store
        cannot be reached."""
        try:
            if not self._reader.check([str(peer)]):
                return None
            return Beat.decode(self._reader.get(str(peer)).decode())
        except Exception:  # noqa: BLE001 - judged by the silence that follows
            return None

    def call(self, fn: Callable[[], T], peers: Sequence[int]) -> T:
        """``fn()``, a blocking call that waits on ``peers``, run in a helper
        thread while this rank watches them; raises :class:`PeerSilent` when
        one is judged dead or hung, or whatever ``fn`` raised."""
        done = threading.Event()
        outcome: dict[str, Any] = {}

        def target() -> None:
            try:
                outcome["value"] = fn()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
                outcome["error"] = exc
            finally:
                done.set()

        self._waiting += 1
        try:
            threading.Thread(target=target, name="gist-wait", daemon=True).start()
            watch = PeerWatch([p for p in peers if p != self.rank], self.timeout_s, time.monotonic())
            while not done.wait(self.period):
                now = time.monotonic()
                for peer in watch.last:
                    watch.update(peer, self.read(peer), now)
                silent = watch.verdict(now)
                if silent is not None:
                    raise silent  # the helper stays blocked; the job is over
        finally:
            self._waiting -= 1
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]
