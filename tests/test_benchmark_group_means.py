"""Anomaly sets with a group (OpenOOD's near- and far-OOD): a mean row per group of a class,
in the rows and in the tables."""

from __future__ import annotations

import math

import pytest
import torch

from uniad_plugin.anomalies import AnomalySet
from uniad_plugin.benchmark import UnifiedBenchmark, summarise
from uniad_plugin.benchmark.reporting import results_to_table


def _row(name: str, auroc: float, kind: str = "OOD", error: str | None = None) -> dict:
    metrics = {k: auroc for k in ("AUROC", "AUPR-IN", "AUPR-OUT", "FPR95TPR", "DR@5%FPR")}
    return {"Detector": "D", "Class": kind, "Dataset": name, **metrics, "N": 10, "Error": error}


def test_group_means_are_reported_apart():
    rows = [
        _row("A (near)", 0.6),
        _row("B (near)", 0.7),
        _row("C (far)", 0.9),
        _row("D (far)", 0.8, error="boom"),
        _row("letters", 1.0),
        _row("fgsm", 0.5, kind="AD"),
    ]
    groups = {"A (near)": "near", "B (near)": "near", "C (far)": "far", "D (far)": "far"}
    out = {(r["Class"], r["Dataset"]): r for r in summarise(rows, "D", groups)}
    assert math.isclose(out[("OOD", "near-OOD mean")]["AUROC"], 0.65)
    assert out[("OOD", "near-OOD mean")]["N"] == 20
    assert math.isclose(out[("OOD", "far-OOD mean")]["AUROC"], 0.9)  # the scored sets only
    assert math.isclose(out[("OOD", "mean")]["AUROC"], (0.6 + 0.7 + 0.9 + 1.0) / 4)
    assert ("AD", "near-AD mean") not in out and ("OOD", "near-OOD mean") not in {
        (r["Class"], r["Dataset"]) for r in summarise(rows, "D")
    }
    table = results_to_table([*rows, *out.values()])
    order = ["A (near)", "D (far)", "letters", "near-OOD mean", "far-OOD mean", "OOD    mean"]
    positions = [table.index(name) for name in order]
    assert positions == sorted(positions), table


def test_the_benchmark_checks_groups():
    x = torch.rand(4, 1, 8, 8)
    ds = torch.utils.data.TensorDataset(x, torch.zeros(4, dtype=torch.long))
    odd = AnomalySet(x, "OOD", "odd")
    odd.group = "middle"
    with pytest.raises(ValueError, match="expected the group of anomaly set 'odd'"):
        UnifiedBenchmark(ds, ds, [odd])
    named = AnomalySet(x, "OOD", "near-OOD mean")
    with pytest.raises(ValueError, match="the group means"):
        UnifiedBenchmark(ds, ds, [named])
