"""Lockstep: ``m`` workers of one process that must meet mid-computation.

A worker's forward and backward pass with synchronised BatchNorm stops at
every BatchNorm layer until every worker has contributed its statistics. In
one process (the in-process simulation) the ``m`` workers' passes therefore
run as ``m`` threads that take turns: exactly one runs at a time, in worker
order, and a worker hands the turn on only at :meth:`Lockstep.combine` (or
when it finishes). The computation is as deterministic as running the
workers one after another: the threads never run at the same time, and
``switch_in(i)`` / ``switch_out(i)`` let the caller swap each worker's own
state (its RNG stream) into the process around its turns.

Every worker must call :meth:`~Lockstep.combine` the same number of times,
as with any collective; one that finishes while another waits is an error.
A worker that raises stops every other one, and :meth:`~Lockstep.run`
re-raises its exception.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, Optional, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class _Stopped(Exception):
    """Raised in a waiting worker when another one failed."""


class Lockstep(Generic[T]):
    """Run ``tasks[i]()`` as worker ``i`` (see the module docstring).

    Args:
        combine: what :meth:`combine` computes once every worker has given its
            value: ``f({worker: value}) -> result``, called on the last
            worker's thread; every worker gets the result.
        switch_in, switch_out: called with the worker's index as it gets and
            hands on the turn (also at its start and its end).
    """

    def __init__(
        self,
        combine: Callable[[Mapping[int, T]], Any],
        switch_in: Callable[[int], None] = lambda i: None,
        switch_out: Callable[[int], None] = lambda i: None,
    ) -> None:
        self._combine = combine
        self._switch_in, self._switch_out = switch_in, switch_out
        self._cond = threading.Condition()
        self._turn = 0
        self._m = 0
        self._given: dict[int, T] = {}
        self._result: Any = None
        self._done: set[int] = set()
        self._error: Optional[BaseException] = None

    def run(self, tasks: Sequence[Callable[[], R]]) -> list[R]:
        """Every task's result, in worker order; the first exception a task raised, re-raised."""
        self._m, self._turn, self._done, self._error = len(tasks), 0, set(), None
        self._given, self._result = {}, None
        results: list[Any] = [None] * len(tasks)

        def worker(i: int) -> None:
            try:
                self._wait_for_turn(i)
                self._switch_in(i)
                results[i] = tasks[i]()
                self._switch_out(i)
                with self._cond:
                    self._done.add(i)
                    if self._given:
                        raise RuntimeError(
                            f"worker {i} finished while workers {sorted(self._given)} wait in a combine: "
                            "every worker must combine the same number of times"
                        )
                    self._pass_turn(i)
            except _Stopped:
                return  # another worker failed; run() raises its exception
            except BaseException as exc:  # noqa: BLE001 - handed to run()'s caller
                with self._cond:
                    if self._error is None:
                        self._error = exc
                    self._cond.notify_all()

        threads = [
            threading.Thread(target=worker, args=(i,), name=f"lockstep-worker-{i}", daemon=True) for i in range(self._m)
        ]
        for t in threads:
            t.start()
        try:
            for t in threads:
                t.join()
        except BaseException as exc:  # Ctrl-C in the caller: stop the waiting workers too
            with self._cond:
                if self._error is None:
                    self._error = exc
                self._cond.notify_all()
            raise
        if self._error is not None:
            raise self._error
        return results

    def combine(self, i: int, value: T) -> Any:
        """Worker ``i``'s ``value``; once every worker has given one, ``combine``'s result to each."""
        self._switch_out(i)
        with self._cond:
            if self._done:
                raise RuntimeError(
                    f"worker {i} combines after workers {sorted(self._done)} finished: "
                    "every worker must combine the same number of times"
                )
            self._given[i] = value
            if len(self._given) == self._m:
                given, self._given = self._given, {}
                self._result = self._combine(given)
            self._pass_turn(i)
            self._wait_locked(i)
            result = self._result
        self._switch_in(i)
        return result

    # ------------------------------------------------------------------ turns

    def _pass_turn(self, i: int) -> None:
        self._turn = (i + 1) % self._m
        self._cond.notify_all()

    def _wait_for_turn(self, i: int) -> None:
        with self._cond:
            self._wait_locked(i)

    def _wait_locked(self, i: int) -> None:
        while self._turn != i or (i in self._given):
            if self._error is not None:
                raise _Stopped
            self._cond.wait()
        if self._error is not None:
            raise _Stopped
