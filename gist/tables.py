"""Tables and plots of accuracy versus communication from sweep logs.

Inputs are the run logs :func:`gist.sweep.run_sweep` writes
(``runs/<run id>.json``): per round ``local_steps``, ``seconds``,
``parallel_seconds``, ``eval_seconds``, ``bytes`` by kind, and the ``val`` /
``test`` metric where evaluated. Definitions used throughout:

* **bytes per worker** after round ``r``: every training byte that crossed
  the wire up to and including round ``r`` (parameters, loss reports, the
  set-up handshake and the baselines' initial broadcast), divided by the
  run's number of workers ``m``. Not counted: ``data`` (the graph each worker
  loads where it lives) and ``eval`` (the full model sent to the workers to
  score their own nodes in ``partitioned`` GIST runs; the baselines evaluate
  on rank 0 for free), which is reported on its own as **eval bytes per
  worker**.
* **seconds** after round ``r``: the sum of the rounds' ``parallel_seconds``
  (workers side by side; the wall time for real processes) plus evaluation.
* **target**: the ``full`` method's best validation (mean over seeds, best
  ``ζ``) minus ``target_drop``, per value of the extra axes (e.g. per model);
  or the config's absolute ``target``.
* **to target**: bytes per worker and seconds at the first evaluated round
  whose validation reaches the target; a run that never reaches it has none.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import pandas as pd

from .sweep import RUNS_DIR, SweepConfig, load_results_config

NOT_TRAINING_KINDS = ("data", "eval")
GROUP = ["method", "m", "zeta"]


def run_curve(log: dict[str, Any]) -> pd.DataFrame:
    """One row per round: cumulative ``steps``, ``seconds``, ``bytes_per_worker``,
    ``eval_bytes_per_worker`` (see the module docstring) and that round's
    ``train``/``val``/``test`` (NaN where the round was not evaluated)."""
    m = int(log["sweep"]["m"]) if "sweep" in log else int(log["config"]["subnets"])
    setup = sum(n for k, n in log.get("setup_bytes", {}).items() if k not in NOT_TRAINING_KINDS)
    rows = []
    steps, seconds, wire, eval_wire = 0, 0.0, float(setup), 0.0
    for r in log["rounds"]:
        steps += int(r["local_steps"])
        par = r.get("parallel_seconds")
        seconds += (r["seconds"] if par is None else par) + (r.get("eval_seconds") or 0.0)
        wire += sum(n for k, n in r.get("bytes", {}).items() if k not in NOT_TRAINING_KINDS)
        eval_wire += r.get("bytes", {}).get("eval", 0)
        rows.append({"round": int(r["round"]), "steps": steps, "seconds": seconds,
                     "bytes_per_worker": wire / m, "eval_bytes_per_worker": eval_wire / m,
                     **{k: (math.nan if r.get(k) is None else float(r[k])) for k in ("train", "val", "test")}})
    return pd.DataFrame(rows, columns=["round", "steps", "seconds", "bytes_per_worker", "eval_bytes_per_worker",
                                       "train", "val", "test"])


def first_reach(curve: pd.DataFrame, target: float) -> Optional[dict[str, float]]:
    """``{"round", "steps", "bytes_per_worker", "seconds"}`` at the first
    evaluated round with ``val >= target``; ``None`` if no round reaches it."""
    hit = curve[curve["val"] >= target]
    if hit.empty:
        return None
    row = hit.iloc[0]
    return {"round": int(row["round"]), "steps": int(row["steps"]),
            "bytes_per_worker": float(row["bytes_per_worker"]), "seconds": float(row["seconds"])}


def load_logs(results_dir: str | Path) -> list[dict[str, Any]]:
    """Every completed run log under ``results_dir/runs``, in name order."""
    runs = Path(results_dir) / RUNS_DIR
    if not runs.is_dir():
        raise FileNotFoundError(f"{results_dir} has no {RUNS_DIR}/ folder of run logs")
    return [json.loads(p.read_text()) for p in sorted(runs.glob("*.json"))]


def context_axes(logs: Sequence[dict[str, Any]]) -> list[str]:
    """The extra axes (e.g. ``model``) the logs were swept over."""
    names: list[str] = []
    for log in logs:
        for k in log["sweep"].get("context", {}):
            if k not in names:
                names.append(k)
    return names


def run_table(logs: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per run: grid position, best validation, test there, total
    bytes per worker, and the curve (column ``curve``)."""
    axes = context_axes(logs)
    rows = []
    for log in logs:
        curve = run_curve(log)
        evaluated = curve.dropna(subset=["val"])
        best = evaluated.loc[evaluated["val"].idxmax()] if not evaluated.empty else None
        s = log["sweep"]
        rows.append({**{k: s.get("context", {}).get(k) for k in axes},
                     "method": s["method"], "m": int(s["m"]), "zeta": int(s["zeta"]), "seed": int(s["seed"]),
                     "best_val": float(best["val"]) if best is not None else math.nan,
                     "test_at_best_val": float(best["test"]) if best is not None else math.nan,
                     "bytes_per_worker": float(curve["bytes_per_worker"].iloc[-1]) if len(curve) else 0.0,
                     "eval_bytes_per_worker": float(curve["eval_bytes_per_worker"].iloc[-1]) if len(curve) else 0.0,
                     "seconds": float(curve["seconds"].iloc[-1]) if len(curve) else 0.0,
                     "curve": curve})
    return pd.DataFrame(rows)


def targets(runs: pd.DataFrame, axes: Sequence[str], target_drop: float = 0.01,
            target: Optional[float] = None) -> dict[tuple, float]:
    """The validation target per value of ``axes`` (see the module docstring)."""
    out: dict[tuple, float] = {}
    keys = runs[list(axes)].drop_duplicates().itertuples(index=False, name=None) if axes else [()]
    for key in keys:
        if target is not None:
            out[tuple(key)] = target
            continue
        sel = runs[_match(runs, axes, key) & (runs["method"] == "full")]
        if sel.empty:
            out[tuple(key)] = math.nan
            continue
        out[tuple(key)] = float(sel.groupby("zeta")["best_val"].mean().max()) - target_drop
    return out


def _match(df: pd.DataFrame, axes: Sequence[str], key: Iterable) -> pd.Series:
    mask = pd.Series(True, index=df.index)
    for name, value in zip(axes, key):
        mask &= df[name] == value
    return mask


def summarize(runs: pd.DataFrame, axes: Sequence[str], target_drop: float = 0.01,
              target: Optional[float] = None) -> pd.DataFrame:
    """A row per extra-axes value, method, ``m`` and ``ζ``: seeds, best val and
    test at best val (mean, std), bytes per worker, bytes and seconds to the
    target (mean over the seeds that reach it; ``reached`` counts them), and
    the ratio of bytes to target against ``ddp`` at the same ``m`` and ``ζ``."""
    goal = targets(runs, axes, target_drop, target)
    runs = runs.copy()
    reach = [first_reach(c, goal[tuple(row[a] for a in axes)]) for c, (_, row) in zip(runs["curve"], runs.iterrows())]
    runs["bytes_to_target"] = [r["bytes_per_worker"] if r else math.nan for r in reach]
    runs["seconds_to_target"] = [r["seconds"] if r else math.nan for r in reach]
    runs["reached"] = [r is not None for r in reach]
    order = {m: i for i, m in enumerate(["full", "ddp", "local-sgd", "gist"])}
    rows = []
    for key, g in runs.groupby([*axes, *GROUP], sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        rec = dict(zip([*axes, *GROUP], key))
        rec.update({
            "target": goal[tuple(rec[a] for a in axes)],
            "seeds": len(g),
            "best_val": g["best_val"].mean(), "best_val_std": _std(g["best_val"]),
            "test_at_best_val": g["test_at_best_val"].mean(), "test_at_best_val_std": _std(g["test_at_best_val"]),
            "mb_per_worker": g["bytes_per_worker"].mean() / 1e6,
            "eval_mb_per_worker": g["eval_bytes_per_worker"].mean() / 1e6,
            "reached": int(g["reached"].sum()),
            "mb_to_target": g["bytes_to_target"].mean() / 1e6 if g["reached"].any() else math.nan,
            "seconds_to_target": g["seconds_to_target"].mean() if g["reached"].any() else math.nan,
            "seconds": g["seconds"].mean(),
        })
        rows.append(rec)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    ratios = []
    for _, row in table.iterrows():
        ddp = table[_match(table, axes, [row[a] for a in axes]) & (table["method"] == "ddp")
                    & (table["m"] == row["m"]) & (table["zeta"] == row["zeta"])]
        base = ddp["mb_to_target"].iloc[0] if len(ddp) else math.nan
        ratios.append(row["mb_to_target"] / base if base and not math.isnan(base) else math.nan)
    table["bytes_vs_ddp"] = ratios
    table["_order"] = table["method"].map(order)
    table = table.sort_values([*axes, "_order", "m", "zeta"], kind="stable").drop(columns="_order")
    return table.reset_index(drop=True)


def _std(values: pd.Series) -> float:
    return float(values.std(ddof=1)) if len(values) > 1 else 0.0


def _pm(mean: float, std: float) -> str:
    return "—" if math.isnan(mean) else f"{mean:.4f} ± {std:.4f}"


def _num(value: float, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if fmt == ".3g" and abs(value) >= 100:  # no exponent notation for big numbers
        return f"{value:.0f}"
    return format(value, fmt)


def markdown_table(table: pd.DataFrame, axes: Sequence[str]) -> str:
    """The summary as a Markdown table with human-readable cells."""
    shown = pd.DataFrame({
        **{a: table[a] for a in axes},
        "method": table["method"], "m": table["m"], "ζ": table["zeta"], "seeds": table["seeds"],
        "best val": [_pm(a, b) for a, b in zip(table["best_val"], table["best_val_std"])],
        "test at best val": [_pm(a, b) for a, b in zip(table["test_at_best_val"], table["test_at_best_val_std"])],
        "MB/worker": [_num(v, ".3g") for v in table["mb_per_worker"]],
        "eval MB/worker": [_num(v, ".3g") for v in table["eval_mb_per_worker"]],
        "reached": [f"{r}/{s}" for r, s in zip(table["reached"], table["seeds"])],
        "MB/worker to target": [_num(v, ".3g") for v in table["mb_to_target"]],
        "s to target": [_num(v, ".1f") for v in table["seconds_to_target"]],
        "bytes vs ddp": [_num(v, ".3f") for v in table["bytes_vs_ddp"]],
    })
    return shown.to_markdown(index=False)


def tabulate(results_dir: str | Path, command: str, cfg: Optional[SweepConfig] = None,
             target_drop: Optional[float] = None, target: Optional[float] = None,
             plots: bool = True) -> tuple[str, pd.DataFrame]:
    """Write ``table.md``, ``table.csv`` and the plots into ``results_dir``
    from its run logs; return the Markdown and the summary frame.

    ``command`` heads the Markdown: the exact command that made it."""
    results_dir = Path(results_dir)
    cfg = cfg if cfg is not None else load_results_config(results_dir)
    target_drop = cfg.target_drop if target_drop is None else target_drop
    target = cfg.target if target is None else target
    logs = load_logs(results_dir)
    if not logs:
        raise FileNotFoundError(f"{results_dir}/{RUNS_DIR} holds no run logs yet")
    axes = context_axes(logs)
    runs = run_table(logs)
    table = summarize(runs, axes, target_drop, target)
    table.to_csv(results_dir / "table.csv", index=False)
    goal = {tuple(row[a] for a in axes): float(row["target"]) for _, row in table.iterrows()}
    how = (f"the absolute target {target}" if target is not None
           else f"the full model's best validation (mean over seeds) minus {target_drop}")
    goals = "; ".join(f"{_label(axes, k) or 'all runs'}: {v:.4f}" for k, v in goal.items())
    s = cfg.settings
    transports = sorted({str(log.get("config", {}).get("transport", "in-process")) for log in logs})
    lines = [
        f"# {cfg.name}: accuracy versus communication",
        "",
        f"Made by `{command}`" + (f" (tabulated from the logs in `{results_dir}/{RUNS_DIR}`)"
                                  if not command.startswith("gist sweep") else "") + ".",
        "",
    ]
    if cfg.description:
        lines += [cfg.description, ""]
    lines += [
        f"Dataset `{s.dataset}`, {s.layers} layers, hidden {s.hidden}, norm {s.norm}, dropout {s.dropout}, "
        f"{s.optimizer} lr {s.lr}, {s.rounds} rounds, data mode `{s.data_mode}`, batching `{s.batching}`, "
        f"transport: {', '.join(transports)}.",
        f"Target: {how} ({goals}).",
        "Metric: accuracy (for ogbn-* datasets through `ogb.nodeproppred.Evaluator`).",
        "MB/worker: training bytes sent or received per worker (parameters, loss reports, set-up), "
        "divided by m; for `full` that is the model handed to its one worker each round. Graph data is "
        "loaded where it lives and is not counted; eval MB/worker is the full model sent to each worker "
        "of a partitioned GIST run to score its own nodes (the baselines score on rank 0). "
        "Seconds: the workers side by side (a simulated round counts its slowest worker), evaluation included. "
        "A std is over seeds; 'reached' counts the seeds that reach the target, and the 'to target' "
        "columns average over those.",
        "",
        markdown_table(table, axes),
        "",
    ]
    text = "\n".join(lines)
    (results_dir / "table.md").write_text(text)
    if plots:
        write_plots(runs, axes, results_dir, goal, title=cfg.name)
    return text, table


def _label(axes: Sequence[str], key: Iterable) -> str:
    return ", ".join(f"{a}={v}" for a, v in zip(axes, key))


def mean_curves(runs: pd.DataFrame) -> pd.DataFrame:
    """Per method, ``m`` and ``ζ``: the seeds' curves averaged round by round
    (validation where every seed was evaluated)."""
    frames = []
    for key, g in runs.groupby(GROUP, sort=False):
        stacked = pd.concat(list(g["curve"]), keys=range(len(g)), names=["seed_i", "row"])
        mean = stacked.groupby("round")[["steps", "seconds", "bytes_per_worker", "val", "test"]].mean()
        mean = mean.reset_index()
        for name, value in zip(GROUP, key):
            mean[name] = value
        frames.append(mean)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


METHOD_COLORS = {"full": "black", "ddp": "tab:blue", "local-sgd": "tab:orange", "gist": "tab:green"}
M_STYLES = ["-", "--", ":", "-."]


def write_plots(runs: pd.DataFrame, axes: Sequence[str], out_dir: Path, goal: dict[tuple, float],
                title: str = "") -> list[Path]:
    """``accuracy_vs_bytes[-<axes>].png`` (log x) and ``accuracy_vs_time[-<axes>].png``:
    validation accuracy (mean over seeds) per method (colour) and ``m`` (line style)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    keys = list(goal)
    for key in keys:
        sel = runs[_match(runs, axes, key)] if axes else runs
        curves = mean_curves(sel)
        if curves.empty:
            continue
        suffix = "".join(f"-{a}={v}" for a, v in zip(axes, key))
        several_zeta = curves["zeta"].nunique() > 1
        m_values = sorted(curves.loc[curves["method"] != "full", "m"].unique())
        order = {name: i for i, name in enumerate(METHOD_COLORS)}
        groups = sorted(curves.groupby(GROUP, sort=False), key=lambda kv: (order.get(kv[0][0], 99), kv[0][1:]))
        for x, xlabel, stem, log_x in (("bytes_per_worker", "cumulative MB per worker", "accuracy_vs_bytes", True),
                                       ("seconds", "wall time, s (workers in parallel)", "accuracy_vs_time", False)):
            fig, ax = plt.subplots(figsize=(7, 4.5))
            for (method, m, zeta), c in groups:
                c = c.dropna(subset=["val"])
                label = f"{method}" + (f" m={m}" if method != "full" else "") + (f" ζ={zeta}" if several_zeta else "")
                xs = c[x] / 1e6 if x == "bytes_per_worker" else c[x]
                style = "-" if method == "full" else M_STYLES[m_values.index(m) % len(M_STYLES)]
                ax.plot(xs, c["val"], style, marker=".", markersize=3, linewidth=1.2,
                        color=METHOD_COLORS.get(method), label=label)
            if not math.isnan(goal[key]):
                ax.axhline(goal[key], color="grey", linestyle="--", linewidth=0.8, label="target")
            if log_x:
                ax.set_xscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("validation accuracy (mean over seeds)")
            ax.set_title(" — ".join(t for t in (title, _label(axes, key)) if t) or "all runs")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7, ncol=2)
            fig.tight_layout()
            path = out_dir / f"{stem}{suffix}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
    return written
