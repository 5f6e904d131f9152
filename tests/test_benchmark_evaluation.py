"""UnifiedBenchmark: a pytorch-ood Benchmark, rows and means, shared representations, failures."""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_ood.detector import MaxSoftmax
from torch.utils.data import TensorDataset

from tests.benchmark_helpers import SHAPE, CountingDetector, FailingDetector, _sets
from uniad_plugin.anomalies import AnomalySet, gaussian_noise
from uniad_plugin.benchmark import (
    KINDS,
    METRICS,
    DetectorEntry,
    UnifiedBenchmark,
    build_detectors,
    results_to_table,
    summarise,
)


@pytest.fixture(scope="module")
def bench(digits):
    return UnifiedBenchmark(digits.train, digits.test, _sets(digits), progress=False)


def test_is_a_pytorch_ood_benchmark(bench, digits):
    from pytorch_ood.benchmark import Benchmark

    assert isinstance(bench, Benchmark)
    assert bench.info is not None and bench.info.ai_coded
    assert bench.ood_names == ["gaussian", "uniform", "flipped", "transposed"]
    assert bench.kinds == {"gaussian": "NS", "uniform": "NS", "flipped": "OOD", "transposed": "AD"}
    assert bench.train_set() is digits.train
    combined = bench.test_sets()
    assert len(combined) == 4
    assert len(combined[0]) == len(digits.test) + 120
    labels = torch.tensor([combined[0][i][1] for i in range(len(combined[0]))])
    assert (labels[: len(digits.test)] >= 0).all() and (labels[len(digits.test) :] == -1).all()
    assert bench.test_sets(unknown=False) == [digits.test]
    assert [len(s) for s in bench.test_sets(known=False)] == [120, 80, 60, 40]
    with pytest.raises(ValueError, match="known or unknown"):
        bench.test_sets(known=False, unknown=False)


def test_rejects_bad_sets(digits):
    noise = gaussian_noise(10, SHAPE)
    with pytest.raises(ValueError, match="distinct"):
        UnifiedBenchmark(digits.train, digits.test, [noise, gaussian_noise(5, SHAPE)])
    with pytest.raises(ValueError, match="kind"):
        UnifiedBenchmark(digits.train, digits.test, [TensorDataset(torch.zeros(3, *SHAPE))])
    with pytest.raises(ValueError, match="non-empty ID test"):
        UnifiedBenchmark(digits.train, TensorDataset(torch.zeros(0, *SHAPE)), [noise])


def test_rows_means_and_scores(bench, digits_model, digits):
    entries = build_detectors(
        ["MaxSoftmax", "mahalanobis"], digits_model, digits.test.tensors[0][:4]
    )
    assert [e.name for e in entries] == ["MaxSoftmax", "Mahalanobis"]
    bench.fit(entries)
    rows = bench.evaluate(entries)
    fields = {"Detector", "Class", "Dataset", *METRICS, "N", "PixelSeparable", "Error"}
    assert all(set(r) == fields for r in rows)
    for name in ("MaxSoftmax", "Mahalanobis"):
        mine = [r for r in rows if r["Detector"] == name]
        per_set = [r for r in mine if r["Dataset"] not in ("mean", "worst")]
        assert [r["Dataset"] for r in per_set] == bench.ood_names
        assert all(r["Error"] is None and 0 <= r["AUROC"] <= 1 for r in per_set)
        means = {r["Class"]: r for r in mine if r["Dataset"] == "mean"}
        assert set(means) == {"OOD", "AD", "NS", "all"}
        ns = [r["AUROC"] for r in per_set if r["Class"] == "NS"]
        assert means["NS"]["AUROC"] == pytest.approx(sum(ns) / len(ns))
        assert means["NS"]["N"] == 200
        overall = sum(means[k]["AUROC"] for k in KINDS) / 3
        assert means["all"]["AUROC"] == pytest.approx(overall)
        worst = {r["Class"]: r for r in mine if r["Dataset"] == "worst"}
        assert worst["NS"]["AUROC"] == min(ns)
        assert worst["all"]["AUROC"] == min(r["AUROC"] for r in per_set)
        assert worst["all"]["FPR95TPR"] == max(r["FPR95TPR"] for r in per_set)
        # without a held-out ID set there is no threshold, so no detection rate
        assert all(math.isnan(r["DR@5%FPR"]) for r in per_set)
        # raw scores are kept: ID once, every anomaly set once
        assert set(bench.scores[name]) == {"ID", *bench.ood_names}
        assert len(bench.scores[name]["ID"]) == len(digits.test)
    # Mahalanobis separates uniform noise from digits
    maha = {r["Dataset"]: r for r in rows if r["Detector"] == "Mahalanobis"}
    assert maha["uniform"]["AUROC"] > 0.9


def test_metrics_match_pytorch_ood(bench, digits_model, digits):
    """Metrics from the cached scores equal OODMetrics over the concatenated test set."""
    from pytorch_ood.metrics import OODMetrics

    det = MaxSoftmax(digits_model)
    rows = bench.evaluate([det])
    loader = torch.utils.data.DataLoader(bench.test_sets()[1], batch_size=128)
    m = OODMetrics()
    with torch.no_grad():
        for x, y in loader:
            m.update(det(x), y)
    expected = m.compute()
    row = next(r for r in rows if r["Dataset"] == "uniform")
    for k in ("AUROC", "AUPR-IN", "AUPR-OUT", "FPR95TPR"):
        assert row[k] == pytest.approx(expected[k], abs=1e-6)


def test_id_scored_once_per_detector(bench, digits):
    det = CountingDetector()
    bench.evaluate(det)
    assert det.seen == len(digits.test) + sum(len(a) for a in bench.anomalies)


def test_shared_representations_equal_raw_predict(bench, digits_model, digits):
    entries = build_detectors(["EnergyBased", "KNN", "ViM"], digits_model, digits.test.tensors[0])
    bench.fit(entries)
    bench.evaluate(entries)
    x = digits.test.tensors[0]
    for e in entries:
        raw = e.detector.predict(x).double()
        assert torch.allclose(bench.scores[e.name]["ID"], raw, atol=1e-6), e.name


def test_shared_representations_in_any_order(bench, digits_model, digits):
    """A features detector listed before a logits detector of the same model."""
    entries = build_detectors(
        ["KNN", "Mahalanobis", "MaxSoftmax"], digits_model, digits.test.tensors[0]
    )
    bench.fit(entries)
    rows = bench.evaluate(entries)
    assert all(r["Error"] is None for r in rows), [r["Error"] for r in rows]
    x = digits.test.tensors[0]
    for e in entries:
        raw = e.detector.predict(x).double()
        assert torch.allclose(bench.scores[e.name]["ID"], raw, atol=1e-6), e.name


def test_survives_failing_detectors(bench, digits):
    entries = [
        DetectorEntry("fit-fails", FailingDetector("fit")),
        DetectorEntry("predict-fails", FailingDetector("predict")),
        DetectorEntry("noise-fails", FailingDetector("noise")),
        DetectorEntry("fine", CountingDetector()),
    ]
    bench.fit(entries)
    rows = bench.evaluate(entries)
    by = {}
    for r in rows:
        by.setdefault(r["Detector"], []).append(r)
    assert (
        len(by["fit-fails"]) == 1
        and "fit failed: RuntimeError: cannot fit" in by["fit-fails"][0]["Error"]
    )
    assert math.isnan(by["fit-fails"][0]["AUROC"])
    assert len(by["predict-fails"]) == 1 and "cannot predict" in by["predict-fails"][0]["Error"]
    noisy = {r["Dataset"]: r for r in by["noise-fails"]}
    assert "noise breaks me" in noisy["uniform"]["Error"]
    assert noisy["flipped"]["Error"] is None and not math.isnan(noisy["flipped"]["AUROC"])
    assert all(r["Error"] is None for r in by["fine"])
    table = results_to_table(rows)
    assert "fit-fails: fit failed: RuntimeError: cannot fit" in table
    assert "noise-fails [uniform]" in table


def test_empty_set_is_reported(digits):
    empty = AnomalySet(torch.zeros(0, *SHAPE), "AD", "pgd@0")
    b = UnifiedBenchmark(
        digits.train, digits.test, [empty, gaussian_noise(20, SHAPE)], progress=False
    )
    rows = b.evaluate(CountingDetector())
    row = next(r for r in rows if r["Dataset"] == "pgd@0")
    assert row["Error"] == "empty set" and row["N"] == 0
    ad_mean = next(r for r in rows if r["Class"] == "AD" and r["Dataset"] == "mean")
    assert ad_mean["Error"] is not None
    overall = next(r for r in rows if r["Class"] == "all")
    ns_mean = next(r for r in rows if r["Class"] == "NS" and r["Dataset"] == "mean")
    assert overall["AUROC"] == ns_mean["AUROC"]


def test_summarise_weighs_every_class_the_same():
    def row(kind, name, auroc, error=None):
        return {
            "Class": kind,
            "Dataset": name,
            "N": 10,
            "Error": error,
            **{k: auroc for k in METRICS},
        }

    rows = [
        row("OOD", "a", 0.5),
        row("AD", "b", 0.7),
        row("AD", "c", 0.9),
        row("NS", "d", 0.0, "predict failed"),
    ]
    out = {(r["Class"], r["Dataset"]): r for r in summarise(rows, "det")}
    assert out[("AD", "mean")]["AUROC"] == pytest.approx(0.8)
    assert out[("AD", "worst")]["AUROC"] == pytest.approx(0.7)
    assert out[("all", "worst")]["AUROC"] == pytest.approx(0.5)
    assert out[("NS", "mean")]["Error"] == "no set of this class was scored"
    assert out[("all", "mean")]["AUROC"] == pytest.approx((0.5 + 0.8) / 2)


def test_detection_rate_uses_the_held_out_id_set(digits_model, digits):
    """The 5%-FPR threshold comes from the held-out ID set, never from the ID test set."""
    sets = _sets(digits)
    b = UnifiedBenchmark(digits.train, digits.test, sets, id_val=digits.val, progress=False)
    det = MaxSoftmax(digits_model)
    rows = b.evaluate([det])
    with torch.no_grad():
        val = det(digits.val.tensors[0]).double()
        test = det(digits.test.tensors[0]).double()
    thr = float(torch.quantile(val, 0.95, interpolation="higher"))
    assert b.thresholds["MaxSoftmax"]["threshold"] == pytest.approx(thr)
    assert b.thresholds["MaxSoftmax"]["id_test_fpr"] == pytest.approx(
        float((test > thr).double().mean())
    )
    assert set(b.scores["MaxSoftmax"]) == {"ID", "ID-val", *b.ood_names}
    for a in sets:
        row = next(r for r in rows if r["Dataset"] == a.name)
        with torch.no_grad():
            s = det(a.x).double()
        assert row["DR@5%FPR"] == pytest.approx(float((s > thr).double().mean()))
    # a test set changed to hold more confident samples does not move the threshold
    b2 = UnifiedBenchmark(digits.train, digits.val, sets, id_val=digits.val, progress=False)
    b2.evaluate([det])
    assert b2.thresholds["MaxSoftmax"]["threshold"] == pytest.approx(thr)


def test_pixel_separable_sets_are_flagged(digits):
    """A set that a model-free baseline separates is marked in every row and in the table."""
    from uniad_plugin.benchmark import results_to_csv
    from uniad_plugin.benchmark.sanity import PixelGrid

    on_grid = AnomalySet((digits.test.tensors[0][:30].flip(-1) * 16).round() / 16, "OOD", "mirror")
    off_grid = AnomalySet(digits.test.tensors[0][:30] + 0.01, "AD", "shifted")
    b = UnifiedBenchmark(digits.train, digits.test, [on_grid, off_grid], progress=False)
    rows = b.evaluate([DetectorEntry("PixelGrid", PixelGrid(16))])
    assert b.pixel_separable == ["shifted"]
    by_set = {r["Dataset"]: r for r in rows if r["Class"] != "all"}
    assert by_set["shifted"]["PixelSeparable"] is True
    assert by_set["mirror"]["PixelSeparable"] is False and by_set["mirror"]["AUROC"] == 0.5
    assert by_set["mean"]["PixelSeparable"] is None
    table = results_to_table(rows)
    assert "shifted !" in table and "mirror !" not in table and "Pixel* baseline" in table
    assert ",PixelSeparable," in results_to_csv(rows).splitlines()[0]
