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
