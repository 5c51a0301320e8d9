"""Sweeps: many runs of :func:`gist.run.run_training` from one TOML config.

A config names the settings every run shares and the grid to sweep::

    name = "cora"                      # results go to results/<name>/
    description = "Cora, 3-layer GCN/GraphSAGE as OGB's arxiv example trains it"

    [settings]                         # any field of gist.run.RunSettings
    dataset = "cora"
    layers = 3
    hidden = 256
    norm = "batch_norm"
    rounds = 20

    [sweep]
    methods = ["full", "ddp", "local-sgd", "gist"]
    subnets = [2, 4, 8]                # m; `full` always runs with m = 1
    local_steps = [5]                  # ζ
    seeds = [0, 1, 2]
    model = ["gcn", "sage"]            # any other RunSettings field: an extra axis
    processes = false                  # true: each run as m real processes

    [table]
    target_drop = 0.01                 # target = full model's best val - this
    # target = 0.80                    # or an absolute target

Every run writes one JSON log, ``runs/<run id>.json``, when it completes
(atomically, so a killed run leaves nothing half-written behind and is simply
run again). A sweep started again skips every run whose log exists and was
made with the same settings; a log made with different settings is an error,
never silently overwritten.
"""
from __future__ import annotations

import json
import re
import shutil
import sys
from dataclasses import asdict, dataclass, field, fields, replace
from itertools import product
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from .run import RunSettings, write_json

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SWEEP_METHODS = ("full", "ddp", "local-sgd", "gist")
"""``full``: the full-width model on one worker (GIST with ``m = 1``, which is
step for step a plain PyG training loop); the others as in ``gist train``."""

# Fields the sweep itself sets for every run, and fields that only say where
# or how to run and do not change what a run computes.
SWEPT = ("method", "subnets", "local_steps", "seed")
HARNESS_OWNED = ("backend", "save_model", "checkpoint", "checkpoint_every", "resume")
NOT_COMPARED = ("root", "threads", "timeout", "dist_backend", "backend")

CONFIG_COPY = "config.toml"
RUNS_DIR = "runs"
LOG_FORMAT = 1


class SweepError(ValueError):
    """A config that cannot be run, or results that do not match it."""


@dataclass
class SweepConfig:
    """A parsed sweep config (see the module docstring for the TOML layout)."""

    name: str
    settings: RunSettings
    methods: list[str]
    subnets: list[int]
    local_steps: list[int]
    seeds: list[int]
    axes: dict[str, list[Any]] = field(default_factory=dict)
    """Extra axes: other RunSettings fields swept, e.g. ``{"model": ["gcn", "sage"]}``."""
    processes: bool = False
    description: str = ""
    target_drop: float = 0.01
    target: Optional[float] = None
    path: Optional[Path] = None


@dataclass(frozen=True)
class PlannedRun:
    """One run of a sweep: its id, where it sits in the grid, its settings."""

    run_id: str
    method: str
    subnets: int
    local_steps: int
    seed: int
    context: dict[str, Any]
    settings: RunSettings

    def grid(self) -> dict[str, Any]:
        return {**self.context, "method": self.method, "m": self.subnets, "zeta": self.local_steps,
                "seed": self.seed}


def _int_list(table: dict, key: str, default: Optional[list[int]] = None) -> list[int]:
    value = table.get(key, default)
    if value is None:
        raise SweepError(f"[sweep] needs {key!r}")
    if isinstance(value, int):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, int) and not isinstance(v, bool)
                                                           for v in value):
        raise SweepError(f"[sweep] {key} must be a non-empty list of integers, got {value!r}")
    return value


def load_config(path: str | Path) -> SweepConfig:
    """Parse and check a sweep config; errors name the offending key."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"no sweep config at {path}")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SweepError(f"{path}: not valid TOML: {exc}") from exc
    return parse_config(raw, name=path.stem, path=path)


def parse_config(raw: dict[str, Any], name: str = "sweep", path: Optional[Path] = None) -> SweepConfig:
    """Build a :class:`SweepConfig` from the TOML's dictionary."""
    where = str(path) if path else "config"
    unknown = set(raw) - {"name", "description", "settings", "sweep", "table"}
    if unknown:
        raise SweepError(f"{where}: unknown top-level keys {sorted(unknown)}; expected name, description, "
                         f"[settings], [sweep], [table]")
    valid = set(RunSettings.field_names())
    settings_table = dict(raw.get("settings", {}))
    for key in settings_table:
        if key not in valid:
            raise SweepError(f"{where}: [settings] {key!r} is not a run setting; choose from {sorted(valid)}")
        if key in SWEPT:
            raise SweepError(f"{where}: [settings] {key!r} is set by the sweep; list it in [sweep] instead")
        if key in HARNESS_OWNED:
            raise SweepError(f"{where}: [settings] {key!r} is managed by the harness")
    defaults = RunSettings()
    for key, value in settings_table.items():
        expected = type(getattr(defaults, key)) if getattr(defaults, key) is not None else None
        if expected is float and isinstance(value, int):
            settings_table[key] = float(value)
        elif expected is not None and not isinstance(value, expected):
            raise SweepError(f"{where}: [settings] {key} must be {expected.__name__}, got {value!r}")
    settings = replace(defaults, **settings_table)

    sweep = dict(raw.get("sweep", {}))
    methods = sweep.pop("methods", list(SWEEP_METHODS))
    if isinstance(methods, str):
        methods = [methods]
    bad = [m for m in methods if m not in SWEEP_METHODS]
    if bad or not methods:
        raise SweepError(f"{where}: [sweep] methods must be drawn from {list(SWEEP_METHODS)}, got {methods!r}")
    subnets = _int_list(sweep, "subnets", [2, 4, 8])
    local_steps = _int_list(sweep, "local_steps", [settings.local_steps])
    seeds = _int_list(sweep, "seeds", [0])
    for key in ("subnets", "local_steps", "seeds"):
        sweep.pop(key, None)
    if any(m < 1 for m in subnets) or any(z < 1 for z in local_steps):
        raise SweepError(f"{where}: [sweep] subnets and local_steps must be >= 1")
    processes = sweep.pop("processes", False)
    if not isinstance(processes, bool):
        raise SweepError(f"{where}: [sweep] processes must be true or false, got {processes!r}")
    axes: dict[str, list[Any]] = {}
    for key, values in sweep.items():
        if key not in valid or key in SWEPT or key in HARNESS_OWNED or key in NOT_COMPARED:
            raise SweepError(f"{where}: [sweep] {key!r} cannot be swept; sweep methods, subnets, local_steps, "
                             f"seeds, or run settings such as model, hidden, data_mode")
        if not isinstance(values, list) or not values:
            raise SweepError(f"{where}: [sweep] {key} must be a non-empty list, got {values!r}")
        axes[key] = values

    table = dict(raw.get("table", {}))
    unknown = set(table) - {"target_drop", "target"}
    if unknown:
        raise SweepError(f"{where}: unknown [table] keys {sorted(unknown)}; expected target_drop, target")
    target_drop = float(table.get("target_drop", 0.01))
    target = table.get("target")
    cfg = SweepConfig(name=str(raw.get("name", name)), settings=settings, methods=list(methods),
                      subnets=subnets, local_steps=local_steps, seeds=seeds, axes=axes, processes=processes,
                      description=str(raw.get("description", "")), target_drop=target_drop,
                      target=float(target) if target is not None else None, path=path)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", cfg.name):
        raise SweepError(f"{where}: name {cfg.name!r} must use only letters, digits, '.', '_' and '-'")
    plan(cfg)  # every grid point must make valid settings
    return cfg


def _id_part(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9.=-]+", "-", str(value))


def plan(cfg: SweepConfig) -> list[PlannedRun]:
    """Every run of the grid, in order: extra axes, then method, ``m``, ``ζ``, seed.

    ``full`` runs once per ``ζ`` and seed with ``m = 1``; the other methods
    run for every ``m > 1`` listed (with ``m = 1`` they would repeat ``full``).
    """
    runs: list[PlannedRun] = []
    names = list(cfg.axes)
    for combo in product(*(cfg.axes[k] for k in names)):
        context = dict(zip(names, combo))
        for method in cfg.methods:
            ms = [1] if method == "full" else [m for m in cfg.subnets if m > 1]
            for m, zeta, seed in product(ms, cfg.local_steps, cfg.seeds):
                settings = replace(cfg.settings, **context, method="gist" if method == "full" else method,
                                   subnets=m, local_steps=zeta, seed=seed)
                try:
                    settings.gist_config().validate()
                    if method == "gist" and settings.hidden % m:
                        raise ValueError(f"hidden width {settings.hidden} is not divisible by m={m}")
                except ValueError as exc:
                    raise SweepError(f"sweep {cfg.name}: {context} {method} m={m} ζ={zeta}: {exc}") from exc
                parts = [f"{k}={_id_part(v)}" for k, v in context.items()]
                parts += [method, f"m{m}", f"z{zeta}", f"seed{seed}"]
                runs.append(PlannedRun("_".join(parts), method, m, zeta, seed, context, settings))
    ids = [r.run_id for r in runs]
    if len(set(ids)) != len(ids):
        raise SweepError(f"sweep {cfg.name}: two grid points share a run id; make the axis values distinct")
    return runs


# ----------------------------------------------------------------------------
# Run logs


def compact_log(log: dict[str, Any], run: PlannedRun, cfg: SweepConfig) -> dict[str, Any]:
    """The sweep's log of one run: :func:`gist.run.run_training`'s log with
    the byte ledger folded into per-round totals by kind.

    Each round record gains ``bytes``: ``{kind: bytes}`` moved that round, all
    workers together; ``setup_bytes`` holds round ``-1`` (the handshake, the
    initial broadcast of the baselines, and ``data``: graph bytes each worker
    holds, which never cross the wire)."""
    per_round: dict[int, dict[str, int]] = {}
    for t in log["ledger"]:
        kinds = per_round.setdefault(int(t["round"]), {})
        kinds[t["kind"]] = kinds.get(t["kind"], 0) + int(t["nbytes"])
    rounds = [{**r, "bytes": per_round.get(r["round"], {})} for r in log["rounds"]]
    return {
        "format": LOG_FORMAT,
        "sweep": {"name": cfg.name, "run_id": run.run_id, **run.grid(), "context": run.context},
        "config": log["config"],
        "environment": log["environment"],
        "metric": log.get("metric"),
        "setup_bytes": per_round.get(-1, {}),
        "rounds": rounds,
        "summary": log["summary"],
    }


def _compared(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if k in RunSettings.field_names() and k not in NOT_COMPARED
            and k not in HARNESS_OWNED}


def _differences(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    have, want = _compared(stored), _compared(wanted)
    return [f"{k}: stored {have.get(k)!r}, config {want[k]!r}" for k in want if have.get(k) != want[k]]


def stored_log(path: Path, run: PlannedRun) -> Optional[dict[str, Any]]:
    """The completed log of ``run`` at ``path``, ``None`` if there is none.

    Raises :class:`SweepError` if the log there was made with other settings."""
    if not path.is_file():
        return None
    try:
        log = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SweepError(f"{path} is not a readable run log ({exc}); move it away to re-run {run.run_id}") from exc
    diff = _differences(log.get("config", {}), asdict(run.settings))
    if diff:
        raise SweepError(f"{path} was made with other settings than the config ({'; '.join(diff)}); "
                         f"use another results directory, or move the old logs away")
    return log


def results_dir_for(cfg: SweepConfig, results_root: str | Path = "results") -> Path:
    return Path(results_root) / cfg.name


def execute(run: PlannedRun, processes: bool, progress: bool) -> dict[str, Any]:
    """Run one grid point, in this process or as ``m`` real processes."""
    from .run import launch_local, run_training

    if processes:
        return launch_local(run.settings, run.subnets, progress=progress)
    return run_training(run.settings, progress=progress)


def run_sweep(cfg: SweepConfig, out_dir: str | Path, progress: bool = True,
              runner: Callable[[PlannedRun, bool, bool], dict[str, Any]] = execute,
              say: Callable[[str], None] = print) -> dict[str, int]:
    """Run every planned run of ``cfg`` whose log is not in ``out_dir/runs``.

    Returns ``{"planned", "skipped", "ran"}``. The config is copied to
    ``out_dir/config.toml`` so :func:`gist.tables.tabulate` can be re-run
    from the directory alone.
    """
    from tqdm.auto import tqdm

    out = Path(out_dir)
    runs_dir = out / RUNS_DIR
    runs_dir.mkdir(parents=True, exist_ok=True)
    _save_config(cfg, out)
    for stale in runs_dir.glob("*.tmp"):  # a run killed while its log was being written
        stale.unlink()
    planned = plan(cfg)
    todo = [r for r in planned if stored_log(runs_dir / f"{r.run_id}.json", r) is None]
    counts = {"planned": len(planned), "skipped": len(planned) - len(todo), "ran": 0}
    if counts["skipped"]:
        say(f"sweep {cfg.name}: {counts['skipped']} of {len(planned)} runs already done in {runs_dir}")
    bar = tqdm(total=len(planned), initial=counts["skipped"], desc=f"sweep {cfg.name}", unit="run",
               disable=not progress, dynamic_ncols=True)
    try:
        for run in todo:
            bar.set_postfix_str(run.run_id, refresh=True)
            try:
                log = runner(run, cfg.processes, progress)
            except Exception as exc:
                raise SweepError(f"sweep {cfg.name}: run {run.run_id} failed: {exc}") from exc
            write_json(compact_log(log, run, cfg), runs_dir / f"{run.run_id}.json")
            counts["ran"] += 1
            bar.update(1)
    finally:
        bar.close()
    return counts


def _save_config(cfg: SweepConfig, out: Path) -> None:
    """Keep the config beside the results (refusing to mix two configs)."""
    target = out / CONFIG_COPY
    if cfg.path is None:
        return
    text = cfg.path.read_text()
    if target.is_file() and target.read_text() != text:
        old = parse_config(tomllib.loads(target.read_text()), name=cfg.name)
        diff = _differences(asdict(old.settings), asdict(cfg.settings))
        if diff:
            raise SweepError(f"{out} holds results of a config with other settings ({'; '.join(diff)}; "
                             f"see {target}); use another results directory, or move the old one away")
    if cfg.path.resolve() != target.resolve():
        shutil.copyfile(cfg.path, target)


def load_results_config(results_dir: str | Path) -> SweepConfig:
    """The config copied into a results directory by :func:`run_sweep`."""
    path = Path(results_dir) / CONFIG_COPY
    if not path.is_file():
        raise SweepError(f"{results_dir} has no {CONFIG_COPY}: is it a directory written by `gist sweep`?")
    return load_config(path)


def describe(cfg: SweepConfig) -> str:
    """One line per axis, for ``gist sweep --dry-run``."""
    planned = plan(cfg)
    lines = [f"sweep {cfg.name}: {len(planned)} runs" + (" (real processes)" if cfg.processes else ""),
             f"  methods {cfg.methods}, m {cfg.subnets}, ζ {cfg.local_steps}, seeds {cfg.seeds}"]
    lines += [f"  {k} {v}" for k, v in cfg.axes.items()]
    shared = {f.name: getattr(cfg.settings, f.name) for f in fields(RunSettings)
              if f.name not in SWEPT and f.name not in HARNESS_OWNED and f.name not in cfg.axes}
    lines.append("  settings " + ", ".join(f"{k}={v}" for k, v in shared.items()))
    return "\n".join(lines)


def command_line(argv: Sequence[str]) -> str:
    """The command as a user would retype it."""
    import shlex

    return " ".join(["gist", *(shlex.quote(a) for a in argv)])
