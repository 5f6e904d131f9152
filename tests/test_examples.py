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
        "pytorch_ood_in_python.py",
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


@pytest.mark.slow
def test_pytorch_ood_in_python(tmp_path):
    """The docs page "pytorch-ood in Python", line by line: class folders, a pre-trained
    ResNet-20 loaded with weights_only, the three detectors, OODMetrics, the saved detector and
    the 5% FPR threshold."""
    import numpy as np
    import torch
    from PIL import Image
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import ToTensor

    from tests.image_data import _pattern_images, write_image_folder
    from uniad_plugin.models import accuracy, resnet20_cifar, train_classifier

    classes = ("cat", "dog", "ship")
    write_image_folder(tmp_path / "train", classes, n_per_class=30, seed=0)
    write_image_folder(tmp_path / "test", classes, n_per_class=20, seed=1)
    (tmp_path / "ood" / "unknown").mkdir(parents=True)
    for i, img in enumerate(_pattern_images(20, "RGB", 48, 40, 0, np.random.default_rng(2))):
        img.save(tmp_path / "ood" / "unknown" / f"{i}.png")
    torch.manual_seed(0)
    model = resnet20_cifar(num_classes=3)
    train = ImageFolder(tmp_path / "train", transform=ToTensor())
    loader = DataLoader(
        train, batch_size=30, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    train_classifier(model, loader, epochs=8, lr=3e-3, seed=0)
    test = ImageFolder(tmp_path / "test", transform=ToTensor())
    assert accuracy(model, DataLoader(test, batch_size=60)) > 0.9
    torch.save(model.state_dict(), tmp_path / "resnet20.pt")
    assert isinstance(Image.open(tmp_path / "ood" / "unknown" / "0.png"), Image.Image)

    out = run(
        "pytorch_ood_in_python.py",
        *("--train-dir", str(tmp_path / "train"), "--test-dir", str(tmp_path / "test")),
        *("--ood-dir", str(tmp_path / "ood"), "--weights", str(tmp_path / "resnet20.pt")),
        *("--out", str(tmp_path / "out")),
    )
    for name in ("UniformDetector", "EnergyBased", "Mahalanobis"):
        m = re.search(rf"^{name}\s+{AUROC}\s+\d\.\d{{3}}$", out, re.MULTILINE)
        assert m, out
    # stripes against flat colours: the feature-space detectors separate them
    uniform = re.search(rf"^UniformDetector\s+{AUROC}", out, re.MULTILINE)
    assert float(uniform.group(1)) > 0.9, out
    m = re.search(r"flagged: (\d+\.\d)% of the other ID test images, (\d+\.\d)% of the OOD", out)
    assert m, out
    assert float(m.group(1)) <= 30.0  # 30 held-out ID images: 5% is one or two of them
    assert (tmp_path / "out" / "uniform_detector.pt").stat().st_size > 1000
