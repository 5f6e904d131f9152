"""ROC curves and score histograms."""

from __future__ import annotations

from pytorch_ood.detector import MaxSoftmax

from tests.benchmark_helpers import _sets
from uniad_plugin.benchmark import DetectorEntry, UnifiedBenchmark, plot_histograms, plot_roc


def test_plots(digits, digits_model, tmp_path):
    bench = UnifiedBenchmark(digits.train, digits.test, _sets(digits), progress=False)
    entries = [DetectorEntry("MSP", MaxSoftmax(digits_model))]
    bench.evaluate(entries)
    pngs = plot_roc(bench.scores, bench.kinds, tmp_path / "plots")
    pngs += plot_histograms(bench.scores, bench.kinds, tmp_path / "plots")
    assert {p.name for p in pngs} == {"roc_OOD.png", "roc_AD.png", "roc_NS.png", "hist_MSP.png"}
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)
