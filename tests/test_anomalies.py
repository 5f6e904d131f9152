"""Tests of uniad_plugin.anomalies: adversarial, noise and OOD sets."""

from __future__ import annotations

import copy
import os
import pickle
import string
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from uniad_plugin.anomalies import (
    ATTACKS,
    OOD_DATASETS,
    AdversarialSet,
    AnomalySet,
    AttackSpec,
    NoiseSet,
    OODSet,
    font_letters,
    gaussian_noise,
    load_ood,
    make_adversarial,
    noisy_id,
    photo_patches,
    salt_and_pepper,
    uniform_noise,
)
from uniad_plugin.anomalies import adversarial as adv_module

# --------------------------------------------------------------------------- AnomalySet


def test_anomaly_set_items_and_validation():
    x = torch.rand(5, 1, 4, 4)
    s = AnomalySet(x, "NS", "demo", {"a": [1, 2]})
    assert len(s) == 5 and s.shape == (1, 4, 4)
    xi, yi = s[3]
    assert torch.equal(xi, x[3]) and yi == -1 and isinstance(yi, int)
    xb, yb = next(iter(s.loader(batch_size=5)))
    assert torch.equal(xb, x) and torch.equal(yb, torch.full((5,), -1))
    assert AnomalySet(torch.zeros(0, 3, 2, 2), "AD", "empty").shape == (3, 2, 2)
    with pytest.raises(ValueError, match="kind"):
        AnomalySet(x, "XX", "demo")
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        AnomalySet(torch.rand(5, 4, 4), "OOD", "demo")
    with pytest.raises(TypeError, match="floating-point"):
        AnomalySet(torch.zeros(5, 1, 4, 4, dtype=torch.long), "OOD", "demo")
    with pytest.raises(ValueError, match="name"):
        AnomalySet(x, "OOD", "")
    with pytest.raises(TypeError, match="JSON"):
        AnomalySet(x, "OOD", "demo", {"t": torch.zeros(1)})


# --------------------------------------------------------------------------- adversarial

#: small budgets of every attack for the 8x8 digits; CW/DeepFool/PGD with few steps (fast)
ATTACK_CASES = {
    "fgsm": (0.3, None),
    "pgd_linf": (0.2, {"steps": 10}),
    "pgd_l2": (1.5, {"steps": 10}),
    "deepfool": (1.5, {"steps": 10}),
    "cw_l2": (1.5, {"steps": 20, "binary_search_steps": 2, "initial_const": 1.0}),
}


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@torch.no_grad()
def _pred(model, x):
    return model(x).argmax(1)


def test_attack_names():
    assert sorted(ATTACKS) == sorted(ATTACK_CASES)
    assert {spec.norm for spec in ATTACKS.values()} == {"linf", "l2"}


@pytest.mark.parametrize("attack", sorted(ATTACK_CASES))
def test_make_adversarial_keeps_only_successful(digits, digits_model, attack):
    eps, params = ATTACK_CASES[attack]
    before = _state(digits_model)
    grads = [p.requires_grad for p in digits_model.parameters()]
    s = make_adversarial(
        digits_model,
        digits.attack,
        attack,
        eps,
        max_samples=48,
        progress=False,
        attack_params=params,
    )
    assert isinstance(s, AdversarialSet) and s.kind == "AD" and s.name == f"{attack}@{eps:g}"
    assert len(s) > 0, f"{attack} produced no successful adversarial"
    assert s.x.shape == (len(s), 1, 8, 8) and s.x.dtype == torch.float32
    assert s.x.min() >= 0.0 and s.x.max() <= 1.0
    # every kept sample fools the model, its clean source did not
    assert (_pred(digits_model, s.x) != s.source_labels).all()
    assert torch.equal(_pred(digits_model, s.clean), s.source_labels)
    assert torch.equal(_pred(digits_model, s.x), s.adv_pred)
    delta = (s.x - s.clean).flatten(1)
    size = delta.abs().amax(1) if ATTACKS[attack].norm == "linf" else delta.norm(dim=1)
    assert (size <= eps + 1e-5).all() and (size > 0).all()
    assert all(s[i][1] == -1 for i in range(len(s)))
    info = s.info
    assert info["attack"] == attack and info["eps"] == eps
    assert info["n_attacked"] == 48 and info["n_success"] == len(s)
    assert s.success_rate == pytest.approx(len(s) / 48)
    assert info["source_labels"] == s.source_labels.tolist()
    assert info["adv_pred"] == s.adv_pred.tolist()
    assert info["mean_linf"] == pytest.approx(delta.abs().amax(1).mean().item(), rel=1e-5)
    assert info["mean_l2"] == pytest.approx(delta.norm(dim=1).mean().item(), rel=1e-5)
    # the model is left untouched
    assert not digits_model.training
    assert [p.requires_grad for p in digits_model.parameters()] == grads
    assert all(torch.equal(before[k], v) for k, v in digits_model.state_dict().items())


def test_fgsm_linf_budget_is_exact(digits, digits_model):
    # FGSM moves every pixel by exactly eps unless the bounds clip it
    s = make_adversarial(digits_model, digits.attack, "fgsm", 0.3, progress=False, max_samples=32)
    d = (s.x - s.clean).abs()
    at_bound = (s.x == 0) | (s.x == 1)
    assert torch.allclose(d[~at_bound], torch.full_like(d[~at_bound], 0.3), atol=1e-5)


def test_adversarial_restores_training_mode_and_rng(digits, digits_model):
    model = copy.deepcopy(digits_model).train()
    model[1].eval()  # a mixed state must survive too
    rng = torch.get_rng_state()
    make_adversarial(model, digits.attack, "pgd_linf", 0.1, progress=False, max_samples=8)
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training and not model[1].training and model[0].training


def test_pgd_deterministic_under_seed(digits, digits_model):
    kw = {"progress": False, "max_samples": 32, "attack_params": {"steps": 5}}
    loader = DataLoader(digits.attack, batch_size=16, shuffle=False)
    a = make_adversarial(digits_model, loader, "pgd_linf", 0.2, seed=3, **kw)
    b = make_adversarial(digits_model, digits.attack, "pgd_linf", 0.2, seed=3, **kw)
    c = make_adversarial(digits_model, digits.attack, "pgd_linf", 0.2, seed=4, **kw)
    assert torch.equal(a.x, b.x) and torch.equal(a.source_labels, b.source_labels)
    assert not (a.x.shape == c.x.shape and torch.equal(a.x, c.x))


def test_adversarial_cache(digits, digits_model, tmp_path, monkeypatch):
    kw = {"progress": False, "max_samples": 16, "cache_dir": tmp_path}
    first = make_adversarial(digits_model, digits.attack, "fgsm", 0.2, **kw)
    files = list(tmp_path.glob("*.pt"))
    assert len(files) == 1 and len(files[0].stem) == 64

    def boom(*args, **kwargs):
        raise AssertionError("attack ran although the result is cached")

    monkeypatch.setattr(adv_module, "_run_attack", boom)
    second = make_adversarial(digits_model, digits.attack, "fgsm", 0.2, **kw)
    assert torch.equal(first.x, second.x) and torch.equal(first.clean, second.clean)
    assert torch.equal(first.source_labels, second.source_labels)
    assert first.info == second.info and second.name == "fgsm@0.2" and second.kind == "AD"
    # every ingredient of the key changes it: eps, seed, params, data, model weights
    with pytest.raises(AssertionError, match="cached"):
        make_adversarial(digits_model, digits.attack, "fgsm", 0.25, **kw)
    with pytest.raises(AssertionError, match="cached"):
        make_adversarial(digits_model, digits.attack, "fgsm", 0.2, seed=1, **kw)
    with pytest.raises(AssertionError, match="cached"):
        make_adversarial(
            digits_model, digits.attack, "fgsm", 0.2, attack_params={"random_start": True}, **kw
        )
    x, y = digits.attack.tensors
    with pytest.raises(AssertionError, match="cached"):
        make_adversarial(digits_model, TensorDataset(x.flip(0), y.flip(0)), "fgsm", 0.2, **kw)
    other = copy.deepcopy(digits_model)
    with torch.no_grad():
        other[-1].bias.add_(1e-3)
    with pytest.raises(AssertionError, match="cached"):
        make_adversarial(other, digits.attack, "fgsm", 0.2, **kw)


class _FakeAttack:
    """Returns fixed 'adversarials' for every input, to test the success filter."""

    def __init__(self, make):
        self.make = make

    def __call__(self, fmodel, x, y, *, epsilons):
        raw, clipped = self.make(x)
        return raw, clipped, torch.ones(len(x), dtype=torch.bool)


def _fake_spec(make):
    class _Spec(AttackSpec):
        def build(self, params):
            return _FakeAttack(make)

    return _Spec("none", "linf", {})


@pytest.mark.parametrize(
    "make",
    [
        # C&W's failure marker: raw all zero; its projection onto the eps-ball (here the raw
        # itself, with a huge eps) fools the model for most labels but must be dropped
        lambda x: (torch.zeros_like(x), torch.zeros_like(x)),
        lambda x: (x, torch.full_like(x, float("nan"))),  # non-finite
        lambda x: (x, (1 - x)),  # far outside the budget eps = 0.5 (L-inf)
    ],
    ids=["cw_all_zero", "nan", "outside_eps"],
)
def test_failures_are_dropped(digits, digits_model, monkeypatch, make):
    x = digits.attack.tensors[0][:64]
    eps = 100.0 if make(x)[0].abs().sum() == 0 else 0.5
    # check that without the filter these outputs would count as successes
    if not torch.isnan(make(x)[1]).any():
        assert (_pred(digits_model, make(x)[1]) != digits.attack.tensors[1][:64]).any()
    monkeypatch.setitem(ATTACKS, "fgsm", _fake_spec(make))
    s = make_adversarial(digits_model, digits.attack, "fgsm", eps, progress=False, max_samples=64)
    assert len(s) == 0 and s.info["n_success"] == 0 and s.info["n_attacked"] == 64
    assert s.success_rate == 0.0 and s.info["mean_l2"] is None and s.x.shape == (0, 1, 8, 8)


def test_adversarial_bad_inputs(digits, digits_model):
    data = digits.attack
    with pytest.raises(ValueError, match="unknown attack 'nope'.*fgsm"):
        make_adversarial(digits_model, data, "nope", 0.1)
    for eps in (0, -0.1, 0.0, float("nan")):
        with pytest.raises(ValueError, match="eps"):
            make_adversarial(digits_model, data, "fgsm", eps)
    with pytest.raises(ValueError, match="unknown attack_params.*steps"):
        make_adversarial(digits_model, data, "pgd_linf", 0.1, attack_params={"stepz": 3})
    x, y = data.tensors
    with pytest.raises(ValueError, match="within bounds"):
        make_adversarial(digits_model, TensorDataset(x * 2, y), "fgsm", 0.1)
    with pytest.raises(ValueError, match="bounds"):
        make_adversarial(digits_model, data, "fgsm", 0.1, bounds=(1.0, 0.0))
    with pytest.raises(TypeError, match="nn.Module"):
        make_adversarial(lambda t: t, data, "fgsm", 0.1)
    with pytest.raises(TypeError, match="Dataset or DataLoader"):
        make_adversarial(digits_model, [x, y], "fgsm", 0.1)


# --------------------------------------------------------------------------- noise

NOISES = {
    "gaussian": gaussian_noise,
    "uniform": uniform_noise,
    "salt_pepper": salt_and_pepper,
}


@pytest.mark.parametrize("name", sorted(NOISES))
@pytest.mark.parametrize("bounds", [(0.0, 1.0), (-1.0, 2.0)])
def test_noise_sets(name, bounds):
    make = NOISES[name]
    s = make(300, (3, 8, 6), seed=1, bounds=bounds)
    assert isinstance(s, NoiseSet) and s.kind == "NS" and s.name == name
    assert s.x.shape == (300, 3, 8, 6) and s.x.dtype == torch.float32
    assert s.x.min() >= bounds[0] and s.x.max() <= bounds[1]
    assert s[0][1] == -1
    assert s.x.std() > 0.1
    assert torch.equal(s.x, make(300, (3, 8, 6), seed=1, bounds=bounds).x)
    assert not torch.equal(s.x, make(300, (3, 8, 6), seed=2, bounds=bounds).x)


def test_noise_statistics():
    g = gaussian_noise(2000, (1, 8, 8), mean=0.5, std=0.1)
    assert g.x.mean().item() == pytest.approx(0.5, abs=0.01)
    assert g.x.std().item() == pytest.approx(0.1, abs=0.01)
    u = uniform_noise(2000, (1, 8, 8), bounds=(-1.0, 1.0))
    assert u.x.mean().item() == pytest.approx(0.0, abs=0.01)
    assert u.x.var().item() == pytest.approx(4 / 12, abs=0.01)
    sp = salt_and_pepper(2000, (3, 8, 8), amount=0.3)
    values = set(sp.x.unique().tolist())
    assert values == {0.0, 128 / 255, 1.0}
    assert (sp.x != 0.5).float().mean().item() == pytest.approx(0.3, abs=0.01)
    assert (sp.x[:, 1:] == sp.x[:, :1]).all()  # a noisy location is noisy in every channel


def test_noisy_id(digits):
    x = digits.test.tensors[0]
    s = noisy_id(DataLoader(digits.test, batch_size=50), sigma=0.5, seed=0, max_samples=120)
    assert s.kind == "NS" and s.name == "noisy_id" and s.x.shape == (120, 1, 8, 8)
    assert s.x.min() >= 0 and s.x.max() <= 1
    assert torch.equal(s.x, noisy_id(digits.test, sigma=0.5, seed=0, max_samples=120).x)
    assert not torch.equal(s.x, noisy_id(digits.test, sigma=0.5, seed=1, max_samples=120).x)
    # noise is added to the ID images (in order), clipped: residual std well below sigma
    resid = s.x - x[:120]
    assert 0.2 < resid.std().item() < 0.5
    assert len(noisy_id(digits.test)) == len(digits.test)


def test_noise_bad_inputs(digits):
    for shape in [(8, 8), (1, 0, 8), "abc", (1.0, 8, 8), (1, 8, 8, 1)]:
        with pytest.raises(ValueError, match=r"\(C, H, W\)"):
            gaussian_noise(4, shape)
    for n in (0, -3, 2.5):
        with pytest.raises(ValueError, match="n"):
            uniform_noise(n, (1, 8, 8))
    with pytest.raises(ValueError, match="std"):
        gaussian_noise(4, (1, 8, 8), std=-1)
    with pytest.raises(ValueError, match="amount"):
        salt_and_pepper(4, (1, 8, 8), amount=1.5)
    with pytest.raises(ValueError, match="bounds"):
        uniform_noise(4, (1, 8, 8), bounds=(1.0, 1.0))
    with pytest.raises(ValueError, match="sigma"):
        noisy_id(digits.test, sigma=0)


# --------------------------------------------------------------------------- offline OOD


@pytest.mark.parametrize("make,name", [(font_letters, "letters"), (photo_patches, "photos")])
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 20, 12)])
def test_offline_ood_sets(make, name, shape):
    s = make(200, shape, seed=0)
    assert isinstance(s, OODSet) and s.kind == "OOD" and s.name == name
    assert s.x.shape == (200, *shape) and s.x.dtype == torch.float32
    assert s.x.min() >= 0 and s.x.max() <= 1 and s[5][1] == -1
    flat = s.x.flatten(1)
    contrast = flat.amax(1) - flat.amin(1)
    if name == "letters":  # white glyph on black
        assert torch.allclose(contrast, torch.ones(200))
    else:  # smooth regions (sky) give low-contrast crops, but none is constant
        assert (contrast > 0.01).all() and (contrast > 0.1).float().mean() > 0.8
    # images differ from each other
    assert torch.unique(flat, dim=0).shape[0] == 200
    assert torch.equal(s.x, make(200, shape, seed=0).x)
    assert not torch.equal(s.x, make(200, shape, seed=1).x)
    if shape[0] == 3:
        gray = make(200, (1, *shape[1:]), seed=0).x
        if name == "letters":  # white glyphs: identical channels
            assert torch.equal(s.x, gray.expand_as(s.x))
        else:  # RGB photos become luminance
            luma = torch.einsum("nchw,c->nhw", s.x, torch.tensor([0.299, 0.587, 0.114]))
            assert torch.allclose(luma.unsqueeze(1), gray, atol=1e-5)
    json_ok = s.info  # JSON-serialisable, checked by AnomalySet
    assert json_ok["n"] == 200


def test_letters_look_like_mnist():
    s = font_letters(300, (1, 28, 28), seed=0)
    assert len(s.chars) == 300 and set(s.chars) <= set(string.ascii_letters)
    assert len(set(s.chars)) > 40
    x = s.x[:, 0]
    assert torch.allclose(x.amax((1, 2)), torch.ones(300))  # white glyph
    border = torch.cat([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], 1)
    assert border.mean() < 0.05  # on black, glyph inside the frame
    assert 0.05 < x.mean() < 0.4  # a stroke, not a blob
    assert len(s.info["fonts"]) >= 10


def test_offline_ood_bad_inputs():
    for make in (font_letters, photo_patches):
        with pytest.raises(ValueError, match="channels"):
            make(3, (2, 8, 8))
        with pytest.raises(ValueError, match=r"\(C, H, W\)"):
            make(3, (8, 8))
        with pytest.raises(ValueError, match="n"):
            make(0, (1, 8, 8))


# --------------------------------------------------------------------------- real OOD loaders


def _write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array in the IDX format of the MNIST family (big-endian header)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _fake_mnist_like(root: Path, folder: str, n_test: int = 30, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    test = rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8)
    raw = root / folder / "raw"
    _write_idx(raw / "train-images-idx3-ubyte", rng.integers(0, 256, (4, 28, 28)))
    _write_idx(raw / "train-labels-idx1-ubyte", rng.integers(0, 10, 4))
    _write_idx(raw / "t10k-images-idx3-ubyte", test)
    _write_idx(raw / "t10k-labels-idx1-ubyte", rng.integers(0, 10, n_test))
    return test


def _expected(images: np.ndarray, shape) -> torch.Tensor:
    """Reference conversion: (N, C, h, w) uint8 -> resized float (N, C', H, W)."""
    x = torch.from_numpy(images).float() / 255
    x = F.interpolate(x, size=shape[1:], mode="bilinear", antialias=True, align_corners=False)
    x = x.clamp(0, 1)
    if shape[0] == 3 and x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if shape[0] == 1 and x.shape[1] == 3:
        x = torch.einsum("nchw,c->nhw", x, torch.tensor([0.299, 0.587, 0.114])).unsqueeze(1)
    return x


@pytest.mark.parametrize("name,folder", [("fashion_mnist", "FashionMNIST"), ("kmnist", "KMNIST")])
def test_load_mnist_like_from_files(tmp_path, name, folder):
    test = _fake_mnist_like(tmp_path, folder)
    s = load_ood(name, tmp_path, (1, 8, 8))
    assert isinstance(s, OODSet) and s.kind == "OOD" and s.name == name
    assert s.x.shape == (30, 1, 8, 8) and s[0][1] == -1
    assert torch.allclose(s.x, _expected(test[:, None], (1, 8, 8)), atol=1e-5)
    rgb = load_ood(name, str(tmp_path), (3, 28, 28))
    assert torch.allclose(
        rgb.x, torch.from_numpy(test).float()[:, None].expand(-1, 3, -1, -1) / 255
    )
    sub = load_ood(name, tmp_path, (1, 8, 8), n=10, seed=2)
    assert len(sub) == 10 and torch.equal(
        sub.x, load_ood(name, tmp_path, (1, 8, 8), n=10, seed=2).x
    )
    assert not torch.equal(sub.x, load_ood(name, tmp_path, (1, 8, 8), n=10, seed=3).x)
    # the subset is made of rows of the full set
    assert all((s.x.flatten(1) == row).all(1).any() for row in sub.x.flatten(1))
    with pytest.raises(ValueError, match="n <= 30"):
        load_ood(name, tmp_path, (1, 8, 8), n=31)


def test_load_emnist_letters_transposes(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6, 28, 28), dtype=np.uint8)
    raw = tmp_path / "EMNIST" / "raw"
    _write_idx(raw / "emnist-letters-test-images-idx3-ubyte", images)
    _write_idx(raw / "emnist-letters-test-labels-idx1-ubyte", rng.integers(1, 27, 6))
    s = load_ood("emnist_letters", tmp_path, (1, 28, 28))
    expected = torch.from_numpy(images).float().transpose(1, 2)[:, None] / 255
    assert torch.allclose(s.x, expected)


def test_load_cifar10_from_pickles(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as cifar

    # the real files are checked against md5 sums; accept our fake files by existence
    monkeypatch.setattr(cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    test = rng.integers(0, 256, size=(12, 3, 32, 32), dtype=np.uint8)
    for fname, data in [(f"data_batch_{i}", test[:2]) for i in range(1, 6)] + [
        ("test_batch", test)
    ]:
        entry = {"data": data.reshape(len(data), -1), "labels": [0] * len(data)}
        (folder / fname).write_bytes(pickle.dumps(entry))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": list("abcdefghij")}))
    s = load_ood("cifar10", tmp_path, (1, 16, 16))
    assert s.x.shape == (12, 1, 16, 16)
    assert torch.allclose(s.x, _expected(test, (1, 16, 16)), atol=1e-5)
    rgb = load_ood("cifar10", tmp_path, (3, 32, 32))
    assert torch.allclose(rgb.x, torch.from_numpy(test).float() / 255)
    # non-square target: centre crop to the aspect ratio, then resize
    wide = load_ood("cifar10", tmp_path, (3, 8, 16))
    ref = _expected(test[:, :, 8:24, :], (3, 8, 16))
    assert torch.allclose(wide.x, ref, atol=1e-5)


def test_load_ood_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown OOD data set 'mnist2'.*fashion_mnist"):
        load_ood("mnist2", tmp_path, (1, 8, 8))
    for name in OOD_DATASETS:
        with pytest.raises(FileNotFoundError, match="download=True") as err:
            load_ood(name, tmp_path / "nowhere", (1, 8, 8))
        assert str(tmp_path / "nowhere") in str(err.value)
    _fake_mnist_like(tmp_path, "KMNIST")
    with pytest.raises(ValueError, match="channels"):
        load_ood("kmnist", tmp_path, (2, 8, 8))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        load_ood("kmnist", tmp_path, (8, 8))
    with pytest.raises(ValueError, match="n"):
        load_ood("kmnist", tmp_path, (1, 8, 8), n=0)
    # present but broken files: a clear error, not a crash deep inside torchvision
    (tmp_path / "KMNIST" / "raw" / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03")
    with pytest.raises(ValueError, match="could not load the files under root"):
        load_ood("kmnist", tmp_path, (1, 8, 8))
