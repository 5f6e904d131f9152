"""RunConfig: profiles are values, one place checks a configuration, errors say what was expected."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from uniad_plugin.benchmark import (
    CIFAR10,
    CIFAR10_FAST,
    DEFAULT_ATTACKS,
    DEFAULT_DETECTORS,
    DIGITS,
    DIGITS_FAST,
    FOLDER,
    FOLDER_FAST,
    MNIST,
    MNIST_FAST,
    NOISE_SETS,
    PROFILES,
    ConfigError,
    Profile,
    RunConfig,
    profiles,
    run,
)


def test_profiles_are_frozen_values():
    assert PROFILES == {
        "digits": (DIGITS, DIGITS_FAST),
        "mnist": (MNIST, MNIST_FAST),
        "cifar10": (CIFAR10, CIFAR10_FAST),
        "cifar100": (profiles.CIFAR100, profiles.CIFAR100_FAST),
        "imagenet200": (profiles.IMAGENET200, profiles.IMAGENET200_FAST),
        "imagenet": (profiles.IMAGENET, profiles.IMAGENET_FAST),
        "folder": (FOLDER, FOLDER_FAST),
    }
    assert all(isinstance(p, Profile) for pair in PROFILES.values() for p in pair)
    with pytest.raises(dataclasses.FrozenInstanceError):
        DIGITS.epochs = 1  # type: ignore[misc]
    assert RunConfig().profile is DIGITS
    assert RunConfig(fast=True).profile is DIGITS_FAST
    assert RunConfig(dataset="mnist", data_root=".", fast=True).profile is MNIST_FAST
    # a fast variant shrinks the sizes and keeps the rest
    assert DIGITS_FAST.n_attack == 50 and DIGITS_FAST.arch == DIGITS.arch
    assert MNIST_FAST.n_test == 200 and MNIST_FAST.epochs == 1 and MNIST.n_test == 2000


def test_config_is_frozen_and_replaceable():
    c = RunConfig(seed=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.seed = 4  # type: ignore[misc]
    assert c.replace(seed=4).seed == 4 and c.seed == 3


def test_resolve_fills_in_the_profile():
    plan = RunConfig(cache_dir="/tmp/x").resolve()
    # the model-free sanity baselines join every run
    assert plan.detectors == (*DEFAULT_DETECTORS, "PixelGrid", "PixelCount", "PixelKNN")
    assert RunConfig(sanity=False).resolve().detectors == DEFAULT_DETECTORS
    assert list(plan.attacks) == list(DEFAULT_ATTACKS)
    assert plan.attacks["fgsm"] == (0.1, 0.2) and plan.attacks["cw_l2"] == (1.0,)
    assert plan.noise == NOISE_SETS and plan.ood == ("letters", "photos")
    assert (plan.n_noise, plan.n_ood, plan.n_attack, plan.epochs) == (450, 450, None, 30)
    assert plan.attack_params["cw_l2"]["steps"] == 50
    assert plan.device == torch.device("cpu") and str(plan.cache_dir) == "/tmp/x"
    assert (plan.n_test, plan.attack_split) == (None, None)


def test_resolve_overrides():
    plan = RunConfig(
        fast=True,
        detectors=["knn"],
        attacks=["fgsm", "deepfool", "pgd_l2@3"],
        eps={"l2": (0.7,)},
        noise=["Uniform"],
        ood=["letters"],
        n_noise=9,
        attack_params={"cw_l2": {"steps": 5}},
    ).resolve()
    assert plan.detectors == ("KNN", "PixelGrid", "PixelCount", "PixelKNN")
    # a budget per norm replaces the per-attack defaults of that norm (deepfool is L2)
    assert plan.attacks == {"fgsm": (0.2,), "deepfool": (0.7,), "pgd_l2": (3.0,)}
    assert plan.noise == ("uniform",) and plan.ood == ("letters",) and plan.optional_ood == ()
    assert plan.n_noise == 9 and plan.n_ood == 100
    assert plan.attack_params["cw_l2"] == {**DIGITS_FAST.attack_params["cw_l2"], "steps": 5}


def test_mnist_split_sizes():
    plan = RunConfig(dataset="mnist", data_root=".").resolve()
    assert (plan.n_test, plan.attack_split, plan.n_val, plan.n_attack) == (2000, 1000, 1000, 500)
    assert plan.optional_ood == ("fashion_mnist", "kmnist")
    plan = RunConfig(dataset="mnist", data_root=".", n_test=8000, n_attack=2000).resolve()
    assert (plan.n_test, plan.attack_split, plan.n_val) == (8000, 1000, 1000)
    plan = RunConfig(dataset="mnist", data_root=".", n_test=9500, n_attack=2000).resolve()
    assert (plan.n_test, plan.attack_split, plan.n_val) == (9500, 250, 250)
    # the validation part has half of the test set
    plan = RunConfig(dataset="mnist", data_root=".", split="validation", n_attack=3000).resolve()
    assert (plan.n_test, plan.attack_split, plan.n_val) == (2000, 2000, 1000)
    with pytest.raises(ConfigError, match="n_test <= 9998"):
        RunConfig(dataset="mnist", data_root=".", n_test=9999).resolve()
    plan = RunConfig(dataset="mnist", data_root=".", fast=True, n_attack=2000).resolve()
    assert (plan.n_test, plan.attack_split, plan.n_val) == (200, 50, 200)


def test_validation_split_takes_other_budgets_and_seeds():
    report = RunConfig(dataset="mnist", data_root=".", seed=3).resolve()
    val = RunConfig(dataset="mnist", data_root=".", seed=3, split="validation").resolve()
    assert report.attacks["fgsm"] == (0.1, 0.3) and val.attacks["fgsm"] == (0.15, 0.25)
    assert not set(report.attacks["pgd_l2"]) & set(val.attacks["pgd_l2"])
    assert report.anomaly_seed == 3 and val.anomaly_seed == 1003
    assert report.grid_levels == 255 and RunConfig().resolve().grid_levels == 16
    assert RunConfig(continuous=True).resolve().grid_levels is None
    with pytest.raises(ConfigError, match="split"):
        RunConfig(split="test").resolve()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"dataset": "cifar"},
            r"expected dataset in \('digits', 'mnist', 'cifar10', 'cifar100', .*\), got 'cifar'",
        ),
        ({"device": "toaster"}, "bad device 'toaster'; expected e.g. 'cpu'"),
        ({"detectors": ["Nope"]}, "unknown detector 'Nope'; choose from"),
        ({"detectors": ["KNN", "knn"]}, "detector 'KNN' was given twice"),
        ({"attacks": ["pgd"]}, "unknown attack 'pgd'; choose from fgsm"),
        ({"attacks": ["fgsm@-1"]}, "expected positive finite budgets"),
        ({"noise": ["pink"]}, "unknown noise set 'pink'; choose from gaussian"),
        ({"ood": ["cats"]}, "unknown OOD set 'cats'; choose from letters"),
        ({"n_noise": 0}, "expected n_noise >= 1, got 0"),
        ({"batch_size": 0}, "expected batch_size >= 1, got 0"),
        ({"n_test": 10}, "expected n_test only for a data set without a fixed split"),
        ({"dataset": "mnist"}, "expected data_root"),
        ({"dataset": "cifar10"}, "a folder with cifar-10-batches-py inside"),
        ({"dataset": "folder", "train_dir": "t"}, "expected train_dir and test_dir"),
        ({"image_size": 4}, "expected image_size >= 8"),
        ({"image_size": 64}, "expected image_size only for a data set whose images are resized"),
        ({"ood": ["openood"]}, "needs an ID data set with an OpenOOD benchmark"),
        ({"dataset": "imagenet200"}, "OpenOOD's benchmark_imglist/imagenet200 inside"),
        ({"detectors": []}, "expected at least one detector"),
        ({"attacks": [], "noise": [], "ood": []}, "expected at least one anomaly set"),
        ({"detectors": [], "attacks": [], "noise": [], "ood": []}, "nothing to evaluate"),
    ],
)
def test_bad_configs_raise_config_error(changes, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(**changes).resolve()


def test_config_error_is_a_value_error_of_the_errors_module():
    from uniad_plugin import errors

    assert issubclass(ConfigError, ValueError) and ConfigError is errors.ConfigError


def test_a_run_checks_its_config_before_heavy_work(tmp_path):
    config = RunConfig(detectors=["Nope"], cache_dir=tmp_path, out_dir=tmp_path / "o")
    with pytest.raises(ConfigError, match="unknown detector"):
        run(config)
    assert not (tmp_path / "o").exists() and not (tmp_path / "models").exists()
