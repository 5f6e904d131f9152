"""benchmarks/train_cifar_reference.py on a tiny ImageFolder: seeded, resumable, recorded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.image_data import write_image_folder

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "train_cifar_reference.py"


def run(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_train_resume_and_report(tmp_path):
    classes = ("airplane", "automobile", "bird")
    write_image_folder(tmp_path / "data" / "train", classes, n_per_class=20, seed=0)
    write_image_folder(tmp_path / "data" / "test", classes, n_per_class=6, seed=1)
    args = ("--root", str(tmp_path / "data"), "--nets", "resnet20", "--epochs", "2")
    args += ("--batch-size", "16", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "w"))
    out = run(*args)
    assert "resnet20: epoch 2/2" in out and "test accuracy" in out
    record = json.loads((tmp_path / "w" / "resnet20.json").read_text())
    weights = tmp_path / "w" / "resnet20.pt"
    state = torch.load(weights, weights_only=True)
    from uniad_plugin.models import resnet20_cifar

    resnet20_cifar().load_state_dict(state)  # a plain state_dict of the architecture
    assert record["test_images"] == 18 and 0.0 <= record["test_accuracy"] <= 1.0
    # the same command again resumes after the last epoch: nothing retrained, same weights
    again = run(*args)
    assert "resuming after epoch 2" in again and "epoch 1/2" not in again
    assert json.loads((tmp_path / "w" / "resnet20.json").read_text())["sha256"] == record["sha256"]
    report = tmp_path / "table.md"
    run("--report", str(report), "--out", str(tmp_path / "w"))
    text = report.read_text()
    assert "| `resnet20` | `uniad_plugin.models:resnet20_cifar` | 10 | 2 |" in text
    assert record["sha256"][:16] in text and "--epochs 2" in text
