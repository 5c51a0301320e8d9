"""The ``device`` setting: where every tensor lives, the errors for devices a
machine lacks, and (where CUDA exists) CUDA against the CPU and NCCL.

CI has no GPU: the CUDA tests skip there, saying so, and run wherever
``torch.cuda.is_available()`` (``benchmarks/gpu_check.py`` runs them too)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from gist.cli import main
from gist.config import RunConfig
from gist.devices import check_backend, default_backend, resolve_device
from gist.run import build, launch_local, run_training

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device (none here; CI has none)")
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]
SMALL = dict(dataset="csbm", hidden=16, layers=3, local_steps=2, rounds=2, threads=1)


def _settings(tmp_path, method: str, device: str, **extra) -> RunConfig:
    m = 1 if method == "full" else 2
    return RunConfig.from_flat(
        **{**SMALL, "method": method, "subnets": m, "root": str(tmp_path), "device": device, **extra}
    )


# ---------------------------------------------------------------- resolving


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == (torch.device("cuda", 0) if CUDA else torch.device("cpu"))
    with pytest.raises(ValueError, match="device must be auto, cpu, cuda or cuda:N, got 'gpu'"):
        resolve_device("gpu")


@pytest.mark.skipif(CUDA, reason="checks the error on a machine without CUDA")
@pytest.mark.parametrize("text", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_cuda_is_a_clear_error(text):
    with pytest.raises(ValueError, match=rf"^device {text}: CUDA is not available .*use --device cpu"):
        resolve_device(text)
    with pytest.raises(ValueError, match=rf"^coordinator_device {text}: CUDA is not available"):
        resolve_device(text, "coordinator_device")


@needs_cuda
def test_a_cuda_device_that_does_not_exist_is_a_clear_error():
    missing = torch.cuda.device_count()
    with pytest.raises(ValueError, match=rf"device cuda:{missing} does not exist: this machine has {missing}"):
        resolve_device(f"cuda:{missing}")


def test_nccl_needs_cuda_tensors():
    with pytest.raises(ValueError, match="dist_backend nccl .*use --dist-backend gloo"):
        check_backend("nccl", torch.device("cpu"))
    check_backend("gloo", torch.device("cpu"))
    assert default_backend(torch.device("cpu"), 2) == "gloo"


@needs_cuda
def test_nccl_needs_a_gpu_per_process():
    gpus, cuda = torch.cuda.device_count(), torch.device("cuda", 0)
    assert default_backend(cuda, gpus) == "nccl" and default_backend(cuda, gpus + 1) == "gloo"
    with pytest.raises(ValueError, match="needs a GPU per process"):
        check_backend("nccl", cuda, gpus + 1)


def test_config_rejects_a_malformed_device():
    with pytest.raises(ValueError, match="coordinator_device must be auto, cpu, cuda or cuda:N"):
        RunConfig.from_flat(coordinator_device="gpu:0").check()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--dist-backend", "nccl", "--procs", "2", "--device", "cpu"], "dist_backend nccl"),
        (["--method", "ddp", "--coordinator-device", "cpu"], "--coordinator-device is a setting of --method gist"),
    ]
    + ([] if CUDA else [(["--device", "cuda"], "device cuda: CUDA is not available")]),
)
def test_device_errors_come_before_anything_runs(tmp_path, capsys, monkeypatch, flags, message):
    import gist.run

    def never(*args, **kwargs):
        raise AssertionError("spawned processes")

    monkeypatch.setattr(gist.run, "launch_processes", never)
    code = main(["train", "--root", str(tmp_path), "--rounds", "1", "--hidden", "8", "--no-progress", *flags])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("gist train: error: ") and message in err, err


# ---------------------------------------------------------------- where tensors live


def _worker_tensors(driver) -> dict[str, Tensor]:
    """Every tensor the driver's workers hold: models, graphs, adjacency, offsets."""
    held: dict[str, Tensor] = {}
    if hasattr(driver, "transport"):  # gist: its in-process workers
        for w in driver.transport.workers:
            for groups, (subnet, _) in w._subnets.items():
                held.update({f"w{w.index}/subnet{groups}/{k}": v for k, v in subnet.state_dict().items()})
            held.update({f"w{w.index}/graph/{k}": v for k, v in w.batches.data if isinstance(v, Tensor)})
            held[f"w{w.index}/adj"] = w.batches.next_batch()[1]
            if w.logit_offset is not None:
                held[f"w{w.index}/offset"] = w.logit_offset
    else:  # data-parallel: the replicas and their batch sources
        for i, rep in driver._replicas.items():
            held.update({f"w{i}/replica/{k}": v for k, v in rep.state_dict().items()})
            held.update({f"w{i}/graph/{k}": v for k, v in driver._sources[i].data if isinstance(v, Tensor)})
            held[f"w{i}/adj"] = driver._sources[i].next_batch()[1]
    return held


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", ["gist", "ddp", "local-sgd", "full"])
def test_every_tensor_a_worker_holds_is_on_the_device(tmp_path, method, device):
    extra = dict(data_mode="partitioned", norm="batch_norm") if method == "gist" else {}
    built = build(_settings(tmp_path, method, device, **extra), progress=False)
    driver = built.driver
    driver.fit(progress=False)  # a round trains, merges and evaluates on the device
    expected = resolve_device(device)
    held = _worker_tensors(driver)
    assert held and all(t.device == expected for t in held.values()), {
        k: t.device for k, t in held.items() if t.device != expected
    }
    assert all(p.device == expected for p in driver.model.parameters())


@pytest.mark.parametrize("method", ["gist", "ddp", "local-sgd", "full"])
def test_explicit_cpu_device_through_every_method_in_process_and_with_processes(tmp_path, method):
    settings = _settings(tmp_path, method, "cpu")
    local = run_training(settings, progress=False)
    assert local["environment"]["device"] == "cpu" and local["environment"]["coordinator_device"] == "cpu"
    assert local["summary"]["rounds"] == 2
    if method == "full":
        return
    dist = launch_local(settings, 2, progress=False)
    assert dist["environment"]["device"] == "cpu" and dist["config"]["device"] == "cpu"
    assert dist["config"]["transport"] == "torch.distributed (gloo)"
    assert dist["summary"]["best_val"] == pytest.approx(local["summary"]["best_val"], abs=1e-9)
    assert dist["summary"]["bytes_total"] == local["summary"]["bytes_total"]


def test_ddp_wraps_the_model_in_distributed_data_parallel_on_nccl_only():
    """On NCCL the ddp method trains torch's own DistributedDataParallel; on
    gloo (whose reducer deadlocked at teardown) it all-reduces itself."""
    from gist.comm import InProcessCollective
    from gist.comm.dist_collective import DistCollective
    from gist.comm.group import DistContext
    from gist.methods.ddp import wrap_for_nccl

    gloo = DistCollective(DistContext(0, 1, 0, "gloo", 30.0))
    assert wrap_for_nccl(torch.nn.Linear(4, 3), gloo) is None
    assert wrap_for_nccl(torch.nn.Linear(4, 3), InProcessCollective(2)) is None


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices for NCCL (none here; CI has none)")
def test_ddp_on_nccl_is_distributed_data_parallel(tmp_path):
    log = launch_local(_settings(tmp_path, "ddp", "cuda", dist_backend="nccl"), 2, progress=False)
    assert log["config"]["transport"] == "torch.distributed (nccl)"
    assert log["summary"]["rounds"] == 2


# ---------------------------------------------------------------- CUDA


def _state(tmp_path, settings: RunConfig, name: str) -> dict[str, Tensor]:
    path = tmp_path / f"{name}.pt"
    run_training(settings.replace(save_model=str(path)), progress=False)
    return torch.load(path, weights_only=True)


@needs_cuda
@pytest.mark.parametrize("coordinator", [None, "cpu"])
def test_gist_on_cuda_is_close_to_cpu(tmp_path, coordinator):
    """Close, not identical: CUDA kernels sum in another order than the CPU's."""
    base = _settings(tmp_path, "gist", "cpu", rounds=3, dropout=0.0)
    cpu = _state(tmp_path, base, "cpu")
    gpu = _state(tmp_path, base.replace(device="cuda", coordinator_device=coordinator), "gpu")
    assert cpu.keys() == gpu.keys()
    for k in cpu:
        assert torch.allclose(cpu[k].float(), gpu[k].float(), atol=1e-3, rtol=1e-3), k


@needs_cuda
@pytest.mark.parametrize("method", ["gist", "ddp", "local-sgd"])
def test_processes_on_cuda(tmp_path, method):
    """Two ranks on CUDA: NCCL with a GPU each where there are two; with one GPU
    the two ranks share it over gloo (NCCL refuses two ranks on one device)."""
    two = torch.cuda.device_count() >= 2
    settings = _settings(tmp_path, method, "cuda", dist_backend="nccl" if two else "gloo")
    log = launch_local(settings, 2, progress=False)
    assert log["environment"]["device"].startswith("cuda")
    assert log["config"]["transport"] == f"torch.distributed ({'nccl' if two else 'gloo'})"
    local = run_training(settings, progress=False)
    assert log["summary"]["bytes_total"] == local["summary"]["bytes_total"]
    assert log["summary"]["best_val"] == pytest.approx(local["summary"]["best_val"], abs=0.02)
