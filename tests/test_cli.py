"""The ``uniad`` command end to end (fast mode), its caches, determinism and bad arguments."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from uniad_plugin import cli
from uniad_plugin.benchmark import DEFAULT_DETECTORS, RunConfig, run
from uniad_plugin.models import digits_cnn


def _run(args, capsys):
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """``uniad --fast`` into a fresh cache and output folder (captured by hand: module scope)."""
    root = tmp_path_factory.mktemp("uniad")
    out_dir, cache = root / "out", root / "cache"
    import contextlib
    import io

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = cli.main(["--fast", "--out", str(out_dir), "--cache-dir", str(cache), "--seed", "0"])
    return {"code": code, "out": stdout.getvalue(), "dir": out_dir, "cache": cache}


def _rows(out_dir: Path) -> list[dict]:
    return json.loads((out_dir / "results.json").read_text())["rows"]


@pytest.mark.slow
def test_default_command_end_to_end(first_run):
    assert first_run["code"] == 0
    out_dir = first_run["dir"]
    for name in ("results.json", "results.csv", "table.txt", "table.md", "leaderboard.md"):
        assert (out_dir / name).is_file(), name
    pngs = sorted(p.name for p in (out_dir / "plots").glob("*.png"))
    assert {"roc_OOD.png", "roc_AD.png", "roc_NS.png", "hist_UniformDetector.png"} <= set(pngs)

    data = json.loads((out_dir / "results.json").read_text())
    rows, meta = data["rows"], data["meta"]
    assert meta["model"]["cached"] is False and meta["test_accuracy"] > 0.9
    # the printed table has every anomaly class, its mean and the overall mean
    table = first_run["out"]
    for token in ("OOD", "AD", "NS", "letters", "photos", "pgd_linf@0.2", "gaussian", "all"):
        assert token in table, token
    assert all(d in table for d in ("UniformDetector", "MaxSoftmax", "Mahalanobis"))
    # every default detector ran (they all apply to the reference CNN), then the sanity rows
    sanity = ["PixelGrid", "PixelCount", "PixelKNN"]
    assert [d["name"] for d in meta["detectors"]] == [*DEFAULT_DETECTORS, *sanity]
    assert all(d["status"] == "ok" for d in meta["detectors"])
    assert all(r["Error"] is None for r in rows)
    kinds = {r["Class"] for r in rows}
    assert kinds == {"OOD", "AD", "NS", "all"}

    # the table really separates: UniformDetector flags noise far above chance
    ud = {(r["Class"], r["Dataset"]): r for r in rows if r["Detector"] == "UniformDetector"}
    assert ud[("NS", "mean")]["AUROC"] > 0.98
    assert ud[("NS", "uniform")]["AUROC"] > 0.98
    assert ud[("OOD", "mean")]["AUROC"] > 0.95
    assert ud[("AD", "mean")]["AUROC"] > 0.85
    # and it is the best detector of the run on adversarial inputs
    ad_means = {
        r["Detector"]: r["AUROC"]
        for r in rows
        if r["Class"] == "AD" and r["Dataset"] == "mean" and r["Detector"] not in sanity
    }
    # valid sets: on the digits' grid, so the off-grid count is at chance everywhere, and the
    # object-confined attacks leave the number of non-zero pixels as it was
    by = {(r["Detector"], r["Dataset"]): r for r in rows}
    per_set = [a["name"] for a in meta["anomaly_sets"]]
    assert all(by[("PixelGrid", s)]["AUROC"] == 0.5 for s in per_set)
    assert all(a["info"]["grid_levels"] == 16 for a in meta["anomaly_sets"])
    assert by[("PixelCount", "pgd_linf_obj@0.3")]["AUROC"] <= 0.6
    assert 0 <= by[("UniformDetector", "fgsm@0.2")]["DR@5%FPR"] <= 1
    assert (out_dir / "plots" / "heatmap_AUROC.png").is_file()
    assert "value grid (k/16)" in (out_dir / "notes.md").read_text()
    assert max(ad_means, key=ad_means.get) == "UniformDetector", ad_means

    # adversarial sets: non-empty, successful attacks only (as recorded by the generator)
    ad_sets = [a for a in meta["anomaly_sets"] if a["kind"] == "AD"]
    assert {a["info"]["attack"] for a in ad_sets} == {
        "fgsm",
        "pgd_linf",
        "pgd_l2",
        "deepfool",
        "cw_l2",
        "pgd_linf_obj",
        "pgd_l2_obj",
    }
    for a in ad_sets:
        assert a["n"] > 0 and a["n"] == a["info"]["n_success"] <= a["info"]["n_attacked"]

    # CSV has the same rows
    with open(out_dir / "results.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == len(rows)

    # the leaderboard: printed after the table and in leaderboard.md, one OOD column (no
    # --near-ood), the model-free baselines last
    from uniad_plugin.benchmark.leaderboard import leaderboard

    assert meta["near_ood"] is None
    board = (out_dir / "leaderboard.md").read_text()
    assert board == leaderboard(rows, meta)
    assert board.startswith("Classifier accuracy on the 269 ID test images: ")
    assert "| # | Detector | OOD mean | AD mean | NS mean | overall mean |" in board
    assert "near-OOD" not in board
    names = [line.split(" | ")[1] for line in board.splitlines() if line.startswith("| ")][1:]
    assert sorted(names[:-3]) == sorted(DEFAULT_DETECTORS)
    assert sorted(names[-3:]) == sorted(sanity)
    printed = first_run["out"]
    assert printed.index("Leaderboard (AUROC)") > printed.index("AUROC: ID test set vs each")


@pytest.mark.slow
def test_second_run_hits_the_caches(first_run, monkeypatch):
    """Same seed and cache: the model is not retrained, no attack runs, same numbers."""
    import uniad_plugin.anomalies.adversarial as adversarial
    import uniad_plugin.models as models

    def boom(*args, **kwargs):
        raise AssertionError("cache miss: this should have been loaded from the cache")

    monkeypatch.setattr(models, "train_classifier", boom)
    monkeypatch.setattr(adversarial, "_run_attack", boom)
    config = RunConfig(fast=True, cache_dir=first_run["cache"], out_dir=None, progress=False)
    result = run(config)
    assert result.meta["model"]["cached"] is True
    first = [r for r in _rows(first_run["dir"])]
    assert json.loads(json.dumps(result.rows)) == first

    # the adversarials it loaded fool the model it loaded, every one of them
    model = result.model
    for a in result.benchmark.anomalies:
        if a.kind != "AD":
            continue
        assert len(a) > 0
        with torch.no_grad():
            pred = model(a.x).argmax(1)
        assert (pred != a.source_labels).all(), a.name
        assert torch.equal(pred, a.adv_pred)


@pytest.mark.slow
def test_same_seed_gives_identical_numbers(first_run, tmp_path, capsys):
    """A fresh cache (model retrained, attacks rerun) with the same seed: identical rows."""
    code, out, _ = _run(
        ["--fast", "--out", tmp_path / "o", "--cache-dir", tmp_path / "c", "--no-plots", "--quiet"],
        capsys,
    )
    assert code == 0
    assert _rows(tmp_path / "o") == _rows(first_run["dir"])
    assert not (tmp_path / "o" / "plots").exists()


@pytest.mark.slow
def test_selected_detectors_sets_and_metric(first_run, tmp_path, capsys):
    code, out, _ = _run(
        [
            "--fast",
            "--quiet",
            "--no-plots",
            "--out",
            tmp_path / "o",
            "--cache-dir",
            first_run["cache"],
            "--detectors",
            "maxsoftmax",
            "KNN",
            "--attacks",
            "fgsm@0.2",
            "--noise",
            "uniform",
            "--ood",
            "letters",
            "photos",
            "--near-ood",
            "photos",
            "--metric",
            "FPR95TPR",
        ],
        capsys,
    )
    assert code == 0
    # the classifier's accuracy, then the table
    assert out.startswith("Classifier accuracy on the 269 ID test images: ")
    assert "\n\nFPR95TPR (lower is better)" in out
    rows = _rows(tmp_path / "o")
    sanity = {"PixelGrid", "PixelCount", "PixelKNN"}
    assert {r["Detector"] for r in rows} == {"MaxSoftmax", "KNN", *sanity}
    sets = {"letters", "photos", "fgsm@0.2", "uniform", "mean", "worst"}
    assert {r["Dataset"] for r in rows} == {*sets, "near-OOD mean", "far-OOD mean"}
    # photos is near-OOD, letters far-OOD: in the tables, the run's details and the leaderboard
    near = next(r for r in rows if r["Dataset"] == "near-OOD mean" and r["Detector"] == "KNN")
    photos = next(r for r in rows if r["Dataset"] == "photos" and r["Detector"] == "KNN")
    assert near["AUROC"] == photos["AUROC"]
    assert json.loads((tmp_path / "o" / "results.json").read_text())["meta"]["near_ood"] == [
        "photos"
    ]
    board = (tmp_path / "o" / "leaderboard.md").read_text()
    assert "| near-OOD mean | far-OOD mean | AD mean | NS mean | overall mean |" in board
    assert "near-OOD: photos; far-OOD: every other OOD set (letters)" in board
    assert "Leaderboard" not in out  # --quiet: the table only


def test_list_detectors_and_version(capsys):
    code, out, _ = _run(["--list-detectors"], capsys)
    assert code == 0
    assert "* UniformDetector" in out and "* Mahalanobis" in out and "MaxLogit" in out
    code, out, _ = _run(["--version"], capsys)
    assert code == 0 and out.startswith("uniad-plugin ")


def test_console_script_help():
    exe = Path(sys.executable).with_name("uniad")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "uniad_plugin.cli"]
    proc = subprocess.run([*cmd, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage: uniad" in proc.stdout and "--dataset" in proc.stdout


@pytest.fixture
def bad_model_files(tmp_path):
    """A 5-class digits CNN (file.py factory + its state_dict) and a 10-class state_dict."""
    arch = tmp_path / "arch.py"
    arch.write_text(
        "from uniad_plugin.models import digits_cnn\n\ndef five():\n    return digits_cnn(5)\n"
    )
    torch.save(digits_cnn(5).state_dict(), tmp_path / "five.pt")
    torch.save(digits_cnn(10).state_dict(), tmp_path / "ten.pt")
    return tmp_path


def _bad_cases(p: Path) -> dict[str, tuple[list, str]]:
    return {
        "unknown detector": (["--detectors", "Nope"], "unknown detector 'Nope'"),
        "unknown attack": (["--attacks", "pgd"], "unknown attack 'pgd'"),
        "bad budget": (["--attacks", "fgsm@big"], "bad budget"),
        "unknown noise": (["--noise", "pink"], "unknown noise set 'pink'"),
        "unknown ood": (["--ood", "cats"], "unknown OOD set 'cats'"),
        "unknown near ood": (
            ["--near-ood", "cats"],
            "unknown near-OOD set 'cats' (--near-ood): expected names of the run's OOD sets: "
            "letters, photos",
        ),
        "unknown option": (["--frobnicate"], "unrecognized arguments"),
        "bad number": (["--n-ood", "0"], "positive integer"),
        "mnist without root": (["--dataset", "mnist"], "needs --data-root"),
        "missing data root": (
            ["--dataset", "mnist", "--data-root", p / "nowhere"],
            "does not exist; pass --data-root DIR with MNIST/raw inside, or --download",
        ),
        "no MNIST under root": (["--dataset", "mnist", "--data-root", p], "MNIST not found"),
        "real OOD without root": (["--ood", "kmnist"], "needs --data-root"),
        "no CIFAR-10 under root": (
            ["--dataset", "cifar10", "--data-root", p],
            "CIFAR-10 not found: data_batch_1",
        ),
        "missing image folder": (
            ["--dataset", "folder", "--train-dir", p / "nowhere", "--test-dir", p],
            "does not exist",
        ),
        "unknown torchvision model": (
            ["--arch", "torchvision:resnet_nope", "--train"],
            "has no model",
        ),
        "missing model": (["--model", p / "missing.pt"], "model file not found"),
        "output does not match classes": (
            ["--model", p / "five.pt", "--arch", f"{p / 'arch.py'}:five"],
            "expected logits of shape (8, 10)",
        ),
        "weights do not fit": (
            ["--model", p / "ten.pt", "--arch", f"{p / 'arch.py'}:five"],
            "do not fit",
        ),
        "bad arch": (["--model", p / "ten.pt", "--arch", "nomodule_xyz:f"], "cannot import"),
        "bad device": (["--device", "toaster"], "bad device"),
        "own arch, no weights": (
            ["--arch", "uniad_plugin.models:digits_cnn"],
            "your own architecture: pass --model WEIGHTS (its trained weights), --pretrained "
            "(the function returns a trained model) or --train (train it on the ID training data)",
        ),
        "train without arch": (["--train"], "--train applies to --arch only"),
        "model and train": (
            ["--arch", "uniad_plugin.models:digits_cnn", "--model", p / "ten.pt", "--train"],
            "--model and --train exclude each other",
        ),
    }


@pytest.mark.parametrize("case", list(_bad_cases(Path("."))))
def test_bad_arguments_exit_nonzero_with_one_line(case, bad_model_files, capsys, monkeypatch):
    monkeypatch.setenv("UNIAD_CACHE", str(bad_model_files / "cache"))
    args, expected = _bad_cases(bad_model_files)[case]
    code, out, err = _run(["--quiet", "--out", bad_model_files / "out", *args], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("uniad: error: ")
    assert expected in lines[0]
    assert out == ""
    assert not (bad_model_files / "out").exists()
    assert not (bad_model_files / "cache").exists()  # nothing was trained or attacked


def test_library_messages_are_printed_with_the_commands_options():
    message = "X not found; pass root=DIR with x inside, or download=True (or data_root=DIR)"
    assert cli._as_options(message) == (
        "X not found; pass --data-root DIR with x inside, or --download (or --data-root DIR)"
    )
    message = (
        "cannot import 'm' for arch='m:f'; unknown near-OOD set 'a' (near_ood=); "
        "(ood= takes folders); pass device='cuda' or fast=True; see available_detectors(); "
        "my_arch='x' and options.fast=True stay"
    )
    assert cli._as_options(message) == (
        "cannot import 'm' for --arch 'm:f'; unknown near-OOD set 'a' (--near-ood); "
        "(--ood takes folders); pass --device cuda or --fast; see 'uniad --list-detectors'; "
        "my_arch='x' and options.fast=True stay"
    )
    assert cli._as_options("expected arch= as 'm:f'") == "expected --arch as 'm:f'"


def test_arguments_map_onto_one_config():
    from uniad_plugin.benchmark import RunConfig

    args = cli.build_parser().parse_args(
        [
            "--dataset",
            "mnist",
            "--data-root",
            "d",
            "--detectors",
            "KNN",
            "--attacks",
            "fgsm@0.1",
            "--eps-l2",
            "0.5",
            "--noise",
            "--n-test",
            "300",
            "--n-fit",
            "99",
            "--epochs",
            "2",
            "--fast",
            "--seed",
            "5",
            "--out",
            "o",
            "--cache-dir",
            "c",
            "--no-plots",
            "--quiet",
            "--split",
            "validation",
            "--continuous",
            "--no-sanity",
            "--near-ood",
            "fashion_mnist",
        ]
    )
    config = cli.config_from_args(args)
    assert config == RunConfig(
        dataset="mnist",
        data_root="d",
        detectors=["KNN"],
        attacks=["fgsm@0.1"],
        eps={"l2": (0.5,)},
        noise=[],
        n_test=300,
        n_fit=99,
        epochs=2,
        fast=True,
        seed=5,
        out_dir="o",
        cache_dir="c",
        plots=False,
        progress=False,
        split="validation",
        continuous=True,
        sanity=False,
        near_ood=["fashion_mnist"],
    )
    defaults = cli.config_from_args(cli.build_parser().parse_args([]))
    assert defaults == RunConfig()


@pytest.mark.slow
def test_own_architecture_is_trained_only_when_asked(tmp_path):
    """--arch alone stops (command and library); --train trains it; --pretrained uses what the
    factory returns, weights and all, with no training."""
    from uniad_plugin.benchmark import ConfigError, RunConfig
    from uniad_plugin.benchmark.run import _model
    from uniad_plugin.data import digits_splits

    parse = cli.build_parser().parse_args
    with pytest.raises(cli.UsageError, match="pass --model WEIGHTS"):
        cli.config_from_args(parse(["--arch", "uniad_plugin.models:digits_cnn"]))
    own = {"arch": "uniad_plugin.models:digits_cnn", "fast": True, "cache_dir": tmp_path}
    with pytest.raises(ConfigError, match="not trained unless asked"):
        RunConfig(**own).resolve()
    with pytest.raises(ConfigError, match="expected arch with train=True"):
        RunConfig(train=True).resolve()
    with pytest.raises(ConfigError, match="built untrained"):
        RunConfig(arch="torchvision:resnet18", pretrained=True).resolve()
    config = cli.config_from_args(parse(["--arch", "uniad_plugin.models:digits_cnn", "--train"]))
    assert config.train and not config.pretrained
    # a factory that loads its own weights
    trained = digits_cnn().eval()
    torch.save(trained.state_dict(), tmp_path / "own.pt")
    (tmp_path / "own.py").write_text(
        "import torch\nfrom uniad_plugin.models import digits_cnn\n\n\ndef build():\n"
        "    model = digits_cnn()\n"
        f"    model.load_state_dict(torch.load({str(tmp_path / 'own.pt')!r}))\n"
        "    return model\n"
    )
    config = cli.config_from_args(parse(["--arch", f"{tmp_path / 'own.py'}:build", "--pretrained"]))
    splits = digits_splits(0)
    model, info = _model(config.replace(fast=True, cache_dir=tmp_path).resolve(), splits)
    assert info["source"].startswith("pretrained")
    x = splits.test.tensors[0][:4]
    assert torch.equal(model(x), trained(x))
    assert not (tmp_path / "models").exists()  # nothing trained or cached


def test_usage_errors_belong_to_the_command():
    parse = cli.build_parser().parse_args
    with pytest.raises(cli.UsageError, match="needs --data-root"):
        cli.config_from_args(parse(["--dataset", "mnist"]))
    with pytest.raises(cli.UsageError, match="--n-test applies to --dataset mnist, cifar10, "):
        cli.config_from_args(parse(["--n-test", "5"]))
    with pytest.raises(cli.UsageError, match="--dataset cifar10 needs --data-root"):
        cli.config_from_args(parse(["--dataset", "cifar10"]))
    with pytest.raises(cli.UsageError, match="imagenet needs --data-root DIR .*imagenet/train"):
        cli.config_from_args(parse(["--dataset", "imagenet"]))
    assert cli.config_from_args(parse([])).image_size is None  # the data set's own size
    with pytest.raises(cli.UsageError, match="needs --train-dir DIR and --test-dir DIR"):
        cli.config_from_args(parse(["--dataset", "folder", "--train-dir", "a"]))
    with pytest.raises(cli.UsageError, match="apply to --dataset folder only"):
        cli.config_from_args(parse(["--train-dir", "a"]))


@pytest.mark.slow
def test_only_training_images_reach_fit(tmp_path):
    """No ID test, held-out ID or anomaly input reaches a detector's fit: PixelKNN keeps every
    image it was fitted on (the digits' training split is below its sample size)."""
    from uniad_plugin.benchmark import RunConfig, run
    from uniad_plugin.data import digits_splits

    result = run(
        RunConfig(
            fast=True,
            detectors=["MaxSoftmax"],
            attacks=["fgsm"],
            noise=["uniform", "noisy_id"],
            out_dir=None,
            cache_dir=tmp_path,
            progress=False,
        )
    )
    knn = next(e.detector for e in result.benchmark.entries if e.name == "PixelKNN")
    fitted = {tuple(r.tolist()) for r in knn.reference}
    splits = digits_splits(0)
    assert fitted == {tuple(r.tolist()) for r in splits.train.tensors[0].flatten(1)}
    others = [splits.test.tensors[0], splits.val.tensors[0]]
    others += [a.x for a in result.benchmark.anomalies]
    for x in others:
        assert not fitted & {tuple(r.tolist()) for r in x.flatten(1)}


def _kinds(out_dir: Path) -> dict[str, set[str]]:
    """Detector names by anomaly class (OOD, AD, NS, all) of the rows of a run with a number."""
    kinds: dict[str, set[str]] = {}
    for row in _rows(out_dir):
        if row["AUROC"] is not None:
            kinds.setdefault(row["Class"], set()).add(row["Detector"])
    return kinds


#: the small sizes of the end-to-end runs on tiny image data
_TINY = ["--fast", "--detectors", "UniformDetector", "MaxSoftmax", "--attacks", "fgsm@0.3"]
_TINY += ["--n-attack", "10", "--n-noise", "10", "--n-ood", "10", "--no-sanity", "--no-plots"]
_TINY += ["--quiet"]


@pytest.mark.slow
def test_cifar10_end_to_end_on_a_tiny_copy(tmp_path, capsys):
    from tests.image_data import write_tiny_cifar10

    root = write_tiny_cifar10(tmp_path / "data", n_per_batch=20, n_test=300)
    args = ["--dataset", "cifar10", "--data-root", root, "--n-test", "20", *_TINY]
    args += ["--arch", "tests.tiny_models:tiny_rgb_cnn", "--train", "--epochs", "40"]
    code, out, err = _run([*args, "--out", tmp_path / "o", "--cache-dir", tmp_path / "c"], capsys)
    assert code == 0, err
    for name in ("results.json", "results.csv", "table.txt", "table.md"):
        assert (tmp_path / "o" / name).is_file(), name
    meta = json.loads((tmp_path / "o" / "results.json").read_text())["meta"]
    assert meta["dataset"] == "cifar10" and meta["input_shape"] == [3, 32, 32]
    assert (meta["n_train"], meta["n_test"], meta["num_classes"]) == (100, 20, 10)
    kinds = _kinds(tmp_path / "o")
    assert all(kinds[k] == {"UniformDetector", "MaxSoftmax"} for k in ("OOD", "AD", "NS")), kinds
    assert "letters" in out and "fgsm@0.3" in out and "gaussian" in out


@pytest.mark.slow
def test_image_folder_end_to_end_with_a_torchvision_model(tmp_path, capsys):
    from tests.image_data import write_image_folder
    from tests.tiny_models import fitted_resnet18
    from uniad_plugin.data import folder_splits

    train_dir = write_image_folder(tmp_path / "train", n_per_class=10)
    test_dir = write_image_folder(tmp_path / "test", n_per_class=8, seed=1)
    x, y = folder_splits(train_dir, test_dir, image_size=16).train.tensors
    fitted_resnet18(x, y, 2, tmp_path / "r18.pt")
    args = ["--dataset", "folder", "--train-dir", train_dir, "--test-dir", test_dir, *_TINY]
    args += ["--image-size", "16", "--arch", "torchvision:resnet18", "--model", tmp_path / "r18.pt"]
    code, out, err = _run([*args, "--out", tmp_path / "o", "--cache-dir", tmp_path / "c"], capsys)
    assert code == 0, err
    meta = json.loads((tmp_path / "o" / "results.json").read_text())["meta"]
    assert meta["dataset"] == "folder" and meta["input_shape"] == [3, 16, 16]
    assert meta["num_classes"] == 2 and meta["model"]["arch"] == "torchvision:resnet18"
    assert (meta["n_train"], meta["n_test"], meta["n_attack_split"], meta["n_val"]) == (20, 8, 4, 4)
    kinds = _kinds(tmp_path / "o")
    assert all(kinds[k] == {"UniformDetector", "MaxSoftmax"} for k in ("OOD", "AD", "NS")), kinds


_SIBLING = """\
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes=2):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.relu(self.bn1(self.conv1(x)))).flatten(1))
"""

_FACTORY = """\
from {sibling} import Net

from uniad_plugin.models import Normalized


def build():
    return Normalized(Net(), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
"""


@pytest.mark.slow
def test_newcomer_with_a_published_checkpoint_and_own_ood_folder(tmp_path, capsys, monkeypatch):
    """A checkpoint saved as published CIFAR ResNets are ({"state_dict": ..., "best_prec1": ...},
    DataParallel's ``module.`` prefix, the inner network only, trained on normalised inputs),
    a factory in its own folder that imports a module beside it and wraps the network in
    Normalized, folder data and an OOD folder given by path: the run reports the folder under
    its name and prints the classifier's accuracy."""
    import sys

    from tests.image_data import write_image_folder
    from uniad_plugin.data import folder_splits
    from uniad_plugin.models import train_classifier

    train_dir = write_image_folder(tmp_path / "data" / "train", n_per_class=10)
    test_dir = write_image_folder(tmp_path / "data" / "test", n_per_class=8, seed=1)
    ood_dir = tmp_path / "data" / "street_signs"
    ood_dir.mkdir()
    from PIL import Image

    for i, img in enumerate(np.random.default_rng(5).integers(0, 256, (6, 24, 24, 3))):
        Image.fromarray(img.astype(np.uint8)).save(ood_dir / f"sign_{i}.jpg")
    sibling = f"newcomer_models_{tmp_path.name.replace('-', '_')}"
    code_dir = tmp_path / "code"
    code_dir.mkdir()
    (code_dir / f"{sibling}.py").write_text(_SIBLING)
    (code_dir / "factory.py").write_text(_FACTORY.format(sibling=sibling))
    # the newcomer's training, elsewhere: the inner network on normalised inputs, saved
    # through DataParallel with the best accuracy beside it
    monkeypatch.syspath_prepend(str(code_dir))
    net = __import__(sibling).Net()
    sys.modules.pop(sibling)
    x, y = folder_splits(train_dir, test_dir, image_size=16).train.tensors
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset((x - 0.5) / 0.25, y), batch_size=10, shuffle=True
    )
    train_classifier(net, loader, epochs=15, lr=0.01, progress=False)
    saved = {"state_dict": torch.nn.DataParallel(net).state_dict(), "best_prec1": 100.0}
    torch.save(saved, tmp_path / "checkpoint.th")
    sys.path.remove(str(code_dir))  # the command finds the sibling module by itself

    monkeypatch.chdir(tmp_path)
    args = ["--dataset", "folder", "--train-dir", train_dir, "--test-dir", test_dir]
    args += ["--image-size", "16", "--arch", "code/factory.py:build"]
    args += ["--model", "checkpoint.th", "--ood", "data/street_signs", "--fast"]
    args += ["--detectors", "MaxSoftmax", "--attacks", "fgsm@0.3", "--noise", "uniform"]
    args += ["--n-attack", "4", "--n-noise", "10", "--no-sanity", "--no-plots", "--quiet"]
    try:
        code, out, err = _run([*args, "--out", "o", "--cache-dir", "c"], capsys)
    finally:
        sys.modules.pop(sibling, None)
    assert code == 0, err
    assert out.startswith("Classifier accuracy on the 8 ID test images: 1.000 (chance 0.500")
    assert "Warning" not in out and "street_signs" in out
    run_line = "Run: 20 training and 8 ID test images of 3x16x16 on cpu; 1 OOD set, 1 attack at 1 "
    assert run_line + "budget on up to 4 inputs each (4 attacked), 1 noise set; 1 detector." in err
    rows = _rows(tmp_path / "o")
    ood = {r["Dataset"] for r in rows if r["Class"] == "OOD"}
    assert ood == {"street_signs", "mean", "worst"}
    row = next(r for r in rows if r["Dataset"] == "street_signs")
    assert row["N"] == 6 and row["AUROC"] is not None
    meta = json.loads((tmp_path / "o" / "results.json").read_text())["meta"]
    assert meta["model"]["source"] == "checkpoint.th" and meta["test_accuracy"] == 1.0
    assert (tmp_path / "o" / "table.md").read_text().startswith("Classifier accuracy on the 8")
