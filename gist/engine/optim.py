r"""Optimizer state that can travel with a slice of the parameters.

A GIST worker trains a different slice of each weight every round, so the
entries of one weight have been trained a different number of times. Two
Adams here keep their state per entry, in tensors of the parameter's shape,
so the state slices and merges exactly like the parameter itself
(:func:`state_tensors`, :func:`load_state_tensors`); each names the tensors
that travel in ``state_keys``. :data:`CARRIED_OPTIMIZERS` maps each
``--optimizer-state`` policy whose state travels to its optimizer.

:class:`EntrywiseAdam` (``carried``) is Adam (as ``torch.optim.Adam``
computes it, L2 weight decay included) with its step count a tensor of the
parameter's shape:

.. math::

    g \leftarrow g + \lambda\theta, \quad
    m \leftarrow \beta_1 m + (1-\beta_1) g, \quad
    v \leftarrow \beta_2 v + (1-\beta_2) g^2, \quad t \leftarrow t + 1,

    \theta \leftarrow \theta - \eta\,
    \frac{m / (1-\beta_1^{t})}{\sqrt{v / (1-\beta_2^{t})} + \epsilon}

with :math:`t` per entry; all three travel. Started from zeros it is a
fresh ``torch.optim.Adam``, step for step.

:class:`SecondMomentAdam` (``second-moment``) carries only the second moment,
bias-corrected, :math:`\hat v = v / (1-\beta_2^t)`: a third of the bytes. Its
first moment and step count :math:`k` start again each round. An entry sent
:math:`\hat v > 0` ("warm") continues the average without a correction, an
entry sent zero ("cold": never trained) is a fresh Adam's:

.. math::

    v_0 = \hat v, \quad
    \theta \leftarrow \theta - \eta\,
    \frac{m / (1-\beta_1^{k})}{\sqrt{v / c_k} + \epsilon}, \quad
    c_k = \begin{cases} 1 & \text{warm} \\ 1-\beta_2^{k} & \text{cold} \end{cases}

and it returns :math:`v / c_k`. For a warm entry :math:`v_k = \beta_2^k \hat v +
(1-\beta_2)\sum_i \beta_2^{k-i} g_i^2` weighs the carried estimate and the new
squares by weights that sum to one, so it needs no correction. The step
size is then set by the gradients' long-run scale rather than by a reset
moment, which is what the reset costs (``results/optimizer-state``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..config import LocalConfig
from ..errors import ConfigError
from ..subnets import FlatLayout

STATE_KEYS = ("exp_avg", "exp_avg_sq", "step")
"""The state of one parameter under ``carried``, each a tensor of its shape."""


class _CarriedAdam(torch.optim.Optimizer):
    """What both Adams here share: torch's hyper-parameters, the step loop
    (L2 weight decay added to the gradient, as ``torch.optim.Adam`` does) and
    the state that travels; a subclass gives :meth:`_state` and :meth:`_update`."""

    state_keys: tuple[str, ...] = ()
    """The state tensors that travel, each of its parameter's shape."""

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    def _state(self, p: Tensor) -> dict[str, Any]:
        raise NotImplementedError

    def _update(self, p: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        """One step of ``p`` from ``grad`` (weight decay included)."""
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            decay = group["weight_decay"]
            for p in group["params"]:
                if p.grad is not None:
                    grad = p.grad if decay == 0 else p.grad.add(p, alpha=decay)
                    self._update(p, grad, self._state(p), group)
        return loss

    def carried_state(self, p: Tensor) -> dict[str, Tensor]:
        """``p``'s :attr:`state_keys` tensors, as they travel (zeros before its first step)."""
        state = self._state(p)
        return {key: state[key] for key in self.state_keys}

    @torch.no_grad()
    def load_carried_state(self, p: Tensor, tensors: Mapping[str, Tensor]) -> None:
        """Start ``p`` from :meth:`carried_state`'s tensors (copied in)."""
        state = self._state(p)
        for key in self.state_keys:
            state[key].copy_(tensors[key])


class EntrywiseAdam(_CarriedAdam):
    """Adam with a step count per entry (module docstring)."""

    state_keys = STATE_KEYS

    def _state(self, p: Tensor) -> dict[str, Any]:
        state = self.state[p]
        if not state:
            state.update({key: torch.zeros_like(p, memory_format=torch.preserve_format) for key in STATE_KEYS})
        return state

    def _update(self, p: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        (beta1, beta2), lr, eps = group["betas"], group["lr"], group["eps"]
        state["step"].add_(1)
        state["exp_avg"].lerp_(grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        t = state["step"].to(torch.float64)
        correction1 = (1 - beta1**t).to(p.dtype)
        correction2 = (1 - beta2**t).sqrt().to(p.dtype)
        denom = (state["exp_avg_sq"].sqrt() / correction2).add_(eps)
        p.addcdiv_(state["exp_avg"] / correction1, denom, value=-lr)


class SecondMomentAdam(_CarriedAdam):
    """Adam that carries only its bias-corrected second moment (module docstring)."""

    state_keys = ("exp_avg_sq",)

    def _state(self, p: Tensor) -> dict[str, Any]:
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["cold"] = torch.ones_like(p, dtype=torch.bool)  # a fresh Adam's entry
        return state

    def _correction(self, state: dict[str, Any], beta2: float) -> Tensor:
        """``c_k`` per entry: 1 where warm, ``1 - beta2**k`` where cold (``k >= 1``; the
        scalar in float64 like torch's Adam, not ``1 - x`` in the parameter's dtype)."""
        cold = 1 - beta2 ** state["step"]
        v = state["exp_avg_sq"]
        return torch.where(state["cold"], torch.tensor(cold, dtype=v.dtype, device=v.device), 1.0)

    def _update(self, p: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        (beta1, beta2), lr, eps = group["betas"], group["lr"], group["eps"]
        state["step"] += 1
        state["exp_avg"].lerp_(grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (state["exp_avg_sq"] / self._correction(state, beta2)).sqrt_().add_(eps)
        p.addcdiv_(state["exp_avg"], denom, value=-lr / (1 - beta1 ** state["step"]))

    def carried_state(self, p: Tensor) -> dict[str, Tensor]:
        """``{"exp_avg_sq": v / c_k}``: ``p``'s bias-corrected second moment (what it was sent before a step)."""
        state = self._state(p)
        if state["step"] == 0:
            return {"exp_avg_sq": state["exp_avg_sq"]}
        return {"exp_avg_sq": state["exp_avg_sq"] / self._correction(state, self.param_groups[0]["betas"][1])}

    @torch.no_grad()
    def load_carried_state(self, p: Tensor, tensors: Mapping[str, Tensor]) -> None:
        """Start ``p`` from a bias-corrected second moment: its entries ``> 0`` warm, the others a fresh Adam's."""
        super().load_carried_state(p, tensors)
        state = self._state(p)
        torch.le(state["exp_avg_sq"], 0, out=state["cold"])


CARRIED_OPTIMIZERS: dict[str, type[_CarriedAdam]] = {
    "carried": EntrywiseAdam,
    "second-moment": SecondMomentAdam,
}
"""The ``--optimizer-state`` policies whose state travels with the parameters, and the optimizer of each."""

CarriedAdam = _CarriedAdam
"""Either optimizer of :data:`CARRIED_OPTIMIZERS`."""


def carried_keys(policy: str) -> tuple[str, ...]:
    """The state tensors per parameter that travel under ``policy`` (one of :data:`CARRIED_OPTIMIZERS`)."""
    return CARRIED_OPTIMIZERS[policy].state_keys


def state_names(param_names: Iterable[str], keys: Sequence[str] = STATE_KEYS) -> Iterator[str]:
    """``"<param>.<key>"`` for every parameter and state key, in order."""
    for name in param_names:
        for key in keys:
            yield f"{name}.{key}"


def state_tensors(optimizer: CarriedAdam, named: Mapping[str, nn.Parameter]) -> dict[str, Tensor]:
    """The state that travels as ``{"<param>.<key>": tensor}`` (zeros for a parameter not stepped yet)."""
    out = {}
    for name, p in named.items():
        for key, tensor in optimizer.carried_state(p).items():
            out[f"{name}.{key}"] = tensor
    return out


def load_state_tensors(
    optimizer: CarriedAdam, named: Mapping[str, nn.Parameter], tensors: Mapping[str, Tensor]
) -> None:
    """Start the optimizer from :func:`state_tensors`' layout (copied in)."""
    for name, p in named.items():
        optimizer.load_carried_state(p, {key: tensors[f"{name}.{key}"] for key in optimizer.state_keys})


def state_layout(layout: FlatLayout, params: Sequence[str], keys: Sequence[str] = STATE_KEYS) -> FlatLayout:
    """The flat layout of the state (``keys`` per parameter) of ``layout``'s
    tensors named in ``params`` (:func:`state_tensors`' names, each of its parameter's shape, float32)."""
    shapes = dict(zip(layout.names, layout.shapes))
    names = tuple(state_names((n for n in layout.names if n in params), keys))
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
    if policy in CARRIED_OPTIMIZERS and cfg.optimizer != "adam":
        raise ConfigError(f"optimizer_state {policy} moves Adam's moments: use --optimizer adam (SGD keeps none)")
