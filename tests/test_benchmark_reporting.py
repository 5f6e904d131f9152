"""Result rows as tables, CSV, JSON and files."""

from __future__ import annotations

import json
from pathlib import Path

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
    assert lines[1].startswith("Warning: attacking") and "device='cuda'" in lines[1]
    assert "fast=True" in lines[1]
    fast = RunConfig(dataset="cifar10", data_root="d", fast=True).resolve()
    assert len(work_lines(fast, splits(50))) == 1
    mnist = RunConfig(dataset="mnist", data_root="d").resolve()
    assert len(work_lines(mnist, splits(1000, (1, 28, 28)))) == 1


def _set_row(detector, kind, name, auroc, dr=0.5, error=None):
    from uniad_plugin.benchmark import METRICS

    row = {"Detector": detector, "Class": kind, "Dataset": name}
    row.update({m: None if error else auroc for m in METRICS})
    row.update({"DR@5%FPR": None if error else dr, "N": 10, "Error": error})
    return row


#: per-set AUROCs of a hand-built run: near1 (OOD), far1, far2 (OOD), adv1, adv2 (AD), n1 (NS)
_SETS = [("OOD", "near1"), ("OOD", "far1"), ("OOD", "far2"), ("AD", "adv1"), ("AD", "adv2")]
_SETS += [("NS", "n1")]
_AUROC = {
    "A": [0.9, 0.8, 0.6, 0.7, 0.5, 1.0],
    "B": [0.6, 0.9, 0.9, 0.9, 0.8, 0.9],
    "C": [0.5, None, 0.7, 0.6, 0.6, 0.8],  # far1 failed
    "PixelCount": [0.5, 0.5, 0.5, 0.5, 0.5, 1.0],  # separates n1 without a model
}


@pytest.fixture
def hand_rows():
    """The rows of a hand-built run, with summary rows as the benchmark adds them; A has
    detection rates 0.5, 0.4, 0.3, 0.2, 0.1, 0.6; 'Skipped' was skipped, 'Failed' failed on
    every set."""
    from uniad_plugin.benchmark import flag_separable, summarise

    rows = []
    for det, values in _AUROC.items():
        drs = [0.5, 0.4, 0.3, 0.2, 0.1, 0.6] if det == "A" else [0.5] * 6
        per_set = [
            _set_row(det, k, s, v, dr, None if v is not None else "predict failed: boom")
            for (k, s), v, dr in zip(_SETS, values, drs, strict=True)
        ]
        rows += [*per_set, *summarise(per_set, det)]
        if det == "A":
            rows.append(_set_row("Skipped", "all", "mean", None, error="skipped: no linear head"))
            failed = [
                _set_row("Failed", k, s, None, error="predict failed: oops") for k, s in _SETS
            ]
            rows += [*failed, *summarise(failed, "Failed")]
    flag_separable(rows)
    return rows


def test_leaderboard_standings_of_a_hand_built_run(hand_rows):
    from uniad_plugin.benchmark.leaderboard import standings

    lines = standings(hand_rows, near_ood=["near1"])
    # ranked by the overall mean, then the detectors without numbers, then the baselines
    assert [s.detector for s in lines] == ["B", "A", "C", "Skipped", "Failed", "PixelCount"]
    assert [s.rank for s in lines] == [1, 2, 3, None, None, None]
    b, a, c, skipped, failed, pixel = lines
    assert a.means == pytest.approx(
        {"OOD": 2.3 / 3, "near-OOD": 0.9, "far-OOD": 0.7, "AD": 0.6, "NS": 1.0}
    )
    assert a.overall == pytest.approx((2.3 / 3 + 0.6 + 1.0) / 3)
    assert a.worst == {"OOD": (0.6, "far2"), "AD": (0.5, "adv2"), "NS": (1.0, "n1")}
    assert a.detection_rate == pytest.approx(2.1 / 6)  # the plain mean over the six sets
    assert b.overall == pytest.approx(0.85) and b.worst["OOD"] == (0.6, "near1")
    # a failed set is left out of the means and listed
    assert c.means == pytest.approx(
        {"OOD": 0.6, "near-OOD": 0.5, "far-OOD": 0.7, "AD": 0.6, "NS": 0.8}
    )
    assert c.errors == [("far1", "predict failed: boom")]
    assert skipped.reason == "skipped: no linear head" and skipped.means == {}
    assert failed.reason == "no anomaly set was scored"
    assert pixel.model_free and pixel.overall == pytest.approx(2 / 3)
    # the overall mean is the "all | mean" row of the tables, for every detector
    all_mean = {
        r["Detector"]: r["AUROC"]
        for r in hand_rows
        if (r["Class"], r["Dataset"]) == ("all", "mean")
    }
    for s in (a, b, c, pixel):
        assert s.overall == all_mean[s.detector]
    # lower is better: FPR95TPR ranks the smallest mean first
    assert [s.detector for s in standings(hand_rows, metric="FPR95TPR")][:3] == ["C", "A", "B"]


def test_leaderboard_markdown_near_far_and_one_ood_column(hand_rows):
    from uniad_plugin.benchmark import ConfigError
    from uniad_plugin.benchmark.leaderboard import leaderboard

    meta = {"test_accuracy": 0.9, "num_classes": 10, "n_test": 100}
    md = leaderboard(hand_rows, meta, near_ood=["near1"]).splitlines()
    assert (
        md[0] == "Classifier accuracy on the 100 ID test images: 0.900 (chance 0.100, 10 classes)."
    )
    assert md[2] == "**Leaderboard (AUROC): detectors ranked by the overall mean, best first**"
    assert md[4] == (
        "| # | Detector | near-OOD mean | far-OOD mean | AD mean | NS mean | overall mean | "
        "worst OOD | worst AD | worst NS | DR@5%FPR (all sets) | Note |"
    )
    assert md[6] == (
        "| 1 | B | 0.600 | 0.900 | 0.850 | 0.900 | 0.850 | 0.600 (near1) | 0.800 (adv2) | "
        "0.900 (n1 !) | 0.500 |   |"
    )
    assert md[7].startswith("| 2 | A | 0.900 | 0.700 | 0.600 | 1.000 | 0.789 | 0.600 (far2) |")
    assert md[8].endswith("| 0.500 | no numbers on 1 set (below) |")
    assert md[9] == "| - | Skipped |   |   |   |   |   |   |   |   |   | skipped: no linear head |"
    assert md[10].startswith("| - | Failed |") and md[10].endswith("| no anomaly set was scored |")
    assert md[11].startswith("| - | PixelCount | 0.500 | 0.500 | 0.500 | 1.000 | 0.667 |")
    assert md[11].endswith("| model-free baseline |")
    text = "\n".join(md)
    assert "- near-OOD: near1; far-OOD: every other OOD set (far1, far2)" in text
    assert "- ! = a model-free Pixel* baseline separates this set" in text and ": n1." in text
    assert "- C [far1]: predict failed: boom" in text
    assert "the 'all | mean' line of table.md" in text
    # the near-OOD sets of the run's details; without any, one OOD column
    assert leaderboard(hand_rows, {"near_ood": ["near1"]}) == leaderboard(
        hand_rows, near_ood=["near1"]
    )
    one = leaderboard(hand_rows).splitlines()[2]
    assert one.startswith("| # | Detector | OOD mean | AD mean | NS mean | overall mean |")
    assert "near" not in one
    # OpenOOD's groups in the details stand for the near-OOD sets
    groups = {"anomaly_sets": [{"name": "near1", "kind": "OOD", "info": {"group": "near"}}]}
    assert "| near-OOD mean | far-OOD mean |" in leaderboard(hand_rows, groups)
    with pytest.raises(ConfigError, match=r"unknown near-OOD set 'cats'.*: near1, far1, far2$"):
        leaderboard(hand_rows, near_ood=["cats"])
    text = leaderboard(hand_rows, fmt="text", metric="FPR95TPR")
    assert "Leaderboard (FPR95TPR, lower is better)" in text and "highest FPR95TPR" in text


def test_leaderboard_file_and_rerender(hand_rows, tmp_path, capsys):
    from uniad_plugin.benchmark.leaderboard import leaderboard, main

    meta = {"test_accuracy": 0.9, "num_classes": 10, "near_ood": ["near1"]}
    files = save_results(hand_rows, tmp_path, meta)
    assert files["leaderboard"] == tmp_path / "leaderboard.md"
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]  # NaN read back as None
    assert (
        files["leaderboard"].read_text() == leaderboard(rows, meta) == leaderboard(hand_rows, meta)
    )
    assert main([str(tmp_path)]) == 0
    assert capsys.readouterr().out == files["leaderboard"].read_text()
    assert main([str(tmp_path / "results.json"), "--out", str(tmp_path / "lb.md")]) == 0
    assert (tmp_path / "lb.md").read_text() == files["leaderboard"].read_text()
    assert main([str(tmp_path / "results.json"), "--near-ood", "far1", "far2"]) == 0
    assert "near-OOD: far1, far2; far-OOD: every other OOD set (near1)" in capsys.readouterr().out
    assert main([str(tmp_path / "results.json"), "--near-ood", "cats"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown near-OOD set 'cats'" in err[0]
    assert main([str(tmp_path / "missing.json")]) == 2


_RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


@pytest.mark.parametrize("run", sorted(p.parent.name for p in _RESULTS.glob("*/results.json")))
def test_committed_leaderboards_are_their_results_rerendered(run):
    """Every committed results folder holds the leaderboard of its results.json."""
    from uniad_plugin.benchmark.leaderboard import leaderboard

    data = json.loads((_RESULTS / run / "results.json").read_text())
    assert (_RESULTS / run / "leaderboard.md").read_text() == leaderboard(
        data["rows"], data["meta"]
    )
