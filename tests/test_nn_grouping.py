"""The padded class layout that applies per-class weights with one bmm, and its users."""

from __future__ import annotations

import pytest
import torch

from tests.test_nn_svdd import _spheres
from uniad_plugin.nn.grouping import ClassGroups
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
    "k",
    [
        torch.arange(12) % 4,  # every class, one group each
        torch.tensor([3, 1, 3, 3, 1]),  # classes absent
        torch.full((6,), 2),  # one class
        torch.cat([torch.full((40,), 1), torch.tensor([0, 2, 3])]),  # piled onto one class
        torch.tensor([0] * 8 + [1, 2, 3]),  # padding to 8 would take 32 > 2 x 11 slots
        (torch.arange(12) % 4).to(torch.uint8),  # any integer dtype
        (torch.arange(12) % 4).int(),
    ],
    ids=["all", "some", "one", "skewed", "split-at-2N", "uint8", "int32"],
)
def test_gather_then_scatter_gives_every_pair_its_row(k):
    z = torch.randn(len(k), 5)
    groups = ClassGroups(k, 4)
    grouped = groups.gather(z)
    assert grouped.shape == (groups.num_groups, groups.m, 5)
    assert groups.num_groups * groups.m < 2 * len(k)  # bounded padding
    assert torch.equal(groups.scatter(grouped), z)
    # every group holds one class; every class present has at least one group
    assert torch.equal(torch.unique(groups.group_class), torch.unique(k))
    weights = torch.arange(4.0)[:, None].expand(4, 3)
    assert torch.equal(groups.of_classes(weights)[:, 0], groups.group_class.float())
    # every slot of a group, padding included, holds a row of the group's class
    assert torch.equal(k[groups.src].long(), groups.group_class.repeat_interleave(groups.m))


def test_a_batch_piled_onto_one_class_is_split_into_several_groups():
    k = torch.cat([torch.full((97,), 5), torch.arange(5)])  # 102 pairs, 6 classes present
    groups = ClassGroups(k, 10)
    assert groups.m == 17  # the mean count per class present, not 97
    assert groups.group_class.tolist() == [0, 1, 2, 3, 4] + [5] * 6
    assert groups.num_groups * groups.m < 2 * len(k)
    z = torch.randn(len(k), 3)
    assert torch.equal(groups.scatter(groups.gather(z)), z)


def test_pairs_can_share_rows_without_copies():
    z = torch.randn(3, 4)
    rows = torch.tensor([0, 0, 1, 2, 2, 2])
    k = torch.tensor([1, 0, 1, 0, 2, 1])
    groups = ClassGroups(k, 3, rows)
    assert torch.equal(groups.scatter(groups.gather(z)), z[rows])


def test_bad_pairs_are_refused():
    with pytest.raises(ValueError, match="at least one"):
        ClassGroups(torch.empty(0, dtype=torch.long), 3)
    with pytest.raises(ValueError, match=r"classes in \[0, 3\), got 0..5"):
        ClassGroups(torch.tensor([0, 5]), 3)
    with pytest.raises(ValueError, match=r"classes in \[0, 3\), got -1..1"):
        ClassGroups(torch.tensor([1, -1]), 3)
    with pytest.raises(ValueError, match="expected integer classes, got torch.float32"):
        ClassGroups(torch.tensor([0.0, 1.0]), 3)
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


def test_a_class_that_overflows_leaves_the_gradients_of_other_classes_finite():
    spheres = [s.requires_grad_(False) for s in _spheres(3, [4])]
    with torch.no_grad():  # class 2's encoder overflows on every input
        spheres[0].weights[0][2] *= 1e38
        spheres[0].weights[1][2] *= 1e38
    k = torch.tensor([0, 1, 1, 1, 2])  # the groups of classes 0 and 2 are padded
    z = torch.randn(5, 4, requires_grad=True)
    scores = layer_scores(spheres, [z], k)
    assert not torch.isfinite(scores[4, 0]) and torch.isfinite(scores[:4]).all()
    scores[:4].sum().backward()
    assert torch.isfinite(z.grad[:4]).all()  # no padding slot ran their rows under class 2
