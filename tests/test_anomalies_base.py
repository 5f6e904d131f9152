"""Tests of uniad_plugin.anomalies.base: the AnomalySet container and the value grid."""

from __future__ import annotations

import pytest
import torch

from uniad_plugin.anomalies import DEFAULT_LEVELS, AnomalySet, is_on_grid, to_grid
from uniad_plugin.anomalies.base import grid_name, grid_range, round_adversarial

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


# --------------------------------------------------------------------------- value grid


@pytest.mark.parametrize("levels", [255, 16])
def test_to_grid_rounds_to_nearest_and_clips(levels):
    x = torch.linspace(-0.3, 1.3, 1001)
    g = to_grid(x, levels, (0.0, 1.0))
    assert is_on_grid(g, levels) and g.min() == 0 and g.max() == 1
    inside = (x >= 0) & (x <= 1)
    assert ((g - x)[inside].abs() <= 0.5 / levels + 1e-7).all()
    # bounds that are not grid values: clipped to the grid values nearest inside
    g = to_grid(x, levels, (-0.1, 0.95))
    assert is_on_grid(g, levels) and g.min() >= -0.1 and g.max() <= 0.95
    assert grid_range(levels, (-0.1, 0.95)) == (-(levels // 10), int(0.95 * levels))
    assert torch.equal(to_grid(x, None, (0.0, 1.0)), x.clamp(0, 1))
    assert DEFAULT_LEVELS == 255 and grid_name("a", None) == "a (continuous)"
    assert grid_name("a", 16) == "a"
    assert not is_on_grid(torch.tensor([0.5]), 255) and is_on_grid(torch.tensor([0.5]), 16)
    with pytest.raises(ValueError, match="expected bounds .* to contain"):
        grid_range(4, (0.3, 0.4))


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("linf", 0.02), ("l2", 0.5), ("l2", 0.05)])
def test_round_adversarial_stays_within_budget(norm, eps):
    gen = torch.Generator().manual_seed(0)
    src = torch.randint(0, 256, (64, 1, 6, 6), generator=gen).float() / 255
    delta = torch.randn(src.shape, generator=gen)
    if norm == "linf":
        delta = eps * delta.sign()
    else:
        delta = eps * delta / delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    adv = (src + delta).clamp(0, 1)
    r = round_adversarial(adv, src, eps=eps, norm=norm, levels=255, bounds=(0.0, 1.0))
    assert is_on_grid(r, 255) and r.min() >= 0 and r.max() <= 1
    d = (r - src).flatten(1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    assert (size <= eps * (1 + 1e-6)).all()
    # nearest rounding, or towards the source where that leaves the budget: within one step
    assert ((r - adv).abs() <= 1 / 255 + 1e-7).all()
