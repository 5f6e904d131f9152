"""ClassSpheres: closed-form per-class hyperspheres in the whitened space."""

from __future__ import annotations

import math

import pytest
import torch

from uniad_plugin.nn.spheres import ClassSpheres, class_quantile


def _data(n=600, d=5, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % k
    mix = torch.randn(d, d, generator=g)  # correlated features of different scales
    z = torch.randn(n, d, generator=g) @ mix + 3 * y[:, None].float()
    return z, y


def test_whitened_spheres_are_mahalanobis_balls():
    z, y = _data()
    s = ClassSpheres(3, 5).fit(z, y, nu=0.1, shrinkage=0.0)
    mu = torch.stack([z[y == c].mean(0) for c in range(3)]).double()
    centred = z.double() - mu[y]
    cov = centred.T @ centred / (len(z) - 3)
    inv = torch.linalg.inv(cov)
    diff = z.double()[:, None, :] - mu[None]
    maha = torch.einsum("nkd,de,nke->nk", diff, inv, diff)
    classes = torch.arange(3).expand(len(z), 3)
    torch.testing.assert_close(s.squared_distances(z, classes).double(), maha, rtol=1e-3, atol=1e-3)
    # R^2: the (1 - nu)-quantile (nearest rank) of each class's squared distances
    own = maha.gather(1, y[:, None]).squeeze(1)
    for c in range(3):
        d = own[y == c].sort().values
        assert math.isclose(
            float(s.radius2[c]), float(d[math.ceil(0.9 * len(d)) - 1]), rel_tol=1e-3
        )


def test_raw_spheres_are_class_means_and_store_no_matrix():
    z, y = _data()
    s = ClassSpheres(3, 5, whiten=False).fit(z, y, nu=0.2)
    assert not s.whitened and s.proj.numel() == 0
    means = torch.stack([z[y == c].mean(0) for c in range(3)])
    torch.testing.assert_close(s.center, means)
    inside = (s.ratios(z, y[:, None]).squeeze(1) <= 1).float().mean()
    assert abs(float(inside) - 0.8) < 0.02


def test_fit_is_deterministic_and_gradients_flow():
    z, y = _data()
    a, b = ClassSpheres(3, 5).fit(z, y), ClassSpheres(3, 5).fit(z, y)
    assert all(torch.equal(x, w) for x, w in zip(a.state_dict().values(), b.state_dict().values()))
    q = z[:4].clone().requires_grad_(True)
    a.ratios(q, torch.zeros(4, 2, dtype=torch.long)).sum().backward()
    assert torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0


def test_constant_features_stay_finite():
    z, y = _data()
    z = torch.cat([z, torch.ones(len(z), 2)], dim=1)  # two dead features
    s = ClassSpheres(3, 7).fit(z, y)
    assert torch.isfinite(s.proj).all()
    assert torch.isfinite(s.ratios(z, y[:, None])).all()


def test_bad_inputs_are_refused():
    z, y = _data()
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        ClassSpheres(3, 4).fit(z, y)
    with pytest.raises(ValueError, match=r"rows of every class, got none of \[3\]"):
        ClassSpheres(4, 5).fit(z, y)
    with pytest.raises(ValueError, match="positive"):
        ClassSpheres(0, 5)


def test_class_quantile_is_the_nearest_rank():
    values = torch.tensor([5.0, 1.0, 3.0, 2.0, 10.0, 4.0])
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    torch.testing.assert_close(class_quantile(values, labels, 2, 0.5), torch.tensor([3.0, 4.0]))
