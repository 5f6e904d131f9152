"""The kept scripts of ``benchmarks/`` in their ``--fast`` modes: each runs on tiny data that
needs no download, and what it writes is checked (rows, counts, numbers in range).

The papers' protocol scripts (``a3_protocol.py``, ``r2ad2_protocol.py``,
``gradients_per_class.py``) run with one seed, tiny sizes and one epoch on the same stand-in.
``train_cifar_reference.py`` is covered by ``tests/test_train_cifar_reference.py``."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


def _script(name: str):
    """The script ``benchmarks/<name>.py`` as a module (its ``main(argv)`` is called in-process,
    which spares the interpreter and import start-up of a subprocess)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _table(text: str, header_start: str) -> list[list[str]]:
    """The body rows of the Markdown table whose header line starts with ``header_start``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def _number(cell: str) -> float:
    return float(re.sub(r"[^0-9.eE+-]", "", cell.replace(",", "")))


def test_fast_mnist_is_read_as_mnist(tmp_path):
    from uniad_plugin.data import mnist_dataset

    setup = _script("mnist_setup")
    FAST_TRAIN, auroc = setup.FAST_TRAIN, setup.auroc
    root = setup.write_fast_mnist(tmp_path)
    train, test = mnist_dataset(root, train=True), mnist_dataset(root, train=False)
    x, y = train.tensors
    assert x.shape == (FAST_TRAIN, 1, 28, 28) and len(test) == 1797 - FAST_TRAIN
    assert set(y.tolist()) == set(range(10)) and set(test.tensors[1].tolist()) == set(range(10))
    assert 0.0 <= float(x.min()) and float(x.max()) == 1.0
    assert torch.equal(x * 255, (x * 255).round())  # on the 8-bit grid, as MNIST
    assert float(x[:, :, :2].abs().sum()) == 0.0  # the black border
    assert auroc(torch.zeros(5), torch.ones(5)) == 1.0 and auroc(torch.ones(5), torch.zeros(5)) == 0


@pytest.mark.slow
def test_speed_fast(tmp_path):
    out = tmp_path / "speed.md"
    _script("speed").main(["--fast", "--out", str(out)])
    text = out.read_text()
    assert "Fit: 1,200 training images" in text and "Scoring: 597 test images" in text
    rows = {r[0]: r[1:] for r in _table(text, "| detector |")}
    expected = ["forward pass (model only)", "UniformDetector", "UniformDetector, rivals=1"]
    expected += ["UniformDetector, rivals=0", "Mahalanobis", "MultiMahalanobis"]
    assert list(rows) == expected
    assert rows["forward pass (model only)"][0] == "" and rows["forward pass (model only)"][3] == (
        "1.00"
    )
    for name in expected:
        fit, scoring, per_s, ratio = rows[name]
        assert _number(scoring) > 0 and _number(per_s) > 0 and _number(ratio) > 0
        if name != "forward pass (model only)":
            assert _number(fit) > 0
    assert "rivals 3" in text


@pytest.mark.slow
def test_adaptive_attack_fast(tmp_path):
    out = tmp_path / "adaptive"
    _script("adaptive_attack").main(["--fast", "--out", str(out)])
    payload = json.loads(out.with_suffix(".json").read_text())
    rows = payload["rows"]
    detectors = ["UniformDetector", "Mahalanobis", "MultiMahalanobis"]
    assert [(r["detector"], r["eps"], r["lam"]) for r in rows] == [
        (d, 0.3, lam) for d in detectors for lam in (0.0, 1.0)
    ]
    for r in rows:
        assert 0 < r["n_attacked"] <= 30 and r["grid_levels"] == 255
        assert 0.0 <= r["misclassified"] <= r["misclassified_continuous"] <= 1.0
        assert 0.0 <= r["success_at_5fpr"] <= r["misclassified"]
        assert set(r["transfer_auroc"]) == {*detectors, "PixelGrid", "PixelCount", "PixelKNN"}
    # lambda = 0 ignores the detector: the same attack, the same inputs, for every detector
    plain = {r["misclassified"] for r in rows if r["lam"] == 0}
    assert len(plain) == 1 and plain.pop() > 0
    aurocs = [r["auroc"] for r in rows if not math.isnan(r["auroc"])]
    assert aurocs and all(0.0 <= a <= 1.0 for a in aurocs)
    (gf,) = payload["gradient_free_rows"]
    assert (gf["detector"], gf["eps"], gf["lam"], gf["queries"]) == ("UniformDetector", 0.3, 1, 20)
    assert 0.0 <= gf["success_at_5fpr"] <= gf["misclassified"] <= 1.0
    md = out.with_suffix(".md").read_text()
    assert len(_table(md, "| detector | eps | lambda |")) == 6
    assert len(_table(md, "| set |")) == 6 and "## Gradient-free attack" in md


@pytest.mark.slow
def test_startup_fast(tmp_path):
    out = tmp_path / "startup.md"
    _script("startup").main(["--fast", "--out", str(out)])
    rows = _table(out.read_text(), "| measurement |")
    assert len(rows) == 4
    values = [_number(r[1]) for r in rows]
    assert all(r[1].endswith(" ms") for r in rows)
    assert 0 < values[0] < 1000 and 0 < values[1] < 1000  # import of uniad_plugin
    assert 0 < values[2] < 60_000 and 0 < values[3] < 60_000  # wall clock of a start-up


@pytest.mark.slow
def test_uniform_memory_fast(tmp_path):
    out = tmp_path / "memory.md"
    _script("uniform_memory").main(["--fast", "--out", str(out)])
    payload = json.loads(out.with_suffix(".json").read_text())
    got = [(r["max_fit_rows"], r["n"], r["kept"]) for r in payload["rows"]]
    assert got == [(1000, 2000, 1000), (1000, 4000, 1000), (None, 2000, 2000)]
    for r in payload["rows"]:
        # the default layers of the MLP: its three Linear inputs, log-softmax and softmax
        assert r["features_per_sample"] == 64 + 256 + 256 + 10 + 10
        assert 0 < r["held_out"] < r["kept"] / 5
        assert r["peak_mb"] >= r["peak_pass_mb"] >= r["baseline_mb"] > 0
        assert r["pass_s"] > 0 and r["spheres_s"] > 0
    assert len(_table(out.read_text(), "| max_fit_rows |")) == 3


@pytest.mark.slow
def test_distributed_mnist_fast(tmp_path):
    out = tmp_path / "distributed.md"
    _script("distributed_mnist").main(["--fast", "--out", str(out)])
    payload = json.loads(out.with_suffix(".json").read_text())
    runs = payload["runs"]
    assert [(r["processes"], r["threads"]) for r in runs][1:] == [(2, 1)]
    assert runs[0]["processes"] == 1
    for r in runs:
        assert r["wall_s"] > 0 and r["timings"]["fit_s"] >= 0
        # torchrun gives the table of one process
        assert r["max_auroc_diff"] <= 1e-6
    assert runs[0]["speedup"] == 1.0
    costs = payload["per_image_costs"]
    assert 0 < costs["forward_s"] < costs["forward_backward_s"] < 60
    hours = payload["projection_hours"]
    assert hours["1 process"] > hours["8 processes"] > 0
    md = out.read_text()
    assert len(_table(md, "| configuration |")) == 2 and "--fast" in md


def _metrics(summary: dict) -> list[float]:
    """Every ``mean`` of a protocol script's summary (method -> metric -> {mean, std})."""
    return [v["mean"] for m in summary.values() for v in m.values() if isinstance(v, dict)]


PROTOCOL_SMOKE = {
    "a3_protocol": (
        "--n-known 20 --n-test-normal 100 --n-test-anomaly 100 --a3-epochs 1 --ae-epochs 1 "
        "--svdd-epochs 1",
        ["A3 (20 known anomalies)", "A3 (no known anomalies)", "AE reconstruction error"],
    ),
    "r2ad2_protocol": (
        "--n-known 20 --n-test-normal 100 --n-test-anomaly 100 --r2ad2-epochs 1 --ae-epochs 1 "
        "--svdd-epochs 1",
        ["R2AD2, LeNet target (20 known)", "ConfoundingGradients (no known)"],
    ),
    "gradients_per_class": ("--n-test 100", ["per_class=True (default)", "per_class=False"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PROTOCOL_SMOKE))
def test_protocol_scripts_run_on_tiny_data(name, tmp_path):
    """The papers' protocol scripts on the digits stand-in in MNIST's format: one seed, 300
    training images, one epoch; their summaries hold every method with metrics in [0, 1]."""
    root = _script("mnist_setup").write_fast_mnist(tmp_path / "data")
    sizes, methods = PROTOCOL_SMOKE[name]
    out = tmp_path / name
    argv = ["--root", str(root), "--seeds", "1", "--n-train", "300", "--clf-epochs", "1"]
    _script(name).main(argv + sizes.split() + ["--out", str(out)])
    data = json.loads(out.with_suffix(".json").read_text())
    assert set(methods) <= set(data["summary"]), list(data["summary"])
    values = _metrics(data["summary"])
    assert values and all(0.0 <= v <= 1.0 for v in values), values
    md = out.with_suffix(".md").read_text()
    assert all(f"| {m} |" in md for m in methods), md
