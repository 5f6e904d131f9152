"""A3's anomaly VAE."""

from __future__ import annotations

import torch

from uniad_plugin.nn.vae import AnomalyVAE, fit_vae, scaled_vae_dims


def test_scaled_dims():
    assert scaled_vae_dims(784) == ([800, 400, 100], 25)
    assert scaled_vae_dims(64) == ([65, 33, 16], 2)


def test_shapes_loss_and_counter_examples():
    vae = AnomalyVAE((1, 4, 4), [8, 4], 2, bounded=True)
    vae.reset_parameters(torch.Generator().manual_seed(0))
    x = torch.rand(5, 1, 4, 4)
    assert torch.isfinite(vae.loss(x, torch.Generator().manual_seed(0)))
    vae.eval()
    out = vae.counter_examples(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    unbounded = AnomalyVAE((3,), [4], 2, bounded=False)
    assert torch.isfinite(unbounded.loss(torch.randn(4, 3) * 10))


def test_fit_vae_is_seeded_and_frozen():
    x = torch.rand(40, 1, 4, 4)

    def fit():
        return fit_vae(x, 2, 16, torch.device("cpu"), torch.Generator().manual_seed(0), 2)

    a, b = fit(), fit()
    assert not a.training and not any(p.requires_grad for p in a.parameters())
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
