"""Result rows as tables, CSV, JSON and files."""

from __future__ import annotations

import json

import pytest
from pytorch_ood.detector import MaxSoftmax

from tests.benchmark_helpers import FailingDetector, _sets
from uniad_plugin.benchmark import (
    DetectorEntry,
    UnifiedBenchmark,
    results_to_csv,
    results_to_json,
    results_to_table,
    save_results,
)


@pytest.fixture(scope="module")
def bench(digits):
    return UnifiedBenchmark(digits.train, digits.test, _sets(digits), progress=False)


def test_outputs(bench, digits_model, tmp_path):
    entries = [
        DetectorEntry("MSP", MaxSoftmax(digits_model)),
        DetectorEntry("bad", FailingDetector("fit")),
    ]
    bench.fit(entries)
    rows = bench.evaluate(entries)
    table = results_to_table(rows)
    assert "MSP" in table and "all" in table and "bad: fit failed" in table
    md = results_to_table(rows, "FPR95TPR", fmt="markdown")
    assert md.splitlines()[2].startswith("| Class | Dataset | N | MSP |")
    with pytest.raises(ValueError, match="metric"):
        results_to_table(rows, "ACC")
    csv_text = results_to_csv(rows)
    assert (
        csv_text.splitlines()[0]
        == "Detector,Class,Dataset,AUROC,AUPR-IN,AUPR-OUT,FPR95TPR,DR@5%FPR,N,PixelSeparable,Error"
    )
    data = json.loads(results_to_json(rows, {"seed": 0}))
    assert data["meta"] == {"seed": 0}
    bad_row = next(r for r in data["rows"] if r["Detector"] == "bad")
    assert bad_row["AUROC"] is None  # NaN is not valid JSON
    files = save_results(rows, tmp_path / "out", {"seed": 0})
    assert all(p.is_file() for p in files.values())


def test_accuracy_line_and_near_chance_warning(tmp_path):
    from uniad_plugin.benchmark import NEAR_CHANCE, accuracy_lines, save_results

    good = {"test_accuracy": 0.912, "num_classes": 10, "n_test": 2000}
    assert accuracy_lines(good) == [
        "Classifier accuracy on the 2,000 ID test images: 0.912 (chance 0.100, 10 classes)."
    ]
    assert accuracy_lines({}) == []
    # below 1.5 x chance: a warning that names the usual causes
    low = {**good, "test_accuracy": 0.149}
    lines = accuracy_lines(low)
    assert len(lines) == 2 and NEAR_CHANCE == 1.5
    assert lines[1].startswith("Warning: the accuracy is near chance (below 1.5 x 0.100)")
    assert "normalisation" in lines[1] and "Normalized" in lines[1]
    assert "label order" in lines[1] and "sorted order" in lines[1]
    assert len(accuracy_lines({**good, "test_accuracy": 0.151})) == 1
    assert len(accuracy_lines({"test_accuracy": 0.7, "num_classes": 2, "n_test": 8})) == 2
    # the files of a run start with it
    files = save_results([], tmp_path, low)
    for kind in ("table", "markdown", "notes"):
        text = files[kind].read_text()
        assert text.lstrip("- ").startswith("Classifier accuracy on the 2,000"), kind
        assert "Warning: the accuracy is near chance" in text, kind


def test_work_estimate_and_the_cpu_warning():
    import torch
    from torch.utils.data import TensorDataset

    from uniad_plugin.benchmark import RunConfig, work_lines
    from uniad_plugin.data import Splits

    def splits(n_attack: int, shape=(3, 32, 32)) -> Splits:
        def data(n: int) -> TensorDataset:
            return TensorDataset(torch.zeros(n, *shape), torch.zeros(n, dtype=torch.long))

        return Splits(data(50), data(20), data(n_attack), 10, data(5))

    full = RunConfig(dataset="cifar10", data_root="d").resolve()
    lines = work_lines(full, splits(1000))
    assert len(lines) == 2, lines
    budgets = sum(len(b) for b in full.attacks.values())
    assert f"{len(full.attacks)} attacks at {budgets} budgets on up to 500 inputs each" in lines[0]
    assert f"({500 * budgets:,} attacked)" in lines[0] and "3x32x32 on cpu" in lines[0]
    assert lines[1].startswith("Warning: attacking") and "--device cuda" in lines[1]
    assert "--fast" in lines[1]
    fast = RunConfig(dataset="cifar10", data_root="d", fast=True).resolve()
    assert len(work_lines(fast, splits(50))) == 1
    mnist = RunConfig(dataset="mnist", data_root="d").resolve()
    assert len(work_lines(mnist, splits(1000, (1, 28, 28)))) == 1
