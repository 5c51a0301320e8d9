"""Checkpoint files: when to write them, how, and which settings a resume must keep."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..config import RunConfig
from ..files import atomic_write

NOT_COMPARED_ON_RESUME = ("rounds",)
"""Settings that change results but may differ on ``--resume`` (``rounds`` may grow)."""


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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.path) as tmp:
            torch.save({**state, "config": self.cfg.to_dict()}, tmp)
        return self.path

    def load(self) -> dict[str, Any]:
        """The saved state; ``ValueError`` if there is none, if it cannot be
        read (corrupt or incomplete), if it was made with settings that
        change results differently from this run's, or if it holds more
        rounds than this run asks for."""
        if not self.path.is_file():
            raise ValueError(f"--resume: no checkpoint at {self.path}")
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - truncated zip, bad pickle, wrong file
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise ValueError(
                f"--checkpoint {self.path} is corrupt or incomplete ({type(exc).__name__}: {first}); "
                "delete it to start over, or point --checkpoint at another checkpoint"
            ) from exc
        if not isinstance(state, dict):
            raise ValueError(f"--checkpoint {self.path} is not a gist checkpoint; point --checkpoint elsewhere")
        saved = RunConfig.from_dict(state.get("config", state.get("settings", {})), strict=False).results()
        now = self.cfg.results()
        wrong = [
            f"{k}: checkpoint {saved.get(k)!r}, now {v!r}"
            for k, v in now.items()
            if k not in NOT_COMPARED_ON_RESUME and saved.get(k) != v
        ]
        if wrong:
            raise ValueError("--resume with different settings than the checkpoint: " + "; ".join(wrong))
        done = int(state.get("round", 0))
        if done > self.cfg.rounds:
            raise ValueError(
                f"--resume: {self.path} already holds {done} rounds, more than --rounds {self.cfg.rounds}; "
                f"pass --rounds {done} or more to continue it"
            )
        return state
