r"""``local-sgd``: model averaging every ``ζ`` steps.

Each worker runs ``ζ`` steps with its own persistent optimizer, then the
parameters and floating-point buffers (BatchNorm running statistics) are
averaged, ``θ = Σ_i (θ_i / m)``, with one all-reduce of one flat buffer.
Integer buffers (``num_batches_tracked``) are the same on every worker and
are not sent. Optimizer state is never averaged. A batch without training
nodes is skipped (as a GIST worker skips it).
"""

from __future__ import annotations

import time
from typing import Any

from ..engine import local_steps
from .data_parallel import DataParallelMethod, flatten_state, load_flat_state


class LocalSGD(DataParallelMethod):
    """Model averaging every ``ζ`` steps (see the module docstring)."""

    name = "local-sgd"
    color = "tab:orange"

    @property
    def num_params(self) -> int:
        return self.state_numel

    def train_workers(self, round: int) -> tuple[dict[int, list[float]], dict[int, float], float]:
        losses, seconds = {}, {}
        for i in self.local_workers:
            t = time.perf_counter()
            losses[i] = local_steps(
                self._replicas[i],
                self._optimizers[i],
                self._sources[i],
                self.cfg.local.local_steps,
                self._rngs[i],
                self._warn_empty[i],
            )
            seconds[i] = time.perf_counter() - t
        t = time.perf_counter()
        flats = {i: flatten_state(self._replicas[i], self._state_names) for i in self.local_workers}
        mean = self.collective.all_reduce_mean(round, flats)
        for rep in self.distinct_replicas():
            load_flat_state(rep, self._state_names, mean)
        return losses, seconds, time.perf_counter() - t

    def worker_state(self, i: int) -> dict[str, Any]:
        """Also the worker's own optimizer (never averaged)."""
        return {**super().worker_state(i), "optimizer": self._optimizers[i].state_dict()}

    def load_worker_state(self, i: int, own: dict[str, Any], shared: dict[str, Any]) -> None:
        super().load_worker_state(i, own, shared)
        self._optimizers[i].load_state_dict(own["optimizer"])
