"""Faults injected into real worker processes, through gist's one round hook (:mod:`gist.comm.hooks`).

``fault_env("1:2:hang")`` is the environment of a command whose rank 1, as it
starts round 2, stops answering: ``GIST_ROUND_HOOK`` names :func:`inject_fault`
(this module is put on the processes' ``PYTHONPATH``) and
``GIST_INJECT_FAULT`` says which fault. Kinds: ``exit`` (status 17), ``kill``
(SIGKILL, as the out-of-memory killer does), ``hang`` (alive, answering no
one), ``slow=SECONDS`` (computing for that long before training). With
``GIST_FAULT_STAMP=PATH`` the rank first writes the wall-clock time to PATH.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import torch

from gist.comm.hooks import ROUND_HOOK_ENV

HERE = Path(__file__).resolve().parent


FAULT_ENV = "GIST_INJECT_FAULT"
FAULT_STAMP_ENV = "GIST_FAULT_STAMP"
FAULT_KINDS = ("exit", "kill", "hang", "slow")


def inject_fault(rank: int, round: int) -> None:
    """The round hook: the fault ``GIST_INJECT_FAULT=RANK:ROUND:KIND`` asks for, if this is its rank and round."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    fault_rank, fault_round, fault = spec.split(":")
    kind, _, arg = fault.partition("=")
    if kind not in FAULT_KINDS:
        raise ValueError(f"{FAULT_ENV} kind must be one of {FAULT_KINDS}, got {fault!r}")
    if (int(fault_rank), int(fault_round)) != (rank, round):
        return
    stamp = os.environ.get(FAULT_STAMP_ENV)
    if stamp:
        with open(stamp, "w") as fh:
            fh.write(repr(time.time()))
    if kind == "exit":
        os._exit(17)
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "slow":  # busy, as local steps are, for longer than the timeout
        end = time.monotonic() + float(arg)
        x = torch.randn(256, 256)
        while time.monotonic() < end:
            x = torch.tanh(x @ x)
        return
    while True:
        time.sleep(60)


def fault_env(spec: str, **extra: str) -> dict[str, str]:
    """This process's environment with the fault ``spec`` (``RANK:ROUND:KIND``) injected through the round hook."""
    path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, ROUND_HOOK_ENV: "faults:inject_fault", FAULT_ENV: spec, "PYTHONPATH": path, **extra}
