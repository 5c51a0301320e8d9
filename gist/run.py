"""One run from a :class:`~gist.config.RunConfig`: build the method, fit it, write the log.

:func:`build` turns a config into the method's :class:`~gist.engine.RoundDriver`
(in this process, or this process's part of a ``torch.distributed`` job);
:func:`run_training` builds, resumes if asked, fits with checkpoints and
returns the run log; :func:`launch_local` runs the same as ``m`` local
processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist

from .comm.group import DistContext, init_distributed
from .comm.launch import LAUNCHER_PID_ENV, LaunchFailure, note_rank_error
from .comm.launch import launch_local as launch_processes
from .comm.netns import ShapedNamespace
from .config import RunConfig
from .devices import worker_device
from .engine import Checkpointer, RankSetup, RoundDriver, TrainingDiverged, dataset_metric, full_model, load_run_dataset
from .errors import ConfigError, GistError
from .files import OutputError, atomic_write, write_output
from .methods import get_method
from .signals import die_with_parent


class RunFailed(GistError, RuntimeError):
    """The run stopped before its last round (it diverged, or a checkpoint could not be written). ``log`` is the
    run log of the rounds before, with the reason under ``failure``; it was
    written to the log path, if any, and the last checkpoint is untouched."""

    exit_status = 1

    def __init__(self, message: str, log: dict[str, Any]) -> None:
        super().__init__(message)
        self.log = log


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the run in ``round`` (``None`` where no process could
    say). ``log`` is the run log of the rounds before (``failure.kind ==
    "interrupted"``), also written to the log path, or ``None`` if no round
    had finished; the last checkpoint written stays the last good one."""

    def __init__(self, round: Optional[int], log: Optional[dict[str, Any]]) -> None:
        super().__init__(f"interrupted in round {round}" if round is not None else "interrupted")
        self.round = round
        self.log = log


@dataclass
class Built:
    """What :func:`build` made: the driver to fit in this process (``None``
    on a process that served as a worker of a driver elsewhere), and what
    the run log says about where it ran."""

    driver: Optional[RoundDriver]
    dataset_split: Optional[str]
    transport: str
    setup_seconds: float
    ctx: Optional[DistContext] = None
    """This process's place in a ``torch.distributed`` job, if it is in one."""
    resumed_from: Optional[int] = None
    """The round a ``--resume`` continued from (rounds before it came from the checkpoint)."""


def build(cfg: RunConfig, progress: bool = True) -> Built:
    """Load the data, build the model under ``cfg.seed`` and the method's driver.

    With ``cfg.dist.backend == "dist"`` this process joins the
    ``torch.distributed`` job described by torchrun's environment and builds
    its part (:meth:`~gist.engine.RoundDriver.distributed`)."""
    method = get_method(cfg.method)
    method.check_run(cfg)
    if cfg.dist.bandwidth != "none" and SHAPED_ENV not in os.environ:
        raise ConfigError(
            "--bandwidth shapes the link between the processes gist's launcher starts: use --procs "
            "(or processes = true in a sweep); under torchrun, start it inside a shaped network namespace yourself"
        )
    if cfg.dist.hosts > 1 and SHAPED_ENV not in os.environ:
        raise ConfigError(
            f"--hosts {cfg.dist.hosts} spreads the processes gist's launcher starts: use --procs (or processes = "
            "true in a sweep); under torchrun, the hosts are the machines you start it on"
        )
    dataset_metric(cfg.data.dataset)  # fail early for a dataset not scored by accuracy
    started = time.perf_counter()
    if cfg.dist.backend == "dist":
        ctx = init_distributed(cfg.dist.dist_backend, cfg.dist.timeout, cfg.device)
        setup = RankSetup(cfg, ctx, progress)
        driver = method.distributed(setup)
        return Built(driver, setup.split, f"torch.distributed ({ctx.backend})", time.perf_counter() - started, ctx)
    dataset = load_run_dataset(cfg)
    model = full_model(cfg, dataset.num_features, dataset.num_classes)
    driver = method(model, dataset.data, cfg)
    return Built(driver, dataset.split, "in-process", time.perf_counter() - started)


def run_training(cfg: RunConfig, progress: bool = True, log_path: Optional[str | Path] = None) -> dict[str, Any]:
    """Build, resume if ``cfg.checkpoint.resume``, fit (checkpointing every
    ``cfg.checkpoint.every`` rounds) and return the run log.

    The log has ``config`` (every setting), ``metric``, ``rounds`` (one record
    per round), ``summary`` and ``ledger``; it is also written as JSON to
    ``log_path`` if given. In a ``torch.distributed`` job only rank 0 returns
    the log; other ranks return ``{}``.

    Every output path (``log_path``, the checkpoint when checkpoints are due,
    ``save_model``) is checked to be writable before anything is built
    (:class:`~gist.errors.ConfigError` naming the flag). A run that diverges raises
    :class:`RunFailed` carrying the log of the rounds before it."""
    if cfg.dist.threads:
        torch.set_num_threads(cfg.dist.threads)
    distributed = cfg.dist.backend == "dist"
    if not distributed or _rank() == 0:
        check_output_paths(cfg, log_path)
    built: Optional[Built] = None
    try:
        built = build(cfg, progress)
        driver = built.driver
        if driver is None:
            return {}
        checkpointer = Checkpointer(cfg)
        if cfg.checkpoint.resume and driver.is_coordinator:
            driver.load_state_dict(checkpointer.load())
            built.resumed_from = driver.round
        try:
            driver.fit(progress=progress and driver.is_coordinator, checkpointer=checkpointer)
        except TrainingDiverged as exc:
            if not driver.is_coordinator:
                raise
            log = finish(driver, cfg, built, log_path, failure=exc.record())
            raise RunFailed(str(exc), log) from exc
        except OutputError as exc:  # a checkpoint could not be written: stop, keeping the log so far
            if not driver.is_coordinator:
                raise
            failure = {"kind": "output", "method": cfg.method, "round": driver.round - 1, "message": str(exc)}
            log = finish(driver, cfg, built, log_path, failure=failure)
            raise RunFailed(f"after round {driver.round - 1}: {exc}", log) from exc
        except KeyboardInterrupt:
            if not driver.is_coordinator:
                raise
            failure = {
                "kind": "interrupted",
                "method": cfg.method,
                "round": driver.round,
                "message": f"interrupted (Ctrl-C) in round {driver.round}",
            }
            log = finish(driver, cfg, built, log_path, failure=failure) if driver.history else None
            raise RunInterrupted(driver.round, log) from None
        if not driver.is_coordinator:
            return {}
        return finish(driver, cfg, built, log_path)
    except Exception as exc:
        if distributed:  # for the launcher to report the root cause among the ranks' errors
            note_rank_error(_rank(), exc)
        raise
    finally:
        if built is not None and built.driver is not None:
            built.driver.close()
        if built is not None and built.ctx is not None:
            built.ctx.close()
        if distributed and dist.is_initialized():
            dist.destroy_process_group()


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", 0))


def check_output_paths(cfg: RunConfig, log_path: Optional[str | Path]) -> None:
    """:class:`~gist.errors.ConfigError` naming the flag and the path if a file the run will
    write (``--log``, ``--checkpoint`` when ``--checkpoint-every`` is set,
    ``--save-model``) cannot be written; missing parent folders are created."""
    outputs = [("--log", log_path), ("--save-model", cfg.checkpoint.save_model)]
    if cfg.checkpoint.every:
        outputs.append(("--checkpoint", cfg.checkpoint.path))
    for flag, path in outputs:
        if path is not None:
            _check_writable(flag, Path(path))


def _check_writable(flag: str, path: Path) -> None:
    try:
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a folder")
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".probe"):
            pass
        if path.exists() and not os.access(path, os.W_OK):
            raise PermissionError(f"{path} is read-only")
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(f"{flag} {path}: cannot write there ({reason}); choose another path") from exc


def finish(
    driver: RoundDriver,
    cfg: RunConfig,
    built: Built,
    log_path: Optional[str | Path],
    failure: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """The run log (written to ``log_path``), and the model saved where ``cfg``
    says; for a failed run the log records ``failure`` and no model is saved."""
    summary = driver.summary()
    summary["load_seconds"] = built.setup_seconds
    if built.resumed_from is not None:
        summary["resumed_from"] = built.resumed_from
    log = {
        "config": {**cfg.to_dict(), "dataset_split": built.dataset_split, "transport": built.transport},
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            **device_environment(cfg, driver),
        },
        "metric": {"name": "acc", "scored_by": driver.scored_by},
        "rounds": [asdict(r) for r in driver.history],
        "summary": summary,
        "ledger": driver.ledger.records(),
    }
    if failure is not None:
        log["failure"] = failure
    if log_path is not None:
        write_output("--log", log_path, lambda tmp: _dump_json(log, tmp))
    if cfg.checkpoint.save_model and failure is None:
        state = driver.model_state_dict()
        write_output("--save-model", cfg.checkpoint.save_model, lambda tmp: torch.save(state, tmp))
    return log


def device_environment(cfg: RunConfig, driver: RoundDriver) -> dict[str, Any]:
    """Where the run computed (for the log): the workers' and the
    coordinator's device and, on CUDA, the GPU's name and the peak memory
    this process allocated on it."""
    device = worker_device(cfg)
    out: dict[str, Any] = {"device": str(device), "coordinator_device": str(driver.device)}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
        out["peak_gpu_bytes"] = torch.cuda.max_memory_allocated(device)
    return out


def launch_local(
    cfg: RunConfig, procs: int, progress: bool = True, log_path: Optional[str | Path] = None
) -> dict[str, Any]:
    """Run ``cfg`` as ``procs`` local processes on ``torch.distributed``
    (loopback only) and return rank 0's log.

    If any process fails, the others are stopped and the error is raised;
    a run that diverged raises :class:`RunFailed` with rank 0's log, and
    Ctrl-C :class:`RunInterrupted` once the processes have stopped."""
    cfg = cfg.replace(backend="dist")
    get_method(cfg.method).check_run(cfg)  # before any process starts
    cfg.check_processes(procs)
    check_output_paths(cfg, log_path)
    if cfg.dist.hosts > 1 and SHAPED_ENV not in os.environ:
        raise ConfigError(f"--hosts {cfg.dist.hosts}: start the run with gist.multihost.launch, which spreads it")
    if cfg.dist.bandwidth != "none" and SHAPED_ENV not in os.environ:
        return _launch_shaped(cfg, procs, progress, log_path)
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "log.json"
        try:
            launch_processes(_run_rank, (cfg, progress, str(target)), procs)
        except Exception as exc:
            log = json.loads(target.read_text()) if target.is_file() else {}
            if "failure" not in log:
                raise
            if log_path is not None:
                write_json(log, log_path)
            raise RunFailed(log["failure"]["message"], log) from exc
        except KeyboardInterrupt:
            raise _interrupted(target, log_path) from None
        log = json.loads(target.read_text())
        if log_path is not None:
            write_json(log, log_path)
        return log


SHAPED_ENV = "GIST_SHAPED_NETNS"
"""Set (to the namespace's name) for the processes a shaped launch starts inside its namespace."""


def _launch_shaped(cfg: RunConfig, procs: int, progress: bool, log_path: Optional[str | Path]) -> dict[str, Any]:
    """:func:`launch_local` inside a namespace shaped to ``cfg.dist.bandwidth``:
    a child process runs it there (:func:`shaped_child`, its output passing
    through), and the namespace is removed whatever happens."""
    with tempfile.TemporaryDirectory() as tmp, ShapedNamespace(cfg.dist.bandwidth) as ns:
        target, config = Path(tmp) / "log.json", Path(tmp) / "config.json"
        write_json(cfg.to_dict(), config)
        argv = [sys.executable, "-c", SHAPED_CHILD, str(config), str(procs), str(target), str(int(progress))]
        child = subprocess.Popen(
            ns.command(argv),
            env={**os.environ, SHAPED_ENV: ns.name, LAUNCHER_PID_ENV: str(os.getpid())},
            stderr=subprocess.PIPE,
            start_new_session=True,  # Ctrl-C reaches it once, from here
        )
        try:
            last_error = _pass_through(child)
        except KeyboardInterrupt:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGINT)
            _pass_through(child)  # it says where it stopped
            raise _interrupted(target, log_path) from None
        log = json.loads(target.read_text()) if target.is_file() else None
    if log is not None and log_path is not None:
        write_json(log, log_path)
    if child.returncode == 0 and log is not None:
        return log
    if log is not None and "failure" in log:
        raise RunFailed(log["failure"]["message"], log)
    raise LaunchFailure(f"in the namespace shaped to {cfg.dist.bandwidth}: {last_error}")


def _interrupted(target: Path, log_path: Optional[str | Path]) -> RunInterrupted:
    """After Ctrl-C stopped the processes: rank 0's log of the rounds before
    (if it wrote one to ``target``), copied to ``log_path``, in the error."""
    log = json.loads(target.read_text()) if target.is_file() else None
    if log is not None and log_path is not None:
        write_json(log, log_path)
    return RunInterrupted(log.get("failure", {}).get("round") if log else None, log)


def _pass_through(child: subprocess.Popen) -> str:
    """Copy the child's stderr to ours as it comes (progress bars included);
    wait for it to end and return its last line, less the command's prefix."""
    tail = b""
    assert child.stderr is not None
    while chunk := os.read(child.stderr.fileno(), 65536):
        sys.stderr.buffer.write(chunk)
        sys.stderr.flush()
        tail = (tail + chunk)[-4096:]
    child.wait()
    lines = [line.strip() for line in tail.decode(errors="replace").splitlines() if line.strip()]
    last = lines[-1] if lines else f"exit status {child.returncode}"
    return last.removeprefix(CHILD_ERROR)


SHAPED_CHILD = "import sys; from gist.run import shaped_child; sys.exit(shaped_child(sys.argv[1:]))"
"""The command a shaped launch runs inside its namespace."""
CHILD_ERROR = "error: "


def shaped_child(argv: list[str]) -> int:
    """Inside a shaped namespace: ``argv = [config JSON, procs, log path,
    progress 0/1]``; run :func:`launch_local` there and return the exit
    status (1: the run failed and its log says why; 2: it could not run, the
    reason on the last line of stderr; 130: interrupted)."""
    config, procs, log_path, progress = argv
    if not die_with_parent(int(os.environ[LAUNCHER_PID_ENV])):  # and its ranks with it
        return 1  # the launcher is already gone
    cfg = RunConfig.from_dict(json.loads(Path(config).read_text()))
    try:
        launch_local(cfg, int(procs), progress=progress == "1", log_path=log_path)
    except KeyboardInterrupt:
        return 130
    except GistError as exc:
        print(f"{CHILD_ERROR}{exc}", file=sys.stderr)
        return exc.exit_status
    return 0


def _run_rank(rank: int, cfg: RunConfig, progress: bool, log_path: str) -> None:
    run_training(cfg, progress=progress and rank == 0, log_path=log_path if rank == 0 else None)


def write_json(obj: Any, path: str | Path) -> None:
    """Write JSON atomically (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        _dump_json(obj, tmp)


def _dump_json(obj: Any, path: Path) -> None:
    with open(path, "w") as fh:
        json.dump(obj, fh, indent=1, allow_nan=True)
