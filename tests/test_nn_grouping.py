"""The padded class layout that applies per-class weights with one bmm, and its users."""

from __future__ import annotations

import pytest
import torch

from tests.test_nn_svdd import _spheres
from uniad_plugin.nn.grouping import ClassGroups
from uniad_plugin.nn.rivals import rival_contrast, rival_scores
from uniad_plugin.nn.svdd import layer_scores


def _per_row_embedding(sphere, z, k):
    """Reference: each row through its class's encoder, one row at a time."""
    out = []
    for row, c in zip(z, k.tolist()):
        h = (row - sphere.in_mean) @ sphere.in_proj
        for i, w in enumerate(sphere.weights):
            h = h @ w[c]
            if i < len(sphere.weights) - 1:
                h = torch.nn.functional.leaky_relu(h)
        out.append(h)
    return torch.stack(out)


@pytest.mark.parametrize(
    "k", [torch.arange(12) % 4, torch.tensor([3, 1, 3, 3, 1]), torch.full((6,), 2)]
)
def test_gather_then_scatter_gives_every_pair_its_row(k):
    z = torch.randn(len(k), 5)
    groups = ClassGroups(k, 4)
    grouped = groups.gather(z)
    present = torch.unique(k)
    assert grouped.shape == (len(present), int(torch.bincount(k).max()), 5)
    assert torch.equal(groups.scatter(grouped), z)
    # the weights of the classes present, in class order; all of them as they are
    weights = torch.arange(4.0)[:, None].expand(4, 3)
    assert torch.equal(groups.of_classes(weights)[:, 0], present.float())
    assert (groups.present is None) == (len(present) == 4)
    # every slot of a class's group, padding included, holds a row of that class
    slot_class = present.repeat_interleave(groups.m)
    assert torch.equal(k[groups.src], slot_class)


def test_pairs_can_share_rows_without_copies():
    z = torch.randn(3, 4)
    rows = torch.tensor([0, 0, 1, 2, 2, 2])
    k = torch.tensor([1, 0, 1, 0, 2, 1])
    groups = ClassGroups(k, 3, rows)
    assert torch.equal(groups.scatter(groups.gather(z)), z[rows])


def test_bad_pairs_are_refused():
    with pytest.raises(ValueError, match="at least one"):
        ClassGroups(torch.empty(0, dtype=torch.long), 3)
    with pytest.raises(ValueError, match=r"classes in \[0, 3\), got 5"):
        ClassGroups(torch.tensor([0, 5]), 3)
    with pytest.raises(ValueError, match="expected 2 row indices"):
        ClassGroups(torch.tensor([0, 1]), 3, torch.tensor([0]))


def test_embedding_equals_each_row_through_its_own_encoder():
    sphere = _spheres(5, [6])[0]
    k = torch.tensor([4, 4, 1, 0, 4, 1, 1])  # classes 2 and 3 absent
    z = torch.randn(len(k), 6)
    with torch.no_grad():
        torch.testing.assert_close(sphere.embed(z, k), _per_row_embedding(sphere, z, k))


def test_scores_of_shared_rows_equal_scores_of_copied_rows_with_gradients():
    spheres = [s.requires_grad_(False) for s in _spheres(4, [5, 3])]
    rows = torch.tensor([0, 1, 1, 2, 0, 2, 2])
    k = torch.tensor([3, 0, 2, 2, 1, 3, 0])
    zs = [torch.randn(3, s.in_dim, requires_grad=True) for s in spheres]
    shared = layer_scores(spheres, zs, k, rows=rows)
    copies = [z.detach()[rows].requires_grad_(True) for z in zs]
    copied = layer_scores(spheres, copies, k)
    torch.testing.assert_close(shared, copied)
    shared.sum().backward()
    copied.sum().backward()
    for z, c in zip(zs, copies):  # each row's gradient sums over the pairs that use it
        expected = torch.zeros_like(z).index_add_(0, rows, c.grad)
        torch.testing.assert_close(z.grad, expected)


def test_an_overflowing_row_leaves_the_gradients_of_the_other_rows_finite():
    spheres = [s.requires_grad_(False) for s in _spheres(3, [4])]
    k = torch.tensor([0, 1, 1, 1, 2])  # class 0 and 2 groups are padded
    z = torch.randn(5, 4)
    z[0] = 1e30  # its distance overflows
    z.requires_grad_(True)
    scores = layer_scores(spheres, [z], k)
    assert torch.isinf(scores[0, 0])
    scores[1:].sum().backward()
    assert torch.isfinite(z.grad[1:]).all()


def test_rival_scores_are_the_own_scores_and_the_contrast():
    spheres = _spheres(5, [6, 3])
    g = torch.Generator().manual_seed(3)
    zs = [torch.randn(30, 6, generator=g), torch.randn(30, 3, generator=g)]
    ranked = torch.stack([torch.randperm(5, generator=g)[:3] for _ in range(30)])
    with torch.no_grad():
        own, contrast = rival_scores(spheres, zs, ranked)
        torch.testing.assert_close(own, layer_scores(spheres, zs, ranked[:, 0]))
        torch.testing.assert_close(contrast, rival_contrast(spheres, zs, ranked, own))
        torch.testing.assert_close(contrast, rival_contrast(spheres, zs, ranked))
    empty = rival_scores(spheres, [z[:0] for z in zs], ranked[:0])
    assert [t.shape for t in empty] == [(0, 2), (0, 2)]
