"""The shrunk Gaussian used by ConfoundingGradients."""

from __future__ import annotations

import torch

from uniad_plugin.nn.gaussian import ledoit_wolf, shrunk_gaussian


def test_fixed_shrinkage_and_ledoit_wolf():
    z = torch.randn(200, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mean, precision, shrink = shrunk_gaussian(z, 0.0)
    emp = torch.cov(z.T, correction=0)
    assert shrink == 0.0 and torch.allclose(mean, z.mean(0))
    assert torch.allclose(precision @ emp, torch.eye(4, dtype=torch.float64), atol=1e-6)
    _, _, lw = shrunk_gaussian(z)
    assert 0.0 <= lw <= 1.0 and lw == ledoit_wolf(z)[1]
    _, full, _ = shrunk_gaussian(z, 1.0)  # all shrinkage: a scaled identity
    assert torch.allclose(full, torch.diag(torch.diag(full)))
