"""Run logs as frames: one curve per run (bytes, seconds, metrics by round), one row per run.

Inputs are the run logs :func:`gist.harness.sweep.run_sweep` writes
(``runs/<run id>.json``); see :mod:`gist.harness.tables` for what bytes per
worker and seconds mean.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from itertools import product
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from ..errors import ConfigError, MissingFileError
from .sweep import RUNS_DIR, SweepError, read_run_log

NOT_TRAINING_KINDS = ("data", "eval")
GROUP = ["method", "m", "zeta"]
METRICS = ("train", "val", "test", "parts_val")
"""Per-round metrics; ``parts_val``: partitioned GIST scored by its workers on their own parts."""
RISING_MARGIN = 0.005
"""A run is still rising when the best validation of its last quarter of
evaluated rounds beats the best before them by more than this."""


def run_curve(log: dict[str, Any]) -> pd.DataFrame:
    """One row per round: cumulative ``steps``, ``seconds`` (training only),
    ``eval_seconds``, ``bytes_per_worker``, ``eval_bytes_per_worker`` (see the
    module docstring) and that round's ``train``/``val``/``test``/``parts_val``
    (NaN where not evaluated)."""
    m = int(log["sweep"]["m"]) if "sweep" in log else int(log["config"]["subnets"])
    setup = sum(n for k, n in log.get("setup_bytes", {}).items() if k not in NOT_TRAINING_KINDS)
    rows = []
    steps, seconds, eval_seconds, wire, eval_wire = 0, 0.0, 0.0, float(setup), 0.0
    for r in log["rounds"]:
        steps += int(r["local_steps"])
        par = r.get("parallel_seconds")
        seconds += r["seconds"] if par is None else par
        eval_seconds += r.get("eval_seconds") or 0.0
        wire += sum(n for k, n in r.get("bytes", {}).items() if k not in NOT_TRAINING_KINDS)
        eval_wire += r.get("bytes", {}).get("eval", 0)
        rows.append(
            {
                "round": int(r["round"]),
                "steps": steps,
                "seconds": seconds,
                "eval_seconds": eval_seconds,
                "bytes_per_worker": wire / m,
                "eval_bytes_per_worker": eval_wire / m,
                **{k: (math.nan if r.get(k) is None else float(r[k])) for k in METRICS},
            }
        )
    columns = ["round", "steps", "seconds", "eval_seconds", "bytes_per_worker", "eval_bytes_per_worker", *METRICS]
    return pd.DataFrame(rows, columns=columns)


def first_reach(curve: pd.DataFrame, target: float) -> Optional[dict[str, float]]:
    """``{"round", "steps", "bytes_per_worker", "seconds"}`` at the first
    evaluated round with ``val >= target``; ``None`` if no round reaches it."""
    hit = curve[curve["val"] >= target]
    if hit.empty:
        return None
    row = hit.iloc[0]
    return {
        "round": int(row["round"]),
        "steps": int(row["steps"]),
        "bytes_per_worker": float(row["bytes_per_worker"]),
        "seconds": float(row["seconds"]),
    }


def still_rising(curve: pd.DataFrame, margin: float = RISING_MARGIN) -> bool:
    """Whether ``max(val over the last quarter of evaluated rounds) >
    max(val over the rounds before) + margin``: the run had not converged
    when it stopped (always ``False`` with fewer than 4 evaluated rounds)."""
    vals = curve["val"].dropna().tolist()
    if len(vals) < 4:
        return False
    cut = len(vals) - len(vals) // 4
    return max(vals[cut:]) > max(vals[:cut]) + margin


def load_logs(results_dir: str | Path, skipped: Optional[list[str]] = None) -> list[dict[str, Any]]:
    """Every completed run log under ``results_dir/runs``, in name order; the
    log of a run that stands for several places (a one-process run, see
    :func:`gist.harness.sweep.plan`) once for each of them. A file that is
    not a run log (damaged, cut off, edited by hand) is left out, and what is
    wrong with it appended to ``skipped`` (without it: :class:`SweepError`)."""
    runs = Path(results_dir) / RUNS_DIR
    if not runs.is_dir():
        raise MissingFileError(f"{results_dir} has no {RUNS_DIR}/ folder of run logs")
    logs, seen = [], {}
    for path in sorted(runs.glob("*.json")):
        try:
            whole = read_run_log(path)
        except SweepError as exc:
            if skipped is None:
                raise
            skipped.append(str(exc))
            continue
        for log in at_every_place(whole):
            s = log["sweep"]
            point = json.dumps([s.get("context", {}), s["method"], s["m"], s["zeta"], s["seed"]], sort_keys=True)
            if point in seen:
                raise ConfigError(
                    f"{path.name} and {seen[point]} are runs of the same grid point; move the one "
                    f"the sweep's config no longer plans out of {runs}"
                )
            seen[point] = path.name
            logs.append(log)
    return logs


def at_every_place(log: dict[str, Any]) -> list[dict[str, Any]]:
    """``log`` with its place axes set to each combination of the values it
    stands for (``sweep.stands_for``); ``[log]`` for a run that stands for none."""
    s = log["sweep"]
    over = s.get("stands_for")
    if not over:
        return [log]
    placed = []
    for combo in product(*over.values()):
        where = dict(zip(over, combo))
        placed.append({**log, "sweep": {**s, **where, "context": {**s.get("context", {}), **where}}})
    return placed


def context_axes(logs: Sequence[dict[str, Any]]) -> list[str]:
    """The extra axes (e.g. ``model``) the logs were swept over."""
    names: list[str] = []
    for log in logs:
        for k in log["sweep"].get("context", {}):
            if k not in names:
                names.append(k)
    return names


def run_table(logs: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per run: grid position, best validation, test and round there,
    whether it was :func:`still_rising`, total bytes per worker and seconds
    (training, and evaluation apart), the reason it
    failed (``failure``, ``None`` for a run that completed), and the curve
    (column ``curve``)."""
    axes = context_axes(logs)
    rows = []
    for log in logs:
        curve = run_curve(log)
        evaluated = curve.dropna(subset=["val"])
        best = evaluated.loc[evaluated["val"].idxmax()] if not evaluated.empty else None
        s = log["sweep"]
        rows.append(
            {
                **{k: s.get("context", {}).get(k) for k in axes},
                "method": s["method"],
                "m": int(s["m"]),
                "zeta": int(s["zeta"]),
                "seed": int(s["seed"]),
                "best_val": float(best["val"]) if best is not None else math.nan,
                "test_at_best_val": float(best["test"]) if best is not None else math.nan,
                "best_round": int(best["round"]) if best is not None else -1,
                "still_rising": still_rising(curve),
                "best_parts_val": float(curve["parts_val"].max()) if curve["parts_val"].notna().any() else math.nan,
                "bytes_per_worker": float(curve["bytes_per_worker"].iloc[-1]) if len(curve) else 0.0,
                "eval_bytes_per_worker": float(curve["eval_bytes_per_worker"].iloc[-1]) if len(curve) else 0.0,
                "seconds": float(curve["seconds"].iloc[-1]) if len(curve) else 0.0,
                "eval_seconds": float(curve["eval_seconds"].iloc[-1]) if len(curve) else 0.0,
                "link_bytes_per_host": link_bytes_per_host(log),
                "failure": log["failure"]["message"] if log.get("failure") else None,
                "run_id": s.get("run_id", ""),
                "curve": curve,
            }
        )
    return pd.DataFrame(rows)


def link_bytes_per_host(log: dict[str, Any]) -> float:
    """Bytes each host sent over its link to the other hosts, as the kernels
    counted them over the whole run (mean over hosts; a run across virtual
    hosts, ``network`` in its log), else NaN."""
    network = log.get("network")
    if not network or network.get("hosts", 1) < 2:
        return math.nan
    return network["between_hosts_bytes"] / network["hosts"]


def match_axes(df: pd.DataFrame, axes: Sequence[str], key: Iterable) -> pd.Series:
    mask = pd.Series(True, index=df.index)
    for name, value in zip(axes, key):
        mask &= df[name] == value
    return mask


def axes_label(axes: Sequence[str], key: Iterable) -> str:
    return ", ".join(f"{a}={v}" for a, v in zip(axes, key))


def mean_curves(runs: pd.DataFrame) -> pd.DataFrame:
    """Per method, ``m`` and ``ζ``: the seeds' curves averaged round by round
    (validation where every seed was evaluated), with ``val_std`` (over the
    seeds, 0 for one) and ``seeds``."""
    frames = []
    for key, g in runs.groupby(GROUP, sort=False):
        stacked = pd.concat(list(g["curve"]), keys=range(len(g)), names=["seed_i", "row"])
        by_round = stacked.groupby("round")
        mean = by_round[["steps", "seconds", "bytes_per_worker", "val", "test"]].mean()
        mean["val_std"] = by_round["val"].std(ddof=1).fillna(0.0) if len(g) > 1 else 0.0
        mean["seeds"] = len(g)
        mean = mean.reset_index()
        for name, value in zip(GROUP, key):
            mean[name] = value
        frames.append(mean)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
