"""Sweeps: many runs of :func:`gist.run.run_training` from one TOML config.

A config names the settings every run shares and the grid to sweep::

    name = "cora"                      # results go to results/<name>/
    description = "Cora, 3-layer GCN/GraphSAGE as OGB's arxiv example trains it"

    [settings]                         # any run setting, by flat name (gist.config)
    dataset = "cora"
    layers = 3
    hidden = 256
    norm = "batch_norm"
    rounds = 20

    [sweep]
    methods = ["full", "ddp", "local-sgd", "gist"]   # any registered method (gist.methods)
    subnets = [2, 4, 8]                # m; a method with a fixed m (`full`: 1) runs with that
    local_steps = [5]                  # ζ
    seeds = [0, 1, 2]
    model = ["gcn", "sage"]            # any other run setting: an extra axis
    processes = false                  # true: each run as m real processes

    [variants]                         # optional: named settings of a method, listed in methods
    gist-plain = { method = "gist", gist_recipe = "plain" }
    # gist = { method = "gist", optimizer_state = "fresh" }   # one named after its method pins its row

A method's own settings (``gist_recipe``, ``label_prior``, ...: see
:mod:`gist.config`) may stand in ``[settings]``: they apply to that
method's runs (and its variants'), and no other method sees them.

    [table]
    target_drop = 0.01                 # target = full model's best val - this
    # target = 0.80                    # or an absolute target

A variant is a row of its own in tables and plots (e.g. the published plain
GIST beside the partitioned recipe); its settings override ``[settings]``.

Every run writes one JSON log, ``runs/<run id>.json``, when it completes
(atomically, so a killed run leaves nothing half-written behind and is simply
run again). A sweep started again skips every run whose log exists and was
made with the same settings; a log made with different settings is an error,
never silently overwritten. A run that diverges (see
:class:`gist.run.RunFailed`) is recorded as failed, with the rounds before
it and the reason, and the sweep moves on; it is not run again unless asked
(``retry_failed``, ``gist sweep --retry-failed``). Logs written before the config was nested (flat
``config``) and before ``full`` was a method of its own (``method = "gist"``
with ``m = 1``) are read as they are (:func:`migrate_log`).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache, partial
from itertools import product
from pathlib import Path
from typing import Any, Optional

from tqdm.auto import tqdm

from ..config import MAX_SEED, RUN_SETTINGS, RunConfig, flat_names, setting_fields
from ..errors import ConfigError
from ..files import LockHeld, exclusive_lock, lock_holder, write_output
from ..methods import get_method, method_names
from ..multihost import launch
from ..run import RunFailed, run_training, write_json
from ..settings import number_problem, value_kind, value_problem

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SWEPT = ("method", "subnets", "local_steps", "seed")
"""Settings the sweep's grid sets for every run (listed in ``[sweep]``)."""
PLACE_AXES = ("bandwidth", "hosts")
"""Settings that do not change results but may be swept: where the runs run (their times differ)."""

CONFIG_COPY = "config.toml"
RUNS_DIR = "runs"
LOG_FORMAT = 1


class SweepError(ConfigError):
    """A config that cannot be run, or results that do not match it."""


@dataclass
class SweepConfig:
    """A parsed sweep config (see the module docstring for the TOML layout)."""

    name: str
    settings: RunConfig
    """The settings every run has (the method's own options are in :attr:`method_settings`)."""
    methods: list[str]
    subnets: list[int]
    local_steps: list[int]
    seeds: list[int]
    axes: dict[str, list[Any]] = field(default_factory=dict)
    """Extra axes: other run settings swept, e.g. ``{"model": ["gcn", "sage"]}``."""
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Named method variants: ``{"gist-plain": {"method": "gist", "gist_recipe": "plain"}}``."""
    processes: bool = False
    description: str = ""
    target_drop: float = 0.01
    target: Optional[float] = None
    path: Optional[Path] = None
    method_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    """``[settings]`` that belong to one method: ``{"gist": {"gist_recipe": "plain"}}``."""

    def settings_of(self, method: str) -> RunConfig:
        """The shared settings with ``method``'s own (a method or a variant's method)."""
        base = self.variants.get(method, {}).get("method", method)
        return self.settings.replace(method=base, **self.method_settings.get(base, {}))


@dataclass(frozen=True)
class PlannedRun:
    """One run of a sweep: its id, where it sits in the grid, its settings."""

    run_id: str
    method: str
    subnets: int
    local_steps: int
    seed: int
    context: dict[str, Any]
    settings: RunConfig
    stands_for: dict[str, list[Any]] = field(default_factory=dict)
    """Place axes whose every value this run stands for: a one-process run
    (``full``) crosses no link, so it runs once, at each axis's first value."""

    def grid(self) -> dict[str, Any]:
        return {**self.context, "method": self.method, "m": self.subnets, "zeta": self.local_steps, "seed": self.seed}


def _int_list(table: dict, key: str, default: Optional[list[int]] = None) -> list[int]:
    value = table.get(key, default)
    if value is None:
        raise SweepError(f"[sweep] needs {key!r}")
    if isinstance(value, int):
        value = [value]
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
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
    unknown = set(raw) - {"name", "description", "settings", "sweep", "variants", "table"}
    if unknown:
        raise SweepError(
            f"{where}: unknown top-level keys {sorted(unknown)}; expected name, description, "
            f"[settings], [sweep], [variants], [table]"
        )
    defaults = {name: f.default for name, _, f in setting_fields()}
    owners = {name: group for name, group, _ in setting_fields() if group in method_names()}
    harness_owned = flat_names(per_run=True)
    settings_table = dict(raw.get("settings", {}))
    for key in settings_table:
        if key not in defaults:
            raise SweepError(f"{where}: [settings] {key!r} is not a run setting; choose from {sorted(defaults)}")
        if key == "method":
            raise SweepError(f"{where}: [settings] 'method' is set by the sweep; list it in [sweep] methods instead")
        if key in SWEPT:
            raise SweepError(f"{where}: [settings] {key!r} is set by the sweep; list it in [sweep] instead")
        if key in harness_owned:
            raise SweepError(f"{where}: [settings] {key!r} is managed by the harness")
    for key, value in settings_table.items():
        settings_table[key] = _checked(where, "[settings]", key, value)
    method_settings: dict[str, dict[str, Any]] = {}
    for key in [k for k in settings_table if k in owners]:
        method_settings.setdefault(owners[key], {})[key] = settings_table.pop(key)
    try:
        settings = RunConfig.from_flat(**settings_table)
        for method, values in method_settings.items():
            RunConfig.from_flat(method=method, **values)  # the names and values of each method's own
    except ConfigError as exc:
        raise SweepError(f"{where}: [settings] {exc}") from exc

    variants = _parse_variants(raw.get("variants", {}), where)
    sweep = dict(raw.get("sweep", {}))
    methods = sweep.pop("methods", method_names())
    if isinstance(methods, str):
        methods = [methods]
    known = method_names() + list(variants)
    bad = [m for m in methods if m not in known]
    if bad or not methods:
        raise SweepError(f"{where}: [sweep] methods must be drawn from {known}, got {methods!r}")
    swept_bases = {variants.get(m, {}).get("method", m) for m in methods}
    for owner, values in method_settings.items():
        if owner not in swept_bases:
            raise SweepError(
                f"{where}: [settings] {sorted(values)} are settings of --method {owner}, which the sweep does not run"
            )
    subnets = _int_list(sweep, "subnets", [2, 4, 8])
    local_steps = _int_list(sweep, "local_steps", [settings.local.local_steps])
    seeds = _int_list(sweep, "seeds", [0])
    for key in ("subnets", "local_steps", "seeds"):
        sweep.pop(key, None)
    if any(m < 1 for m in subnets) or any(z < 1 for z in local_steps):
        raise SweepError(f"{where}: [sweep] subnets and local_steps must be >= 1")
    if any(not 0 <= s <= MAX_SEED for s in seeds):
        raise SweepError(f"{where}: [sweep] seeds must be integers from 0 to {MAX_SEED}, got {seeds}")
    processes = sweep.pop("processes", False)
    if not isinstance(processes, bool):
        raise SweepError(f"{where}: [sweep] processes must be true or false, got {processes!r}")
    axes: dict[str, list[Any]] = {}
    sweepable = (set(flat_names(changes_results=True)) | set(PLACE_AXES)) - set(SWEPT)
    for key, values in sweep.items():
        if key in owners and swept_bases != {owners[key]}:
            raise SweepError(
                f"{where}: [sweep] {key!r} is a setting of --method {owners[key]}: sweep it with [variants] "
                f"(or sweep only {owners[key]})"
            )
        if key not in sweepable:
            raise SweepError(
                f"{where}: [sweep] {key!r} cannot be swept; sweep methods, subnets, local_steps, "
                f"seeds, or run settings such as model, hidden, data_mode, bandwidth"
            )
        if not isinstance(values, list) or not values:
            raise SweepError(f"{where}: [sweep] {key} must be a non-empty list, got {values!r}")
        axes[key] = [_checked(where, "[sweep]", key, v) for v in values]

    table = dict(raw.get("table", {}))
    unknown = set(table) - {"target_drop", "target"}
    if unknown:
        raise SweepError(f"{where}: unknown [table] keys {sorted(unknown)}; expected target_drop, target")
    target_drop = _table_number(where, "target_drop", table.get("target_drop", 0.01))
    target = table.get("target")
    if target is not None:
        target = _table_number(where, "target", target)
    cfg = SweepConfig(
        name=str(raw.get("name", name)),
        settings=settings,
        methods=list(methods),
        subnets=subnets,
        local_steps=local_steps,
        seeds=seeds,
        axes=axes,
        variants=variants,
        processes=processes,
        description=str(raw.get("description", "")),
        target_drop=target_drop,
        target=float(target) if target is not None else None,
        path=path,
        method_settings=method_settings,
    )
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", cfg.name) or cfg.name in (".", ".."):
        raise SweepError(
            f"{where}: name {cfg.name!r} must be one folder name: letters, digits, '.', '_' and '-', not '.' or '..'"
        )
    plan(cfg)  # every grid point must make valid settings
    return cfg


@cache
def _setting_fields() -> dict[str, Any]:
    """Every setting's field by its flat name (read once)."""
    return {name: f for name, _, f in setting_fields()}


def _checked(where: str, section: str, key: str, value: Any) -> Any:
    """``value`` for the setting ``key`` (an integer given for a float setting
    made a float), or :class:`SweepError` naming the file, the key, what it
    must be and the value."""
    f = _setting_fields().get(key)
    if f is None:
        return value
    problem = value_problem(f, value)
    if problem is not None:
        raise SweepError(f"{where}: {section} {key} {problem}, got {value!r}")
    return float(value) if value_kind(f) is float and isinstance(value, int) else value


def _table_number(where: str, key: str, value: Any) -> float:
    """A number of ``[table]``: finite, and for ``target_drop`` not negative."""
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    problem = number_problem(float(value), 0.0 if key == "target_drop" else None) if numeric else "must be a number"
    if problem is not None:
        raise SweepError(f"{where}: [table] {key} {problem}, got {value!r}")
    return float(value)


def _parse_variants(table: Any, where: str) -> dict[str, dict[str, Any]]:
    """``[variants]``: each a registered ``method`` plus run settings (its own
    included). A variant named after its own method pins settings of that
    method's row (``gist = { method = "gist", optimizer_state = "fresh" }``)."""
    if not isinstance(table, dict):
        raise SweepError(f"{where}: [variants] must be a table of named settings")
    out: dict[str, dict[str, Any]] = {}
    for name, values in table.items():
        if not isinstance(values, dict) or values.get("method") not in method_names():
            raise SweepError(f"{where}: variant {name!r} needs method = one of {method_names()}")
        if name in method_names() and values["method"] != name:
            raise SweepError(
                f"{where}: variant {name!r} has the name of another method; name it otherwise "
                f"(a variant named {values['method']!r} pins settings of that method's own row)"
            )
        sweepable = set(flat_names(changes_results=True, method=values["method"])) - set(SWEPT)
        bad = [k for k in values if k != "method" and k not in sweepable]
        if bad:
            raise SweepError(f"{where}: variant {name!r}: {bad} cannot be set per variant; use run settings")
        out[name] = {k: v if k == "method" else _checked(where, f"variant {name!r}:", k, v) for k, v in values.items()}
    return out


def _id_part(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9.=-]+", "-", str(value))


def plan(cfg: SweepConfig) -> list[PlannedRun]:
    """Every run of the grid, in order: extra axes, then method, ``m``, ``ζ``, seed.

    A method with a fixed ``m`` (``full``: 1) runs once per ``ζ`` and seed
    with it; the other methods run for every ``m > 1`` listed (with ``m = 1``
    they would repeat ``full``). A one-process method runs at the first value
    of each place axis (:data:`PLACE_AXES`: it moves nothing over a link) and
    stands for the others (:attr:`PlannedRun.stands_for`).
    """
    runs: list[PlannedRun] = []
    names = list(cfg.axes)
    places = {k: list(cfg.axes[k]) for k in names if k in PLACE_AXES}
    for combo in product(*(cfg.axes[k] for k in names)):
        context = dict(zip(names, combo))
        elsewhere = any(context[k] != values[0] for k, values in places.items())
        for method in cfg.methods:
            variant = dict(cfg.variants.get(method, {"method": method}))
            base = variant.pop("method")
            fixed = get_method(base).fixed_subnets
            if fixed == 1 and elsewhere:
                continue  # the run at the first place stands for this one
            ms = [fixed] if fixed is not None else [m for m in cfg.subnets if m > 1]
            for m, zeta, seed in product(ms, cfg.local_steps, cfg.seeds):
                try:
                    settings = cfg.settings_of(base).replace(
                        **context, **variant, subnets=m, local_steps=zeta, seed=seed
                    )
                    if m == 1:  # one process is on one host
                        settings = settings.replace(hosts=1)
                    get_method(base).check_run(settings)
                    if settings.dist.bandwidth != "none" and not cfg.processes:
                        raise ValueError(
                            f"bandwidth {settings.dist.bandwidth} shapes the link between real processes: "
                            "set processes = true in [sweep] (or pass --processes)"
                        )
                    if settings.dist.hosts > 1 and (not cfg.processes or m % settings.dist.hosts):  # (m > 1)
                        raise ValueError(
                            f"hosts = {settings.dist.hosts} spreads real processes evenly over virtual hosts: "
                            "set processes = true in [sweep] and list m that it divides"
                        )
                except ValueError as exc:
                    raise SweepError(f"sweep {cfg.name}: {context} {method} m={m} ζ={zeta}: {exc}") from exc
                parts = [f"{k}={_id_part(v)}" for k, v in context.items()]
                parts += [method, f"m{m}", f"z{zeta}", f"seed{seed}"]
                shared = fixed == 1 and any(len(v) > 1 for v in places.values())
                stands_for = {k: list(v) for k, v in places.items()} if shared else {}
                runs.append(PlannedRun("_".join(parts), method, m, zeta, seed, context, settings, stands_for))
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
        "sweep": {
            "name": cfg.name,
            "run_id": run.run_id,
            **run.grid(),
            "context": run.context,
            **({"stands_for": run.stands_for} if run.stands_for else {}),
        },
        "config": log["config"],
        "environment": log["environment"],
        "metric": log.get("metric"),
        "setup_bytes": per_round.get(-1, {}),
        "rounds": rounds,
        "summary": log["summary"],
        **({"network": log["network"]} if "network" in log else {}),
        **({"failure": log["failure"]} if "failure" in log else {}),
    }


def migrate_log(log: dict[str, Any]) -> dict[str, Any]:
    """A run log as the current harness reads it. Older logs hold the flat
    config (read by :meth:`RunConfig.from_dict` as they are) and record the
    ``full`` runs as ``method = "gist"`` with ``m = 1``, which is what
    ``full`` trains; their config's method becomes ``full``."""
    config = log.get("config", {})
    if log.get("sweep", {}).get("method") == "full" and config.get("method") == "gist":
        log = {**log, "config": {**config, "method": "full"}}
    return log


def _differences(stored: RunConfig, wanted: RunConfig, recorded_policy: Optional[str] = None) -> list[str]:
    """What differs between a stored run's settings and the wanted ones. A
    setting the method may decide compares by what the run uses
    (:meth:`~gist.engine.driver.RoundDriver.resolved_settings`: the optimizer
    policy, GIST's wire dtype), for a stored log's optimizer policy
    ``recorded_policy`` where given (what it recorded having used)."""
    have = {**stored.results(), **get_method(stored.method).resolved_settings(stored)}
    want = {**wanted.results(), **get_method(wanted.method).resolved_settings(wanted)}
    if recorded_policy:
        have["optimizer_state"] = recorded_policy
    return [f"{k}: stored {have.get(k)!r}, config {want[k]!r}" for k in want if have.get(k) != want[k]]


def read_run_log(path: Path) -> dict[str, Any]:
    """The run log at ``path`` as the harness reads it (:func:`migrate_log`),
    or :class:`SweepError` saying what is wrong with it: not JSON (a log cut
    off, say), not an object, or without the grid point and rounds a sweep writes."""
    try:
        log = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SweepError(f"{path} is not a readable run log ({exc})") from exc
    if not isinstance(log, dict):
        raise SweepError(f"{path} is not a run log: it holds a JSON {type(log).__name__}, not an object")
    point = log.get("sweep")
    missing = [k for k in ("method", "m", "zeta", "seed") if not isinstance(point, dict) or k not in point]
    if missing or not isinstance(log.get("rounds"), list) or not isinstance(log.get("config", {}), dict):
        lacks = f"sweep.{', sweep.'.join(missing)}" if missing else "a list of rounds and a config"
        raise SweepError(f"{path} is not a run log of a sweep: it lacks {lacks}")
    return migrate_log(log)


def stored_log(path: Path, run: PlannedRun) -> Optional[dict[str, Any]]:
    """The completed log of ``run`` at ``path``, ``None`` if there is none.

    Raises :class:`SweepError` if the log there was made with other settings."""
    if not path.is_file():
        return None
    try:
        log = read_run_log(path)
    except SweepError as exc:
        raise SweepError(f"{exc}; move it away to re-run {run.run_id}") from exc
    stored = RunConfig.from_dict(log.get("config", {}), strict=False)
    # a log from before --optimizer-state recorded none: its method's first policy is what it used
    used = log.get("summary", {}).get("optimizer_state") or get_method(stored.method).optimizer_states[0]
    diff = _differences(stored, run.settings, used)
    if diff:
        raise SweepError(
            f"{path} was made with other settings than the config ({'; '.join(diff)}); "
            f"use another results directory, or move the old logs away"
        )
    return log


def pending(
    planned: Sequence[PlannedRun], runs_dir: Path, retry_failed: bool = False
) -> tuple[dict[str, Optional[dict[str, Any]]], list[PlannedRun]]:
    """The stored log of every planned run (``None``: not run yet), and the
    runs still to do: those without a log and, with ``retry_failed``, those
    whose log records a failure. Raises :class:`SweepError` for a log made
    with other settings (:func:`stored_log`)."""
    stored = {r.run_id: stored_log(runs_dir / f"{r.run_id}.json", r) for r in planned}
    todo = [r for r in planned if stored[r.run_id] is None or (retry_failed and "failure" in stored[r.run_id])]
    return stored, todo


SWEEP_LOCK = ".sweep.lock"
"""The lock file a running ``gist sweep`` holds in its results folder (removed when it ends)."""


@contextmanager
def sweep_lock(out: Path) -> Iterator[None]:
    """Hold ``out``'s :data:`SWEEP_LOCK` for the block, or :class:`SweepError`
    naming the process that holds it: two sweeps on one folder would run the
    same runs twice and race on the table."""
    out.mkdir(parents=True, exist_ok=True)
    holder = f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}"
    try:
        with exclusive_lock(out / SWEEP_LOCK, wait=False, holder=holder):
            yield
    except LockHeld as exc:
        raise SweepError(
            f"{out} is in use by another gist sweep ({exc.holder or 'a process that has not said which'}); "
            "wait for it to end, or give this one another results folder (--out)"
        ) from None


def sweep_in_progress(out: Path) -> str | None:
    """Who is sweeping into ``out`` now (what :func:`sweep_lock` wrote), or
    ``None``: its logs, config copy and table are then still changing."""
    return lock_holder(out / SWEEP_LOCK)


def results_dir_for(cfg: SweepConfig, results_root: str | Path = "results") -> Path:
    return Path(results_root) / cfg.name


def execute(run: PlannedRun, processes: bool, progress: bool) -> dict[str, Any]:
    """Run one grid point, in this process or as ``m`` real processes."""
    if processes:
        return launch(run.settings, run.subnets, progress=progress)
    return run_training(run.settings, progress=progress)


def run_sweep(
    cfg: SweepConfig,
    out_dir: str | Path,
    progress: bool = True,
    runner: Callable[[PlannedRun, bool, bool], dict[str, Any]] = execute,
    say: Callable[[str], None] = print,
    retry_failed: bool = False,
) -> dict[str, int]:
    """Run every planned run of ``cfg`` whose log is not in ``out_dir/runs``
    (and, with ``retry_failed``, every run whose log records a failure).

    Returns ``{"planned", "skipped", "ran", "failed"}`` (``failed``: runs of
    this invocation that diverged; ``ran`` counts them too). The config is copied to
    ``out_dir/config.toml`` so :func:`gist.harness.tables.tabulate` can be re-run
    from the directory alone.
    """
    out = Path(out_dir)
    runs_dir = out / RUNS_DIR
    runs_dir.mkdir(parents=True, exist_ok=True)
    _save_config(cfg, out)
    for stale in runs_dir.glob(".*.tmp-*"):  # a run killed while its log was being written
        stale.unlink(missing_ok=True)
    planned = plan(cfg)
    stored, todo = pending(planned, runs_dir, retry_failed)
    for r in planned:  # a log written before the plan shared it (or shared it otherwise) says what it stands for now
        log = stored[r.run_id]
        if log is not None and log["sweep"].get("stands_for", {}) != r.stands_for:
            log["sweep"]["stands_for"] = r.stands_for
            write_json(log, runs_dir / f"{r.run_id}.json")
    failed_before = [r.run_id for r in planned if stored[r.run_id] is not None and "failure" in stored[r.run_id]]
    counts = {"planned": len(planned), "skipped": len(planned) - len(todo), "ran": 0, "failed": 0}
    if counts["skipped"]:
        say(f"sweep {cfg.name}: {counts['skipped']} of {len(planned)} runs already done in {runs_dir}")
    if failed_before and not retry_failed:
        say(
            f"sweep {cfg.name}: {len(failed_before)} of them failed before ({', '.join(failed_before)}); "
            "--retry-failed runs them again"
        )
    bar = tqdm(
        total=len(planned),
        initial=counts["skipped"],
        desc=f"sweep {cfg.name}",
        unit="run",
        disable=not progress,
        dynamic_ncols=True,
    )
    try:
        for run in todo:
            bar.set_postfix_str(run.run_id, refresh=True)
            try:
                log = runner(run, cfg.processes, progress)
            except RunFailed as exc:
                log = exc.log
                counts["failed"] += 1
                say(f"sweep {cfg.name}: run {run.run_id} failed: {exc}; recorded, going on")
            except Exception as exc:
                raise SweepError(f"sweep {cfg.name}: run {run.run_id} failed: {exc}") from exc
            compact = compact_log(log, run, cfg)
            write_output(
                f"sweep {cfg.name}: the run log", runs_dir / f"{run.run_id}.json", partial(write_json, compact)
            )
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
        diff = _differences(old.settings, cfg.settings)
        if old.method_settings != cfg.method_settings:
            diff.append(f"methods' own settings: stored {old.method_settings}, config {cfg.method_settings}")
        if diff:
            raise SweepError(
                f"{out} holds results of a config with other settings ({'; '.join(diff)}; "
                f"see {target}); use another results directory, or move the old one away"
            )
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
    lines = [
        f"sweep {cfg.name}: {len(planned)} runs" + (" (real processes)" if cfg.processes else ""),
        f"  methods {cfg.methods}, m {cfg.subnets}, ζ {cfg.local_steps}, seeds {cfg.seeds}",
    ]
    lines += [f"  {k} {v}" for k, v in cfg.axes.items()]
    per_run = flat_names(per_run=True)
    shared = {
        k: v
        for k, v in cfg.settings.flat().items()
        if k in RUN_SETTINGS and k not in SWEPT and k not in per_run and k not in cfg.axes
    }
    lines.append("  settings " + ", ".join(f"{k}={v}" for k, v in shared.items()))
    lines += [
        f"  {m}'s own settings " + ", ".join(f"{k}={v}" for k, v in own.items())
        for m, own in cfg.method_settings.items()
    ]
    return "\n".join(lines)


def command_line(argv: Sequence[str]) -> str:
    """The command as a user would retype it."""
    return " ".join(["gist", *(shlex.quote(a) for a in argv)])
