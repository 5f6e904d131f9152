"""UnifiedBenchmark and its helpers (wiring by name, fitting, rows, tables, plots, model I/O)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from pytorch_ood.api import Detector
from pytorch_ood.detector import MaxSoftmax
from torch import nn
from torch.utils.data import TensorDataset

from uniad_plugin.anomalies import AnomalySet, gaussian_noise, uniform_noise
from uniad_plugin.benchmark import (
    DEFAULT_DETECTORS,
    KINDS,
    METRICS,
    DetectorEntry,
    UnifiedBenchmark,
    UsageError,
    available_detectors,
    build_detectors,
    check_model_output,
    load_model,
    parse_attacks,
    plot_histograms,
    plot_roc,
    results_to_csv,
    results_to_json,
    results_to_table,
    save_results,
    trained_model,
)
from uniad_plugin.models import digits_cnn

SHAPE = (1, 8, 8)


def _sets(digits):
    """Two noise sets, one OOD-like set (shifted ID images) and one 'AD' set (flipped images)."""
    x = digits.attack.tensors[0]
    return [
        gaussian_noise(120, SHAPE, seed=1),
        uniform_noise(80, SHAPE, seed=2),
        AnomalySet(x[:60].flip(-1), "OOD", "flipped"),
        AnomalySet(x[60:100].transpose(-1, -2).contiguous(), "AD", "transposed"),
    ]


class CountingDetector(Detector):
    """Scores by the mean pixel value and counts how many samples it scored."""

    def __init__(self):
        self.seen = 0

    def predict(self, x):
        self.seen += len(x)
        return -x.flatten(1).mean(1)


class FailingDetector(Detector):
    """Raises in fit, in predict, or only on inputs that look like noise."""

    requires_fit = True

    def __init__(self, where: str):
        self.where = where

    def fit(self, loader):
        if self.where == "fit":
            raise RuntimeError("cannot fit")
        return self

    def predict(self, x):
        if self.where == "predict":
            raise RuntimeError("cannot predict")
        if self.where == "noise" and x.mean() > 0.45:
            raise RuntimeError("noise breaks me")
        return x.flatten(1).std(1)


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
    assert all(set(r) == {"Detector", "Class", "Dataset", *METRICS, "N", "Error"} for r in rows)
    for name in ("MaxSoftmax", "Mahalanobis"):
        mine = [r for r in rows if r["Detector"] == name]
        per_set = [r for r in mine if r["Dataset"] != "mean"]
        assert [r["Dataset"] for r in per_set] == bench.ood_names
        assert all(r["Error"] is None and 0 <= r["AUROC"] <= 1 for r in per_set)
        means = {r["Class"]: r for r in mine if r["Dataset"] == "mean"}
        assert set(means) == {"OOD", "AD", "NS", "all"}
        ns = [r["AUROC"] for r in per_set if r["Class"] == "NS"]
        assert means["NS"]["AUROC"] == pytest.approx(sum(ns) / len(ns))
        assert means["NS"]["N"] == 200
        overall = sum(means[k]["AUROC"] for k in KINDS) / 3
        assert means["all"]["AUROC"] == pytest.approx(overall)
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
    for k in METRICS:
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


class _Wrapped(nn.Module):
    """A non-Sequential classifier (a head named ``fc``)."""

    def __init__(self):
        super().__init__()
        seq = digits_cnn()
        self.body = seq[:-1]
        self.fc = seq[-1]

    def forward(self, x):
        return self.fc(self.body(x))


class _NoLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 10, 3, padding=1)

    def forward(self, x):
        return self.conv(x).mean(dim=(2, 3))


def test_build_detectors_by_name_and_skips():
    x = torch.rand(4, *SHAPE)
    names = ["maxsoftmax", "Mahalanobis", "MultiMahalanobis", "ViM", "UniformDetector"]
    entries = build_detectors(names, _Wrapped().eval(), x)
    status = {e.name: e.status for e in entries}
    assert status == {
        "MaxSoftmax": "ok",
        "Mahalanobis": "ok",
        "MultiMahalanobis": "skipped",
        "ViM": "ok",
        "UniformDetector": "ok",
    }
    multi = next(e for e in entries if e.name == "MultiMahalanobis")
    assert "nn.Sequential" in multi.reason
    entries = build_detectors(["Mahalanobis", "MaxSoftmax"], _NoLinear().eval(), x)
    assert entries[0].status == "skipped" and "penultimate" in entries[0].reason
    assert entries[1].ok


def test_build_detectors_errors():
    x = torch.rand(2, *SHAPE)
    with pytest.raises(UsageError, match="unknown detector 'Nope'.*MaxSoftmax.*UniformDetector"):
        build_detectors(["Nope"], digits_cnn().eval(), x)
    with pytest.raises(UsageError, match="twice"):
        build_detectors(["KNN", "knn"], digits_cnn().eval(), x)
    entries = build_detectors(
        ["KNN"], digits_cnn().eval(), x, detector_kwargs={"KNN": {"bogus": 1}}
    )
    assert entries[0].status == "failed" and entries[0].reason.startswith("build failed")


def test_available_detectors_include_plugins_and_defaults():
    names = available_detectors()
    assert "UniformDetector" in names and "plugin" in names["UniformDetector"]
    assert set(DEFAULT_DETECTORS) <= set(names)


def test_plugin_detector_gets_seed(digits_model, digits):
    (entry,) = build_detectors(
        ["UniformDetector"], digits_model, digits.test.tensors[0][:4], seed=7
    )
    assert entry.ok and entry.detector.seed == 7


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
        csv_text.splitlines()[0] == "Detector,Class,Dataset,AUROC,AUPR-IN,AUPR-OUT,FPR95TPR,N,Error"
    )
    data = json.loads(results_to_json(rows, {"seed": 0}))
    assert data["meta"] == {"seed": 0}
    bad_row = next(r for r in data["rows"] if r["Detector"] == "bad")
    assert bad_row["AUROC"] is None  # NaN is not valid JSON
    files = save_results(rows, tmp_path / "out", {"seed": 0})
    assert all(p.is_file() for p in files.values())
    pngs = plot_roc(bench.scores, bench.kinds, tmp_path / "plots")
    pngs += plot_histograms(bench.scores, bench.kinds, tmp_path / "plots")
    assert {p.name for p in pngs} == {"roc_OOD.png", "roc_AD.png", "roc_NS.png", "hist_MSP.png"}
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)


def test_parse_attacks():
    eps = {"linf": (0.1, 0.2), "l2": (1.0,)}
    assert parse_attacks(["fgsm", "cw_l2", "pgd_linf@0.05,0.3"], eps) == {
        "fgsm": (0.1, 0.2),
        "cw_l2": (1.0,),
        "pgd_linf": (0.05, 0.3),
    }
    with pytest.raises(UsageError, match="unknown attack 'pgd'.*pgd_linf"):
        parse_attacks(["pgd"], eps)
    with pytest.raises(UsageError, match="bad budget"):
        parse_attacks(["fgsm@x"], eps)
    with pytest.raises(UsageError, match="positive"):
        parse_attacks(["fgsm@-1"], eps)
    with pytest.raises(UsageError, match="twice"):
        parse_attacks(["fgsm", "fgsm@0.3"], eps)


def test_load_model_round_trip_and_errors(tmp_path):
    model = digits_cnn().eval()
    path = tmp_path / "m.pt"
    torch.save(model.state_dict(), path)
    loaded = load_model(path, "uniad_plugin.models:digits_cnn")
    x = torch.rand(3, *SHAPE)
    assert torch.equal(loaded(x), model(x))
    torch.save({"state_dict": model.state_dict()}, tmp_path / "ckpt.pt")
    load_model(tmp_path / "ckpt.pt", digits_cnn)
    with pytest.raises(UsageError, match="not found"):
        load_model(tmp_path / "missing.pt", "uniad_plugin.models:digits_cnn")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(UsageError, match="not a state_dict"):
        load_model(tmp_path / "list.pt", "uniad_plugin.models:digits_cnn")
    with pytest.raises(UsageError, match="do not fit"):
        load_model(path, "uniad_plugin.models:lenet")
    with pytest.raises(UsageError, match="module:function"):
        load_model(path, "digits_cnn")
    with pytest.raises(UsageError, match="no function"):
        load_model(path, "uniad_plugin.models:nope")
    with pytest.raises(UsageError, match=r"shape \(3, 5\).*\(3, 10\)"):
        check_model_output(digits_cnn(5).eval(), x, 10)
    with pytest.raises(UsageError, match="fails on inputs"):
        check_model_output(digits_cnn().eval(), torch.rand(3, 1, 28, 28), 10)


def test_trained_model_is_cached(digits, tmp_path):
    small = TensorDataset(*(t[:200] for t in digits.train.tensors))
    m1, cached1 = trained_model(
        "cnn", digits_cnn, small, epochs=1, cache_dir=tmp_path, progress=False
    )
    m2, cached2 = trained_model(
        "cnn", digits_cnn, small, epochs=1, cache_dir=tmp_path, progress=False
    )
    assert (cached1, cached2) == (False, True)
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    _, cached3 = trained_model(
        "cnn", digits_cnn, small, epochs=2, cache_dir=tmp_path, progress=False
    )
    assert not cached3
