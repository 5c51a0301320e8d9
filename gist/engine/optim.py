r"""Optimizer state that can travel: Adam whose step count is kept per entry.

A GIST worker trains a different slice of each weight every round, so the
entries of one weight have been trained a different number of times.
:class:`EntrywiseAdam` is Adam (as ``torch.optim.Adam`` computes it, L2
weight decay included) with its step count a tensor of the parameter's shape:

.. math::

    g \leftarrow g + \lambda\theta, \quad
    m \leftarrow \beta_1 m + (1-\beta_1) g, \quad
    v \leftarrow \beta_2 v + (1-\beta_2) g^2, \quad t \leftarrow t + 1,

    \theta \leftarrow \theta - \eta\,
    \frac{m / (1-\beta_1^{t})}{\sqrt{v / (1-\beta_2^{t})} + \epsilon}

with :math:`t` per entry. Its state per parameter is three tensors of the
parameter's shape (:data:`STATE_KEYS`), so it slices and merges exactly like
the parameter itself (:func:`state_tensors`, :func:`load_state_tensors`).
Started from zeros it is a fresh ``torch.optim.Adam``, step for step.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..config import LocalConfig
from ..errors import ConfigError
from ..subnets import FlatLayout

STATE_KEYS = ("exp_avg", "exp_avg_sq", "step")
"""The state of one parameter, each a tensor of its shape."""


class EntrywiseAdam(torch.optim.Optimizer):
    """Adam with a step count per entry (module docstring)."""

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    def _state(self, p: Tensor) -> dict[str, Tensor]:
        state = self.state[p]
        if not state:
            state.update({key: torch.zeros_like(p, memory_format=torch.preserve_format) for key in STATE_KEYS})
        return state

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            (beta1, beta2), lr, eps, decay = group["betas"], group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self._state(p)
                grad = p.grad if decay == 0 else p.grad.add(p, alpha=decay)
                state["step"].add_(1)
                state["exp_avg"].lerp_(grad, 1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                t = state["step"].to(torch.float64)
                correction1 = (1 - beta1**t).to(p.dtype)
                correction2 = (1 - beta2**t).sqrt().to(p.dtype)
                denom = (state["exp_avg_sq"].sqrt() / correction2).add_(eps)
                p.addcdiv_(state["exp_avg"] / correction1, denom, value=-lr)
        return loss


def state_names(param_names: Iterable[str]) -> Iterator[str]:
    """``"<param>.<key>"`` for every parameter and :data:`STATE_KEYS` key, in order."""
    for name in param_names:
        for key in STATE_KEYS:
            yield f"{name}.{key}"


def state_tensors(optimizer: EntrywiseAdam, named: Mapping[str, nn.Parameter]) -> dict[str, Tensor]:
    """The optimizer's state as ``{"<param>.<key>": tensor}`` (zeros for a parameter not stepped yet)."""
    out = {}
    for name, p in named.items():
        state = optimizer._state(p)
        for key in STATE_KEYS:
            out[f"{name}.{key}"] = state[key]
    return out


@torch.no_grad()
def load_state_tensors(
    optimizer: EntrywiseAdam, named: Mapping[str, nn.Parameter], tensors: Mapping[str, Tensor]
) -> None:
    """Start the optimizer from :func:`state_tensors`' layout (copied in)."""
    for name, p in named.items():
        state = optimizer._state(p)
        for key in STATE_KEYS:
            state[key].copy_(tensors[f"{name}.{key}"])


def state_layout(layout: FlatLayout, params: Sequence[str]) -> FlatLayout:
    """The flat layout of the state of ``layout``'s tensors named in ``params``
    (:func:`state_tensors`' names, each of its parameter's shape, float32)."""
    shapes = dict(zip(layout.names, layout.shapes))
    names = tuple(state_names(n for n in layout.names if n in params))
    return FlatLayout(
        names, tuple(shapes[n.rpartition(".")[0]] for n in names), (torch.float32,) * len(names), layout.dtype
    )


def check_optimizer_state(method: str, offered: Sequence[str], cfg: LocalConfig) -> None:
    """:class:`~gist.errors.ConfigError` unless ``method`` offers ``cfg.optimizer_state``
    (``offered``: its policies) and, to carry state, the optimizer is Adam."""
    policy = cfg.optimizer_state
    if policy is not None and policy not in offered:
        raise ConfigError(
            f"optimizer_state {policy}: {method}'s optimizer starts each round from {' or '.join(offered)}"
        )
    if policy == "carried" and cfg.optimizer != "adam":
        raise ConfigError("optimizer_state carried moves Adam's moments: use --optimizer adam (SGD keeps none)")
