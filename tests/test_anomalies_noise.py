"""Tests of uniad_plugin.anomalies.noise: noise sets on the value grid."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from uniad_plugin.anomalies import (
    NoiseSet,
    gaussian_noise,
    is_on_grid,
    noisy_id,
    salt_and_pepper,
    uniform_noise,
)

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


@pytest.mark.parametrize("levels", [255, 16])
def test_every_noise_set_is_on_the_grid(digits, levels):
    sets = [make(200, (3, 8, 8), seed=0, levels=levels) for make in NOISES.values()]
    sets.append(noisy_id(digits.test, sigma=0.5, seed=0, max_samples=100, levels=levels))
    sets.append(salt_and_pepper(50, (1, 8, 8), background=0.3, levels=levels))
    for s in sets:
        assert is_on_grid(s.x, levels), s.name
        assert s.info["grid_levels"] == levels and s.grid_levels == levels
        assert "continuous" not in s.name
    # bounds that are not grid values: the grid values inside them
    s = gaussian_noise(200, (1, 8, 8), bounds=(-0.1, 0.95), levels=levels)
    assert is_on_grid(s.x, levels) and s.x.min() >= -0.1 and s.x.max() <= 0.95
    # uniform on the grid: every grid value drawn, with equal frequency
    u = uniform_noise(2000, (1, 8, 8), levels=16)
    counts = torch.unique(u.x, return_counts=True)[1]
    assert len(counts) == 17 and counts.min() > 0.8 * counts.float().mean()


def test_continuous_noise_is_opt_in_and_labelled(digits):
    sets = [make(100, (1, 8, 8), seed=0, levels=None) for make in NOISES.values()]
    sets.append(noisy_id(digits.test, seed=0, max_samples=50, levels=None))
    for s in sets:
        assert s.name.endswith(" (continuous)") and s.info["grid_levels"] is None
        assert not is_on_grid(s.x, 255)
    assert salt_and_pepper(10, (1, 8, 8), levels=None).info["background"] == 0.5
    with pytest.raises(ValueError, match="expected levels"):
        gaussian_noise(4, (1, 8, 8), levels=0)
    with pytest.raises(ValueError, match="expected levels"):
        noisy_id(digits.test, levels=2.5)


def test_noise_statistics():
    g = gaussian_noise(2000, (1, 8, 8), mean=0.5, std=0.1)
    assert g.x.mean().item() == pytest.approx(0.5, abs=0.01)
    assert g.x.std().item() == pytest.approx(0.1, abs=0.01)
    u = uniform_noise(2000, (1, 8, 8), bounds=(-1.0, 1.0))
    assert u.x.mean().item() == pytest.approx(0.0, abs=0.01)
    assert u.x.var().item() == pytest.approx(4 / 12, abs=0.01)
    sp = salt_and_pepper(2000, (3, 8, 8), amount=0.3)
    values = set(sp.x.unique().tolist())
    mid = torch.tensor(128.0) / 255  # the grid value nearest 0.5, in float32
    assert values == {0.0, mid.item(), 1.0}
    assert (sp.x != mid).float().mean().item() == pytest.approx(0.3, abs=0.01)
    assert sp.info["background"] == pytest.approx(128 / 255)
    assert (sp.x[:, 1:] == sp.x[:, :1]).all()  # a noisy location is noisy in every channel


def test_noisy_id(digits):
    x = digits.test.tensors[0]
    s = noisy_id(DataLoader(digits.test, batch_size=50), sigma=0.5, seed=0, max_samples=120)
    assert s.kind == "NS" and s.name == "noisy_id" and s.x.shape == (120, 1, 8, 8)
    assert s.x.min() >= 0 and s.x.max() <= 1
    assert torch.equal(s.x, noisy_id(digits.test, sigma=0.5, seed=0, max_samples=120).x)
    assert not torch.equal(s.x, noisy_id(digits.test, sigma=0.5, seed=1, max_samples=120).x)
    # noise is added to the ID images (in order), clipped and rounded: residual std below sigma
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
