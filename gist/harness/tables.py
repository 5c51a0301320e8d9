"""Tables of accuracy versus communication from sweep logs (``gist table``).

Inputs are the run logs :func:`gist.harness.sweep.run_sweep` writes
(``runs/<run id>.json``): per round ``local_steps``, ``seconds``,
``parallel_seconds``, ``eval_seconds``, ``bytes`` by kind, and the ``val`` /
``test`` metric where evaluated. Definitions used throughout:

* **bytes per worker** after round ``r``: every training byte that crossed
  the wire up to and including round ``r`` (parameters, loss reports, the
  set-up handshake and the baselines' initial broadcast), divided by the
  run's number of workers ``m``; GIST's ``prior`` and ``bn_stats`` bytes
  included. Not counted: ``data`` (the graph each worker loads where it
  lives) and ``eval`` (the full model sent to the workers to score their own
  nodes, or to re-estimate BatchNorm statistics there, in ``partitioned``
  GIST runs; the baselines evaluate on rank 0 for free), which is reported on
  its own as **eval bytes per worker**.
* **seconds** after round ``r``: the sum of the rounds' ``parallel_seconds``
  (workers side by side; the wall time for real processes): training only.
  Evaluation (scoring, and the partitioned recipe's BatchNorm re-estimation)
  is its own column, **eval s**: it depends on how often a run is scored, not
  on the method's training cost.
* **target**: the ``full`` method's best validation (mean over seeds, best
  ``ζ``) minus ``target_drop``, per value of the extra axes (e.g. per model);
  or the config's absolute ``target``.
* **still rising**: the seeds whose run had not converged when it stopped
  (:func:`gist.harness.curves.still_rising`); **best round** the round of
  the best validation.
* **failed**: runs that diverged (a non-finite loss or parameter), listed
  under the table with the reason and left out of every other column.
* **to target**: bytes per worker and seconds at the first evaluated round
  whose validation reaches the target; a run that never reaches it has none.
* **at gist's bytes / seconds**: the best validation among the evaluated
  rounds within the bytes per worker (or seconds) that the ``gist`` run at
  the same ``m`` and ``ζ`` used over its whole run: equal-budget comparisons.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from ..errors import ConfigError, MissingFileError
from ..methods import method_names, methods_with_role
from .curves import GROUP, RISING_MARGIN, axes_label, context_axes, first_reach, load_logs, match_axes, run_table
from .plots import write_plots
from .sweep import RUNS_DIR, SweepConfig, load_results_config


def role_holder(role: str) -> str:
    """The method that plays ``role`` in the tables (:data:`gist.engine.ROLES`): the first registered one."""
    holders = methods_with_role(role)
    if not holders:
        raise ConfigError(f"no registered method plays the role {role!r} in the tables")
    return holders[0]


def targets(
    runs: pd.DataFrame, axes: Sequence[str], target_drop: float = 0.01, target: Optional[float] = None
) -> dict[tuple, float]:
    """The validation target per value of ``axes`` (see the module docstring)."""
    out: dict[tuple, float] = {}
    keys = runs[list(axes)].drop_duplicates().itertuples(index=False, name=None) if axes else [()]
    for key in keys:
        if target is not None:
            out[tuple(key)] = target
            continue
        sel = runs[match_axes(runs, axes, key) & (runs["method"] == role_holder("target"))]
        if sel.empty:
            out[tuple(key)] = math.nan
            continue
        out[tuple(key)] = float(sel.groupby("zeta")["best_val"].mean().max()) - target_drop
    return out


def summarize(
    runs: pd.DataFrame, axes: Sequence[str], target_drop: float = 0.01, target: Optional[float] = None
) -> pd.DataFrame:
    """A row per extra-axes value, method, ``m`` and ``ζ``: seeds, best val and
    test at best val (mean, std), bytes per worker, bytes and seconds to the
    target (mean over the seeds that reach it; ``reached`` counts them), and
    the ratio of bytes to target against the ``bytes`` baseline (``ddp``) at
    the same ``m`` and ``ζ`` (column ``bytes_vs_<baseline>``).

    Failed (diverged) runs are counted in ``failed`` and left out of every
    other column, the target included."""
    runs = runs.copy()
    if "failure" not in runs:
        runs["failure"] = None
    completed = runs[runs["failure"].isna()]
    goal = targets(completed, axes, target_drop, target)
    reach = [
        first_reach(c, goal.get(tuple(row[a] for a in axes), math.nan))
        for c, (_, row) in zip(runs["curve"], runs.iterrows())
    ]
    runs["bytes_to_target"] = [r["bytes_per_worker"] if r else math.nan for r in reach]
    runs["seconds_to_target"] = [r["seconds"] if r else math.nan for r in reach]
    runs["reached"] = [r is not None for r in reach]
    order = {m: i for i, m in enumerate(method_names())}
    rows = []
    for key, every in runs.groupby([*axes, *GROUP], sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        rec = dict(zip([*axes, *GROUP], key))
        g = every[every["failure"].isna()]
        rec.update(
            {
                "target": goal.get(tuple(rec[a] for a in axes), math.nan),
                "seeds": len(g),
                "failed": len(every) - len(g),
                "best_val": g["best_val"].mean(),
                "best_val_std": _std(g["best_val"]),
                "test_at_best_val": g["test_at_best_val"].mean(),
                "test_at_best_val_std": _std(g["test_at_best_val"]),
                "best_round": g["best_round"].mean(),
                "still_rising": int(g["still_rising"].sum()),
                "best_parts_val": g["best_parts_val"].mean(),
                "mb_per_worker": g["bytes_per_worker"].mean() / 1e6,
                "eval_mb_per_worker": g["eval_bytes_per_worker"].mean() / 1e6,
                "link_mb_per_host": g["link_bytes_per_host"].mean() / 1e6,
                "reached": int(g["reached"].sum()),
                "mb_to_target": g["bytes_to_target"].mean() / 1e6 if g["reached"].any() else math.nan,
                "seconds_to_target": g["seconds_to_target"].mean() if g["reached"].any() else math.nan,
                "seconds": g["seconds"].mean(),
                "eval_seconds": g["eval_seconds"].mean(),
            }
        )
        rows.append(rec)
    table = pd.DataFrame(rows)
    if table["link_mb_per_host"].isna().all():  # no run across virtual hosts: no such column
        table = table.drop(columns="link_mb_per_host")
    if table.empty:
        return table
    ratios, baseline = [], role_holder("bytes")
    for _, row in table.iterrows():
        same = table[
            match_axes(table, axes, [row[a] for a in axes])
            & (table["method"] == baseline)
            & (table["m"] == row["m"])
            & (table["zeta"] == row["zeta"])
        ]
        base = same["mb_to_target"].iloc[0] if len(same) else math.nan
        ratios.append(row["mb_to_target"] / base if base and not math.isnan(base) else math.nan)
    table[f"bytes_vs_{baseline}"] = ratios
    _add_budget_columns(table, runs[runs["failure"].isna()], axes)
    table["_order"] = table["method"].map(lambda name: order.get(name, len(order)))
    table = table.sort_values([*axes, "_order", "m", "zeta"], kind="stable").drop(columns="_order")
    return table.reset_index(drop=True)


def best_within(curve: pd.DataFrame, column: str, budget: float) -> float:
    """The best validation among the evaluated rounds whose cumulative
    ``column`` (``bytes_per_worker`` or ``seconds``) is within ``budget``."""
    within = curve[(curve[column] <= budget) & curve["val"].notna()]
    return float(within["val"].max()) if not within.empty else math.nan


def _add_budget_columns(table: pd.DataFrame, runs: pd.DataFrame, axes: Sequence[str]) -> None:
    """``val_at_<budget>_bytes`` / ``val_at_<budget>_seconds``: each row's best
    validation (mean over seeds) within the bytes per worker / seconds that
    the ``budget`` method (``gist``) used over its whole run at the same ``m`` and ``ζ``."""
    at_bytes, at_seconds, budget_method = [], [], role_holder("budget")
    for _, row in table.iterrows():
        key = [row[a] for a in axes]
        budget = table[
            match_axes(table, axes, key)
            & (table["method"] == budget_method)
            & (table["m"] == row["m"])
            & (table["zeta"] == row["zeta"])
        ]
        sel = runs[
            match_axes(runs, axes, key)
            & (runs["method"] == row["method"])
            & (runs["m"] == row["m"])
            & (runs["zeta"] == row["zeta"])
        ]
        if budget.empty or sel.empty:
            at_bytes.append(math.nan)
            at_seconds.append(math.nan)
            continue
        max_bytes, max_seconds = budget["mb_per_worker"].iloc[0] * 1e6, budget["seconds"].iloc[0]
        at_bytes.append(float(pd.Series([best_within(c, "bytes_per_worker", max_bytes) for c in sel["curve"]]).mean()))
        at_seconds.append(float(pd.Series([best_within(c, "seconds", max_seconds) for c in sel["curve"]]).mean()))
    table[f"val_at_{budget_method}_bytes"] = at_bytes
    table[f"val_at_{budget_method}_seconds"] = at_seconds


def _scorer(cfg: SweepConfig) -> str:
    """``parts`` where a swept method's own settings score on the workers' parts, else ``graph``."""
    scorers = {getattr(cfg.settings_of(m).options, "scorer", "graph") for m in cfg.methods}
    return "parts" if "parts" in scorers else "graph"


def _scored(scorer: str, table: pd.DataFrame) -> str:
    """How the table's models were scored, in words."""
    if scorer == "parts":
        return "scored by the workers, each on its own part (edges between parts missing), the counts summed."
    parts = table["best_parts_val"].notna().any()
    return "every method's model scored the same way: on the whole graph at the coordinator" + (
        "; 'best val on parts' is partitioned GIST's model scored by its workers, each on its own part "
        "(edges between parts missing), the counts summed."
        if parts
        else "."
    )


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
    baseline, budget = role_holder("bytes"), role_holder("budget")
    shown = pd.DataFrame(
        {
            **{a: table[a] for a in axes},
            "method": table["method"],
            "m": table["m"],
            "ζ": table["zeta"],
            "seeds": table["seeds"],
            "best val": [_pm(a, b) for a, b in zip(table["best_val"], table["best_val_std"])],
            "test at best val": [_pm(a, b) for a, b in zip(table["test_at_best_val"], table["test_at_best_val_std"])],
            "best round": [_num(v, ".3g") for v in table["best_round"]],
            "still rising": [f"{r}/{s}" for r, s in zip(table["still_rising"], table["seeds"])],
            "MB/worker": [_num(v, ".3g") for v in table["mb_per_worker"]],
            "eval MB/worker": [_num(v, ".3g") for v in table["eval_mb_per_worker"]],
            "reached": [f"{r}/{s}" for r, s in zip(table["reached"], table["seeds"])],
            "MB/worker to target": [_num(v, ".3g") for v in table["mb_to_target"]],
            "s to target": [_num(v, ".1f") for v in table["seconds_to_target"]],
            "eval s": [_num(v, ".1f") for v in table["eval_seconds"]],
            f"bytes vs {baseline}": [_num(v, ".3f") for v in table[f"bytes_vs_{baseline}"]],
            f"val at {budget}'s MB": [_num(v, ".4f") for v in table[f"val_at_{budget}_bytes"]],
            f"val at {budget}'s s": [_num(v, ".4f") for v in table[f"val_at_{budget}_seconds"]],
        }
    )
    if "link_mb_per_host" in table:
        at = list(shown.columns).index("eval MB/worker") + 1
        shown.insert(at, "link MB/host", [_num(v, ".3g") for v in table["link_mb_per_host"]])
    if table["best_parts_val"].notna().any():
        shown.insert(9, "best val on parts", [_num(v, ".4f") for v in table["best_parts_val"]])
    if table["failed"].any():
        shown.insert(len(axes) + 4, "failed", table["failed"])
    return shown.to_markdown(index=False)


def _shared_runs(logs: Sequence[dict[str, Any]]) -> list[str]:
    """A sentence on the runs that stand for several places, if any (see :func:`gist.harness.sweep.plan`)."""
    over = {k: v for log in logs for k, v in log["sweep"].get("stands_for", {}).items()}
    if not over:
        return []
    methods = sorted({log["sweep"]["method"] for log in logs if log["sweep"].get("stands_for")})
    where = ", ".join(f"{k} {v[0]}" for k, v in over.items())
    return [
        f"One-process runs ({', '.join(f'`{m}`' for m in methods)}) move nothing over a link: each ran once "
        f"({where}) and its rows stand for every {' and '.join(over)}."
    ]


def failure_lines(runs: pd.DataFrame) -> list[str]:
    """One line per failed run: its id and the reason."""
    if "failure" not in runs:
        return []
    failed = runs[runs["failure"].notna()]
    return [f"- `{row['run_id']}`: {row['failure']}" for _, row in failed.iterrows()]


def tabulate(
    results_dir: str | Path,
    command: str,
    cfg: Optional[SweepConfig] = None,
    target_drop: Optional[float] = None,
    target: Optional[float] = None,
    plots: bool = True,
    say: Optional[Callable[[str], None]] = None,
) -> tuple[str, pd.DataFrame]:
    """Write ``table.md``, ``table.csv`` and the plots into ``results_dir``
    from its run logs; return the Markdown and the summary frame.

    ``command`` heads the Markdown: the exact command that made it. With
    ``say``, a file in ``runs/`` that is not a run log is left out and
    ``say`` told why (without: :class:`~gist.harness.sweep.SweepError`)."""
    results_dir = Path(results_dir)
    cfg = cfg if cfg is not None else load_results_config(results_dir)
    target_drop = cfg.target_drop if target_drop is None else target_drop
    target = cfg.target if target is None else target
    skipped: Optional[list[str]] = [] if say is not None else None
    logs = load_logs(results_dir, skipped)
    for problem in skipped or []:
        say(f"skipped: {problem}")
    if not logs:
        raise MissingFileError(f"{results_dir}/{RUNS_DIR} holds no run logs yet")
    axes = context_axes(logs)
    runs = run_table(logs)
    table = summarize(runs, axes, target_drop, target)
    table.to_csv(results_dir / "table.csv", index=False)
    goal = {tuple(row[a] for a in axes): float(row["target"]) for _, row in table.iterrows()}
    how = (
        f"the absolute target {target}"
        if target is not None
        else f"the full model's best validation (mean over seeds) minus {target_drop}"
    )
    goals = "; ".join(f"{axes_label(axes, k) or 'all runs'}: {v:.4f}" for k, v in goal.items())
    s = cfg.settings
    d, model = s.data, s.model
    reference, budget = role_holder("target"), role_holder("budget")
    transports = sorted({str(log.get("config", {}).get("transport", "in-process")) for log in logs})
    lines = [
        f"# {cfg.name}: accuracy versus communication",
        "",
        f"Made by `{command}`"
        + (f" (tabulated from the logs in `{results_dir}/{RUNS_DIR}`)" if not command.startswith("gist sweep") else "")
        + ".",
        "",
    ]
    if cfg.description:
        lines += [cfg.description, ""]
    lines += [
        f"Dataset `{d.dataset}`, {model.layers} layers, hidden {model.hidden}, norm {s.norm}, "
        f"dropout {model.dropout}, {s.local.optimizer} lr {s.local.lr}, {s.rounds} rounds, data mode `{d.mode}`, "
        f"batching `{d.batching}`, "
        f"transport: {', '.join(transports)}.",
        f"Target: {how} ({goals}).",
        "Metric: accuracy (for ogbn-* datasets through `ogb.nodeproppred.Evaluator`), " + _scored(_scorer(cfg), table),
        "MB/worker: training bytes sent or received per worker (parameters, loss reports, set-up), "
        f"divided by m; for `{reference}` that is the model handed to its one worker each round. Graph data is "
        "loaded where it lives and is not counted; eval MB/worker is the full model sent to each worker "
        "of a partitioned GIST run to score its own nodes or re-estimate BatchNorm statistics there (the "
        "baselines score on rank 0); the statistics themselves (bn_stats) and the label counts (prior) "
        "count as training bytes. "
        "Seconds: training time, the workers side by side (a simulated round counts its slowest worker); "
        "evaluation (scoring, and the recipe's BatchNorm re-estimation) is not in them: 'eval s' is its total "
        "over the run, every method scored on the same rounds. "
        "A std is over seeds; 'best round' is the round of the best validation (mean over seeds); "
        f"'still rising' counts the seeds whose best validation in the last quarter of rounds beats the "
        f"best before it by more than {RISING_MARGIN} (not converged when the run stopped); 'reached' counts the "
        "seeds that reach the target, and the 'to target' "
        f"columns average over those. 'val at {budget}'s MB' / 'val at {budget}'s s': the best validation a run "
        f"reached within the bytes per worker / seconds of the `{budget}` run at the same m and ζ (mean over seeds).",
        *_shared_runs(logs),
        *(
            [
                "'link MB/host' (runs across virtual hosts): the bytes each host sent over its link to the other "
                "hosts, as the hosts' kernels counted them over the whole run (whole packets: headers, heartbeats, "
                "set-up and evaluation included; mean over hosts)."
            ]
            if "link_mb_per_host" in table
            else []
        ),
        "",
        markdown_table(table, axes),
        "",
    ]
    failures = failure_lines(runs)
    if failures:
        lines += [
            "Failed runs ('failed' column; left out of every other column, `gist sweep --retry-failed` "
            "runs them again):",
            "",
            *failures,
            "",
        ]
    text = "\n".join(lines)
    (results_dir / "table.md").write_text(text)
    if plots:
        write_plots(runs[runs["failure"].isna()], axes, results_dir, goal, title=cfg.name)
    return text, table
