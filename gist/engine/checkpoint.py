"""Checkpoint files: when to write them, how, what they hold, and which settings a resume must keep.

Every method checkpoints through its driver's ``state_dict`` /
``load_state_dict`` (:class:`~gist.engine.RoundDriver`); this module writes and
reads the files. The main file holds the driver's state and the run's config;
a method that keeps its model in pieces on several processes (GIST's sharded
coordinator) writes each piece as a *side file* beside it
(:meth:`Checkpointer.write_side`), the newest two kept.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..config import RunConfig
from ..errors import ConfigError
from ..files import write_output
from .records import RoundRecord

if TYPE_CHECKING:
    from .driver import RoundDriver

CHECKPOINT_FORMAT = 3
"""The layout of :meth:`~gist.engine.RoundDriver.state_dict` (format 2, GIST only, is read too)."""
SIDE_FILES_KEPT = 2
"""Side files kept per name: the newest two (the main file may still name the previous one)."""
NOT_COMPARED_ON_RESUME = ("rounds",)
"""Settings that change results but may differ on ``--resume`` (``rounds`` may grow)."""


class CheckpointError(ConfigError):
    """A checkpoint that cannot be resumed: missing, unreadable, or made with other settings."""


class Checkpointer:
    """Writes a driver's :meth:`~gist.engine.RoundDriver.state_dict` with the
    run's config to ``cfg.checkpoint.path`` every ``cfg.checkpoint.every``
    rounds (and after the last), and reads it back for ``--resume``."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.path = Path(cfg.checkpoint.path)
        self.every = cfg.checkpoint.every

    def due(self, round: int, rounds: int) -> bool:
        """Whether a checkpoint is written after ``round``."""
        return bool(self.every) and ((round + 1) % self.every == 0 or round + 1 == rounds)

    def save(self, state: dict[str, Any]) -> Path:
        """Write ``state`` and the config atomically (a temporary file renamed into place)."""
        saved = {**state, "config": self.cfg.to_dict()}
        return write_output("--checkpoint", self.path, lambda tmp: torch.save(saved, tmp))

    def load(self) -> dict[str, Any]:
        """The saved state; ``ValueError`` if there is none, if it cannot be
        read (corrupt or incomplete), if it was made with settings that
        change results differently from this run's, or if it holds more
        rounds than this run asks for."""
        if not self.path.is_file():
            raise CheckpointError(f"--resume: no checkpoint at {self.path}")
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - truncated zip, bad pickle, wrong file
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise CheckpointError(
                f"--checkpoint {self.path} is corrupt or incomplete ({type(exc).__name__}: {first}); "
                "delete it to start over, or point --checkpoint at another checkpoint"
            ) from exc
        if not isinstance(state, dict):
            raise CheckpointError(f"--checkpoint {self.path} is not a gist checkpoint; point --checkpoint elsewhere")
        saved = RunConfig.from_dict(state.get("config", state.get("settings", {})), strict=False).results()
        now = self.cfg.results()
        wrong = [
            f"{k}: checkpoint {saved.get(k)!r}, now {v!r}"
            for k, v in now.items()
            if k not in NOT_COMPARED_ON_RESUME and saved.get(k) != v
        ]
        if wrong:
            raise CheckpointError("--resume with different settings than the checkpoint: " + "; ".join(wrong))
        done = int(state.get("round", 0))
        if done > self.cfg.rounds:
            raise CheckpointError(
                f"--resume: {self.path} already holds {done} rounds, more than --rounds {self.cfg.rounds}; "
                f"pass --rounds {done} or more to continue it"
            )
        return state

    def side_path(self, name: str, round: int) -> Path:
        """The side file ``name`` of the checkpoint after ``round`` rounds: ``<path>.<name>.round-<round>``."""
        return self.path.with_name(f"{self.path.name}.{name}.round-{round}")

    def write_side(self, name: str, round: int, payload: dict[str, Any]) -> Path:
        """Write side file ``name`` of ``round`` atomically, then delete that
        name's files but the newest :data:`SIDE_FILES_KEPT`."""
        target = write_output("--checkpoint", self.side_path(name, round), lambda tmp: torch.save(payload, tmp))
        pattern = re.compile(re.escape(f"{self.path.name}.{name}.round-") + r"(\d+)$")
        found = sorted(
            (int(match.group(1)), p)
            for p in self.path.parent.glob(f"{self.path.name}.{name}.round-*")
            if (match := pattern.match(p.name))
        )
        for _, old in found[:-SIDE_FILES_KEPT]:
            old.unlink(missing_ok=True)
        return target

    def read_side(self, name: str, round: int) -> dict[str, Any]:
        """Side file ``name`` of ``round``; :class:`CheckpointError` if it is missing."""
        path = self.side_path(name, round)
        if not path.is_file():
            raise CheckpointError(f"--resume: the checkpoint of round {round} has no file {path}")
        return torch.load(path, map_location="cpu", weights_only=True)


def driver_state(driver: RoundDriver) -> dict[str, Any]:
    """Everything needed to continue ``driver``'s run exactly: the full model
    (its :meth:`~gist.engine.RoundDriver.model_checkpoint`), the next round,
    the history, the ledger, the coordinator's RNG state and the method's
    :meth:`~gist.engine.RoundDriver.method_state`. Plain tensors, numbers and
    strings only: loadable with ``torch.load(weights_only=True)``."""
    return {
        "format": CHECKPOINT_FORMAT,
        "method": driver.name,
        "round": driver.round,
        "model": driver.model_checkpoint(),
        "history": [asdict(r) for r in driver.history],
        "ledger": driver.ledger.records(),
        "rng_state": torch.get_rng_state(),
        "method_state": driver.method_state(),
    }


def load_driver_state(driver: RoundDriver, state: dict[str, Any]) -> None:
    """Continue ``driver`` from :func:`driver_state` (on the coordinator, before it trains)."""
    state = upgrade_checkpoint(state)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint format {state.get('format')!r} is not {CHECKPOINT_FORMAT}")
    if state.get("method") not in (None, driver.name):
        raise CheckpointError(f"the checkpoint was made by method {state['method']!r}, not {driver.name!r}")
    driver.load_model_state_dict(state["model"])
    driver.round = int(state["round"])
    driver.history = [RoundRecord(**r) for r in state["history"]]
    driver.ledger.load_records(state["ledger"])
    torch.set_rng_state(state["rng_state"])
    driver.load_method_state(state["method_state"])


def upgrade_checkpoint(state: dict[str, Any]) -> dict[str, Any]:
    """Read a format-2 checkpoint (GIST only, worker 0's state at the top level) as format 3."""
    if state.get("format") != 2:
        return state
    old = dict(state)
    worker0 = old.pop("worker0", None)
    return {
        **old,
        "format": CHECKPOINT_FORMAT,
        "method": None,
        "method_state": {"worker0": worker0} if worker0 is not None else {},
    }
