r"""``local-sgd``: model averaging every ``ζ`` steps.

Each worker runs ``ζ`` steps, then the parameters and floating-point buffers
(BatchNorm running statistics) are averaged, ``θ = Σ_i (θ_i / m)``, with one
all-reduce of one flat buffer. Integer buffers (``num_batches_tracked``) are
the same on every worker and are not sent. A batch without training nodes is
skipped (as a GIST worker skips it).

What a worker's optimizer starts each round from (``--optimizer-state``):

* ``kept`` (default): its own state from its last round, never averaged;
* ``fresh``: a new optimizer every round (FedAvg's convention, and GIST's);
* ``carried``: Adam's moments averaged with the parameters, one more
  all-reduce (``optim`` bytes) of the first and second moments (the step
  counts are equal on every worker): what GIST with ``--subnet-groups 1`` and
  ``--optimizer-state carried`` computes.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from ..engine import local_steps, make_optimizer
from .data_parallel import DataParallelMethod, flatten_state, load_flat_state

MOMENTS = ("exp_avg", "exp_avg_sq")
"""The Adam state a ``carried`` round averages (``step`` is the same on every worker)."""


class LocalSGD(DataParallelMethod):
    """Model averaging every ``ζ`` steps (see the module docstring)."""

    name = "local-sgd"
    color = "tab:orange"
    optimizer_states = ("kept", "fresh", "carried")

    @property
    def num_params(self) -> int:
        return self.state_numel

    def train_workers(self, round: int) -> tuple[dict[int, list[float]], dict[int, float], float]:
        policy = self.optimizer_state(self.cfg)
        if policy == "fresh":
            for i in self.local_workers:
                self._optimizers[i] = make_optimizer(self._replicas[i].parameters(), self.cfg.local)
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
        if policy == "carried":
            self._average_moments(round)
        return losses, seconds, time.perf_counter() - t

    def _moments(self, i: int) -> list[torch.Tensor]:
        """Worker ``i``'s Adam moments, parameter by parameter (zeros where it has not stepped yet)."""
        opt, out = self._optimizers[i], []
        for p in self._replicas[i].parameters():
            state = opt.state[p]
            if "exp_avg" not in state:  # no step yet (every batch empty): a fresh state
                state.update(step=torch.zeros(()), **{k: torch.zeros_like(p) for k in MOMENTS})
            out += [state[k] for k in MOMENTS]
        return out

    @torch.no_grad()
    def _average_moments(self, round: int) -> None:
        moments = {i: self._moments(i) for i in self.local_workers}
        flats = {i: torch.cat([t.reshape(-1) for t in ts]) for i, ts in moments.items()}
        mean = self.collective.all_reduce_mean(round, flats, kind="optim")
        for ts in moments.values():
            offset = 0
            for t in ts:
                t.copy_(mean[offset : offset + t.numel()].view_as(t))
                offset += t.numel()

    def worker_state(self, i: int) -> dict[str, Any]:
        """Also the worker's own optimizer."""
        return {**super().worker_state(i), "optimizer": self._optimizers[i].state_dict()}

    def load_worker_state(self, i: int, own: dict[str, Any], shared: dict[str, Any]) -> None:
        super().load_worker_state(i, own, shared)
        self._optimizers[i].load_state_dict(own["optimizer"])
