"""Several processes: the helpers alone, and real runs under torchrun (gloo, CPU)."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from uniad_plugin import distributed

SCRIPT = Path(__file__).with_name("distributed_script.py")
ROOT = Path(__file__).resolve().parents[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env | extra


def _python(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        env=_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _torchrun(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    return subprocess.run(
        [*cmd, *args], env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


# ------------------------------------------------------------------ one process


def test_a_single_process_is_not_distributed(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not distributed.is_active()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.init_from_env() is False
    t = torch.arange(6.0).reshape(3, 2)
    assert distributed.gather_cat(t) is t
    assert distributed.gather_objects({"a": 1}) == [{"a": 1}]
    assert distributed.shard_indices(7) == range(7)
    with distributed.main_first():
        pass


@pytest.mark.parametrize("n", [0, 1, 5, 128, 1001])
@pytest.mark.parametrize("count", [1, 2, 3, 8])
def test_shards_cover_every_item_once_in_order(n, count):
    bounds = [distributed.shard_bounds(n, i, count) for i in range(count)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    sizes = [b - a for a, b in bounds]
    assert max(sizes) - min(sizes) <= 1


def test_work_goes_to_the_least_loaded_rank_largest_first():
    assert distributed.assign_work([5, 1, 1, 4, 2], count=2) == [0, 0, 0, 1, 1]  # loads 7, 6
    assert distributed.assign_work([3, 3, 3], count=1) == [0, 0, 0]
    assert sorted(distributed.assign_work([1] * 8, count=4)) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_local_device_is_the_process_gpu_under_torchrun(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert distributed.local_device("cuda") == torch.device("cuda", 3)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # CUDA_VISIBLE_DEVICES
    assert distributed.local_device("cuda") == torch.device("cuda", 1)
    assert distributed.local_device("cuda:1") == torch.device("cuda", 1)  # one per machine
    assert distributed.local_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    with pytest.raises(ValueError, match="expected device 'cuda' .* got 'cuda:1'"):
        distributed.local_device("cuda:1")
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.local_device("cuda") == torch.device("cuda")


def test_init_errors_name_what_was_expected(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for var in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(RuntimeError, match=r"torchrun launch, missing \['RANK'"):
        distributed.init_from_env()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")
    with pytest.raises(ValueError, match="expected backend 'gloo' or 'nccl', got 'mpi'"):
        distributed.init_from_env("cpu", backend="mpi")
    with pytest.raises(ValueError, match="nccl backend needs device 'cuda'"):
        distributed.init_from_env("cpu", backend="nccl")
    with pytest.raises(ValueError, match="timeout > 0"):
        distributed.init_from_env("cpu", timeout_s=0)


# ------------------------------------------------------------------ torchrun


def _rows(path: Path) -> dict[tuple[str, str], dict]:
    rows = json.loads((path / "results.json").read_text())["rows"]
    return {(r["Detector"], r["Dataset"] + "/" + r["Class"]): r for r in rows}


@pytest.mark.slow
def test_cli_under_torchrun_gives_the_single_process_table(tmp_path):
    """Two processes match one: torchrun --nproc_per_node 2 -m uniad_plugin.cli == uniad (fast)."""
    common = ["--fast", "--quiet", "--no-plots", "--cache-dir"]
    one = _python(
        "-m", "uniad_plugin.cli", *common, str(tmp_path / "c1"), "--out", str(tmp_path / "one")
    )
    assert one.returncode == 0, one.stderr[-3000:]
    two = _torchrun(
        "-m", "uniad_plugin.cli", *common, str(tmp_path / "c2"), "--out", str(tmp_path / "two")
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("results: ") == 1, "only rank 0 prints"
    a, b = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    assert a.keys() == b.keys()
    scored = 0
    for key, r in a.items():
        assert (r["Error"] is None) == (b[key]["Error"] is None), key
        if r["Error"] is None and not math.isnan(r["AUROC"]):
            assert abs(r["AUROC"] - b[key]["AUROC"]) <= 0.005, (key, r["AUROC"], b[key]["AUROC"])
            scored += 1
    assert scored > 100
    meta = json.loads((tmp_path / "two" / "results.json").read_text())["meta"]
    assert meta["processes"] == 2
    # the adversarial sets are the same files (same cache keys, same content)
    names = sorted(p.name for p in (tmp_path / "c1" / "adversarial").glob("*.pt"))
    assert names and names == sorted(p.name for p in (tmp_path / "c2" / "adversarial").glob("*.pt"))
    for name in names:
        x1 = torch.load(tmp_path / "c1" / "adversarial" / name, weights_only=True)["x"]
        x2 = torch.load(tmp_path / "c2" / "adversarial" / name, weights_only=True)["x"]
        assert torch.equal(x1, x2), name


@pytest.mark.slow
def test_user_script_shards_attacks_fit_and_scores(tmp_path):
    """UnifiedBenchmark in a user's own distributed script: the attack's batches, the fit's
    extraction and the scoring are split over the ranks; the results equal one process's."""
    one = _python(str(SCRIPT), str(tmp_path / "one.pt"))
    assert one.returncode == 0, one.stderr[-3000:]
    two = _torchrun(str(SCRIPT), str(tmp_path / "two.pt"))
    assert two.returncode == 0, two.stderr[-3000:]
    a = torch.load(tmp_path / "one.pt", weights_only=False)
    b = torch.load(tmp_path / "two.pt", weights_only=False)
    assert (a["world_size"], b["world_size"]) == (1, 2)
    # the attack ran in 4 seeded batches, 2 per rank: the same set as one process
    assert len(a["adv_x"]) > 10 and torch.equal(a["adv_x"], b["adv_x"])
    # every rank fitted the same UniformDetector, equal to the single process's
    assert len(set(b["digests"])) == 1 and b["digests"][0] == a["digests"][0]
    assert a["scores"].keys() == b["scores"].keys()
    for det, sets in a["scores"].items():
        for name, s in sets.items():
            torch.testing.assert_close(b["scores"][det][name], s, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_a_detector_failing_on_one_rank_fails_on_every_rank_without_a_hang(tmp_path):
    """A fit that raises on one rank only (UniformDetector's closed-form spheres) fails the
    entry on every rank, with that rank's error and its number, and the run goes on."""
    t = time.monotonic()
    run = _torchrun(str(SCRIPT), str(tmp_path / "x.pt"), "--sphere-fail-rank", "1", timeout=200)
    assert run.returncode == 0, run.stderr[-3000:]
    assert time.monotonic() - t < 150, "the ranks waited for a timeout"
    out = torch.load(tmp_path / "x.pt", weights_only=False)
    reasons = out["uniform_reasons"]
    assert len(reasons) == 2 and all(r and r.startswith("fit failed") for r in reasons), reasons
    assert "injected sphere failure on rank 1" in reasons[1]
    assert "injected sphere failure on rank 1" in reasons[0] and "(on process 1 of 2)" in reasons[0]
    assert "UniformDetector" not in out["scores"] and "Mahalanobis" in out["scores"]


@pytest.mark.slow
def test_a_failing_rank_ends_every_rank_with_its_error(tmp_path):
    t = time.monotonic()
    run = _torchrun(str(SCRIPT), str(tmp_path / "x.pt"), "--fail-rank", "1", timeout=120)
    assert run.returncode != 0
    assert "injected failure on rank 1" in run.stdout + run.stderr
    assert time.monotonic() - t < 100
    assert not (tmp_path / "x.pt").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_hanging_rank_times_out_the_others(tmp_path):
    """Without torchrun's agent, the timeout of the collectives ends a waiting rank."""
    port = str(_free_port())
    procs = []
    for rank in (0, 1):
        env = _env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1")
        env["MASTER_PORT"] = port
        cmd = [sys.executable, str(SCRIPT), str(tmp_path / "x.pt"), "--hang-rank", "1"]
        procs.append(
            subprocess.Popen(
                [*cmd, "--timeout", "5"],
                env=env,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        t = time.monotonic()
        _, err = procs[0].communicate(timeout=90)
        assert procs[0].returncode != 0
        assert time.monotonic() - t < 90
        assert "timed out" in err.lower() or "timeout" in err.lower(), err[-2000:]
    finally:
        for p in procs:
            p.kill()
            p.wait()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dist-timeout", "0"], "--dist-timeout"),
        (["--dist-backend", "mpi"], "--dist-backend"),
    ],
)
def test_cli_rejects_bad_distributed_options(args, message, capsys):
    from uniad_plugin.cli import main

    assert main(args) == 2
    assert message in capsys.readouterr().err
