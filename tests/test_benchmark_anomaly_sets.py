"""Anomaly sets by name: attack specs, noise sets, OOD sets, all of a run."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from tests.benchmark_helpers import SHAPE
from uniad_plugin.benchmark import (
    ConfigError,
    build_anomaly_sets,
    load_ood_sets,
    noise_sets,
    parse_attacks,
)


def test_parse_attacks():
    eps = {"linf": (0.1, 0.2), "l2": (1.0,)}
    assert parse_attacks(["fgsm", "cw_l2", "pgd_linf@0.05,0.3"], eps) == {
        "fgsm": (0.1, 0.2),
        "cw_l2": (1.0,),
        "pgd_linf": (0.05, 0.3),
    }
    with pytest.raises(ConfigError, match="unknown attack 'pgd'.*pgd_linf"):
        parse_attacks(["pgd"], eps)
    with pytest.raises(ConfigError, match="bad budget"):
        parse_attacks(["fgsm@x"], eps)
    with pytest.raises(ConfigError, match="bad budget.*8/255"):
        parse_attacks(["fgsm@8/0"], eps)
    with pytest.raises(ConfigError, match="positive"):
        parse_attacks(["fgsm@-1"], eps)
    with pytest.raises(ConfigError, match="twice"):
        parse_attacks(["fgsm", "fgsm@0.3"], eps)


def test_noise_and_ood_sets_by_name():
    data = TensorDataset(torch.rand(30, *SHAPE), torch.zeros(30, dtype=torch.long))
    sets = noise_sets(["uniform", "noisy_id"], SHAPE, data, n=20)
    assert [(s.name, s.kind, len(s)) for s in sets] == [
        ("uniform", "NS", 20),
        ("noisy_id", "NS", 20),
    ]
    ood, notes = load_ood_sets(["letters"], SHAPE, n=10)
    assert [(s.name, s.kind, len(s)) for s in ood] == [("letters", "OOD", 10)] and notes == []
    ood, notes = load_ood_sets(["kmnist"], SHAPE, optional=["kmnist"], n=10)
    assert ood == [] and "kmnist" in notes[0]
    with pytest.raises(ConfigError, match="needs data_root=DIR"):
        load_ood_sets(["kmnist"], SHAPE, n=10)


def test_real_ood_sets_by_split(tmp_path):
    from uniad_plugin.benchmark.anomaly_sets import check_ood_names

    assert check_ood_names(["mnist", "letters"], "folder") == ["mnist", "letters"]
    with pytest.raises(ConfigError, match="'mnist' is the in-distribution data set itself"):
        check_ood_names(["letters", "MNIST"], "mnist")
    # textures has no training split: no validation images apart from the reported ones
    with pytest.raises(ConfigError, match="textures has no training split"):
        load_ood_sets(["textures"], (3, 8, 8), n=4, data_root=tmp_path, split="validation")
    ood, notes = load_ood_sets(
        ["textures"], (3, 8, 8), optional=["textures"], n=4, data_root=tmp_path, split="validation"
    )
    assert ood == [] and "no training split" in notes[0]


def test_build_anomaly_sets_orders_and_checks_keywords(digits_model, digits):
    sets, notes = build_anomaly_sets(
        digits_model,
        digits.attack,
        SHAPE,
        attacks={},
        noise=["gaussian"],
        ood=["photos"],
        n_noise=5,
        n_ood=7,
        seed=1,
    )
    assert [(s.kind, len(s)) for s in sets] == [("OOD", 7), ("NS", 5)] and notes == []
    with pytest.raises(TypeError, match="n_nois"):
        build_anomaly_sets(
            digits_model, digits.attack, SHAPE, attacks={}, noise=[], ood=[], n_nois=3
        )


def test_budgets_as_people_write_them():
    """``pgd_linf@2/255,8/255`` in, ``pgd_linf@8/255`` in the set names; short decimals stay."""
    from uniad_plugin.anomalies.attacks import budget_label

    parsed = parse_attacks(["pgd_linf@2/255,8/255", "pgd_l2@0.5"], {})
    assert parsed == {"pgd_linf": (2 / 255, 8 / 255), "pgd_l2": (0.5,)}
    assert [budget_label(e) for e in parsed["pgd_linf"]] == ["2/255", "8/255"]
    assert [budget_label(e) for e in (0.3, 0.2, 2.0, 0.03, 1.25)] == [
        "0.3",
        "0.2",
        "2",
        "0.03",
        "1.25",
    ]
