"""Every script in ``examples/`` runs in its fast mode and prints what it promises."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

AUROC = r"(0\.\d{3}|1\.000)"


def run(script: str, *args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--fast", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=EXAMPLES.parent,
    )
    assert proc.returncode == 0, f"{script} exited with {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_every_example_is_tested():
    tested = {
        "quickstart.py",
        "compare_builtin.py",
        "bring_your_own_model.py",
        "generate_anomalies.py",
    }
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested


@pytest.mark.slow
def test_quickstart():
    out = run("quickstart.py")
    acc = float(re.search(r"accuracy on the ID test digits: (\d\.\d+)", out).group(1))
    assert acc > 0.8
    m = re.search(rf"AUROC, ID digits vs Gaussian noise: {AUROC}", out)
    assert m, out
    assert float(m.group(1)) > 0.9  # noise is the easy case; a broken detector sits near 0.5


@pytest.mark.slow
def test_compare_builtin():
    out = run("compare_builtin.py")
    header = next(line for line in out.splitlines() if line.startswith("Class"))
    for name in ("UniformDetector", "MaxSoftmax", "Mahalanobis", "KNN", "ViM"):
        assert name in header
    for kind in ("OOD", "AD", "NS", "all"):
        assert re.search(rf"^{kind}\s+mean\s+{AUROC}", out, re.MULTILINE), out
    assert "err" not in out.split("AUROC:", 1)[1]


@pytest.mark.slow
def test_bring_your_own_model():
    out = run("bring_your_own_model.py")
    assert "default layers:" in out
    assert re.search(r"stem\.0\s+-> \(16,\) features per input", out)
    for name in ("letters \\(OOD\\)", "uniform noise \\(NS\\)"):
        m = re.search(rf"AUROC vs {name}: {AUROC} \(per layer: stem\.0 ", out)
        assert m, out
        assert float(m.group(1)) > 0.8


@pytest.mark.slow
def test_generate_anomalies(tmp_path):
    png = tmp_path / "grid.png"
    out = run("generate_anomalies.py", "--plot", str(png), "--cache-dir", str(tmp_path / "c"))
    for kind, name in [
        ("OOD", "letters"),
        ("OOD", "photos"),
        ("AD", "fgsm@0.1"),
        ("AD", "pgd_linf@0.1"),
        ("AD", "pgd_l2@1"),
        ("AD", "deepfool@1"),
        ("NS", "gaussian"),
        ("NS", "uniform"),
        ("NS", "salt_pepper"),
        ("NS", "noisy_id"),
    ]:
        assert re.search(rf"^\s*{kind}\s+{re.escape(name)}\s+\d+ images", out, re.MULTILINE), out
    assert re.search(r"success rate \d\.\d\d", out)
    assert "y = -1" in out
    assert png.stat().st_size > 1000
    assert any((tmp_path / "c").iterdir())  # adversarial sets were cached
