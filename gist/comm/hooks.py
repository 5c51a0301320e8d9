"""The one hook into a worker's round: a function every worker process calls as it starts a round.

``GIST_ROUND_HOOK=package.module:function`` makes every worker process of a
``torch.distributed`` job (GIST's workers, the data-parallel ranks) call
``function(rank, round)`` as it starts each round, before it trains. It is how
the tests make a real process die, hang or slow down at a chosen round
(``tests/faults.py``), and how a user can, for instance, log or throttle a
rank. The in-process simulation calls no hook. Nothing else in gist reads
this variable.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Optional

from ..errors import ConfigError
from ..registry import import_path

ROUND_HOOK_ENV = "GIST_ROUND_HOOK"

__all__ = ["ROUND_HOOK_ENV", "round_hook", "round_starts"]


@functools.cache
def _load(spec: str) -> Callable[[int, int], None]:
    try:
        hook = import_path(spec)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"{ROUND_HOOK_ENV}={spec!r} does not import ({exc}); give it as package.module:function"
        ) from exc
    if not callable(hook):
        raise ConfigError(f"{ROUND_HOOK_ENV}={spec!r} is not a function")
    return hook


def round_hook() -> Optional[Callable[[int, int], None]]:
    """The function ``$GIST_ROUND_HOOK`` names, if it is set."""
    spec = os.environ.get(ROUND_HOOK_ENV)
    return _load(spec) if spec else None


def round_starts(rank: int, round: int) -> None:
    """Call the round hook, if one is set, for ``rank`` starting ``round``."""
    hook = round_hook()
    if hook is not None:
        hook(rank, round)
