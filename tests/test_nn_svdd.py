"""The batched per-class Deep SVDD: fitting and the shared-grouping scorer."""

from __future__ import annotations

import math

import pytest
import torch

from uniad_plugin.nn.svdd import BatchedSVDD, SVDDTraining, fit_svdd, layer_scores


def _spheres(n_classes: int, dims: list[int], seed: int = 0) -> list[BatchedSVDD]:
    g = torch.Generator().manual_seed(seed)
    spheres = []
    for d in dims:
        s = BatchedSVDD(n_classes, d, (8,), 4)
        s.reset_parameters(g)
        s.in_mean.copy_(torch.randn(d, generator=g))
        s.in_proj.copy_(torch.randn(d, d, generator=g))
        s.center.copy_(torch.randn(n_classes, 4, generator=g))
        s.radius2.copy_(torch.rand(n_classes, generator=g) + 0.5)
        spheres.append(s)
    return spheres


@pytest.mark.parametrize("kind", ["ratio", "difference"])
@pytest.mark.parametrize(
    "labels",
    [
        torch.arange(60) % 5,  # every class
        torch.full((17,), 3),  # a single class
        torch.tensor([4, 0, 4, 4, 0, 0, 4]),  # some classes, unsorted
    ],
    ids=["all", "one", "some"],
)
def test_layer_scores_equal_per_layer_scores(kind, labels):
    spheres = _spheres(5, [3, 7, 2])
    g = torch.Generator().manual_seed(1)
    zs = [torch.randn(len(labels), s.in_dim, generator=g) for s in spheres]
    expected = torch.stack([s.score(z, labels, kind) for s, z in zip(spheres, zs)], dim=1)
    got = layer_scores(spheres, zs, labels, kind)
    assert got.shape == (len(labels), 3)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_scoring_fitted_spheres_folds_the_normalisation_and_tracks_changes():
    spheres = [s.requires_grad_(False) for s in _spheres(4, [5, 3])]
    labels = torch.tensor([3, 0, 1, 1, 2, 3, 0])
    g = torch.Generator().manual_seed(2)
    zs = [torch.randn(len(labels), s.in_dim, generator=g, requires_grad=True) for s in spheres]
    expected = torch.stack([s.score(z, labels) for s, z in zip(spheres, zs)], dim=1)
    got = layer_scores(spheres, zs, labels)  # folded: the weights need no gradient
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5)
    got.sum().backward()  # still differentiable with respect to the activations
    assert all(z.grad is not None and z.grad.abs().sum() > 0 for z in zs)
    with torch.no_grad():  # an in-place change of the normalisation invalidates the fold
        spheres[0].in_mean.add_(1.0)
        spheres[1].weights[0].mul_(2.0)
        expected = torch.stack([s.score(z, labels) for s, z in zip(spheres, zs)], dim=1)
        assert torch.allclose(layer_scores(spheres, zs, labels), expected, rtol=1e-4, atol=1e-5)


def test_layer_scores_empty_batch_bad_kind_and_gradients():
    spheres = _spheres(3, [4, 2])
    assert layer_scores(
        spheres, [torch.empty(0, 4), torch.empty(0, 2)], torch.empty(0).long()
    ).shape == (0, 2)
    with pytest.raises(ValueError, match="expected score kind"):
        layer_scores(spheres, [torch.zeros(2, 4), torch.zeros(2, 2)], torch.zeros(2).long(), "sum")
    zs = [torch.randn(6, 4, requires_grad=True), torch.randn(6, 2, requires_grad=True)]
    layer_scores(spheres, zs, torch.tensor([0, 2, 2, 1, 0, 2])).sum().backward()
    assert all(
        z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0 for z in zs
    )


def test_fit_keeps_about_one_minus_nu_inside():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(600) % 3
    z = torch.randn(600, 5, generator=g) + 3 * y[:, None].float()
    sphere = BatchedSVDD(3, 5, (16,), 4)
    fit_svdd(sphere, z, y, nu=0.1, epochs=20, warmup_epochs=5, generator=g)
    inside = (sphere.score(z, y) <= 1.0).float().mean()
    assert 0.85 <= float(inside) <= 0.95


def test_training_config_object_equals_keywords():
    g = torch.Generator().manual_seed(0)
    z, y = torch.randn(60, 5, generator=g), torch.arange(60) % 3
    a, b = BatchedSVDD(3, 5, (8,), 4), BatchedSVDD(3, 5, (8,), 4)
    fit_svdd(a, z, y, nu=0.2, epochs=3, warmup_epochs=1, generator=torch.Generator().manual_seed(1))
    training = SVDDTraining(nu=0.2, epochs=3, warmup_epochs=1)
    fit_svdd(b, z, y, training, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_encoder_free_spheres_sit_on_the_raw_inputs():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(300) % 3
    z = torch.randn(300, 4, generator=g) + 2 * y[:, None].float()
    sphere = BatchedSVDD(3, 4, (16,), 8, encoder=False)
    assert not sphere.has_encoder and len(list(sphere.parameters())) == 0
    assert (sphere.n_classes, sphere.in_dim, sphere.center.shape) == (3, 4, (3, 4))
    before = g.get_state()
    fit_svdd(sphere, z, y, nu=0.1, generator=g)
    assert torch.equal(g.get_state(), before)  # nothing drawn, nothing trained
    means = torch.stack([z[y == k].mean(0) for k in range(3)])
    assert torch.allclose(sphere.center, means, atol=1e-6)
    d2 = ((z - means[y]) ** 2).sum(1)
    for k in range(3):  # R^2: the (1 - nu)-quantile (nearest rank) of the class's distances
        dk = d2[y == k].sort().values
        assert torch.isclose(sphere.radius2[k], dk[int(math.ceil(0.9 * len(dk))) - 1])
    assert torch.allclose(sphere.score(z, y), d2 / sphere.radius2[y], rtol=1e-5)
    # scored with spheres that have encoders, in one grouping, with gradients
    other = _spheres(3, [5])[0].requires_grad_(False)
    zs = [z[:20].clone().requires_grad_(True), torch.randn(20, 5, generator=g)]
    got = layer_scores([sphere, other], zs, y[:20])
    expected = torch.stack([sphere.score(zs[0], y[:20]), other.score(zs[1], y[:20])], 1)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)
    got[:, 0].sum().backward()
    assert zs[0].grad.abs().sum() > 0
    with pytest.raises(ValueError, match="encoder-free"):
        sphere.folded_input_layer()
