"""Rival classes and the contrast of a row's predicted-class sphere with its rivals' spheres."""

from __future__ import annotations

import pytest
import torch

from tests.test_nn_svdd import _spheres
from uniad_plugin.nn.rivals import as_ranked, compact_ranking, ranked_classes, rival_contrast
from uniad_plugin.nn.svdd import BatchedSVDD


def test_ranked_classes_are_the_argmax_then_the_next_by_logit():
    logits = torch.tensor([[0.1, 3.0, 2.0, -1.0], [5.0, 5.0, 1.0, 2.0]])
    assert ranked_classes(logits, 2).tolist() == [[1, 2, 0], [0, 1, 3]]
    assert ranked_classes(logits, 9).shape == (2, 4)  # at most K - 1 rivals
    assert ranked_classes(logits, 0).tolist() == [[1], [0]]


def test_as_ranked_from_logits_ranked_classes_and_predicted_classes():
    logits = torch.tensor([[0.1, 3.0, 2.0, -1.0]])
    assert as_ranked(logits, 4, 1).tolist() == [[1, 2]]
    # any 2-D tensor of K columns is logits, whatever its dtype (one-hot, quantised)
    assert as_ranked(torch.tensor([[0, 3, 1, 2]]), 4, 1).tolist() == [[1, 3]]
    assert as_ranked(torch.tensor([[1, 2, 0]]), 4, 2).tolist() == [[1, 2, 0]]
    assert as_ranked(torch.tensor([[1, 2, 0]]), 4, 1).tolist() == [[1, 2]]
    # predicted classes only: enough where no ranking is needed
    assert as_ranked(torch.tensor([2, 0]), 4, 3).tolist() == [[2, 0, 1, 3], [0, 1, 2, 3]]
    assert as_ranked(torch.tensor([2, 0]), 4, 9).shape == (2, 4)
    assert as_ranked(torch.tensor([2, 0]), 4, 0).tolist() == [[2], [0]]
    with pytest.raises(ValueError, match=r"expected logits \(B, 4\) to rank 1 rival"):
        as_ranked(torch.tensor([2, 0]), 4, 1)
    with pytest.raises(ValueError, match="to rank 2 rival classes .* got 1 ranked rival"):
        as_ranked(torch.tensor([[1, 2]]), 4, 2)
    with pytest.raises(ValueError, match="expected logits of 4 classes"):
        as_ranked(torch.zeros(2, 3), 4, 1)
    with pytest.raises(ValueError, match=r"got shape \(2, 0\)"):
        as_ranked(torch.zeros(2, 0, dtype=torch.long), 4, 1)


def test_compact_ranking_is_narrower_than_the_logits():
    logits = torch.tensor([[0.1, 3.0, 2.0, -1.0], [5.0, 4.0, 1.0, 2.0]])
    assert compact_ranking(logits, 1).tolist() == [[1, 2], [0, 1]]
    assert compact_ranking(logits, 2).shape == (2, 3)
    assert compact_ranking(logits, 3).tolist() == [1, 0]  # every other class: no ranking
    assert compact_ranking(logits, 0).tolist() == [1, 0]
    for rivals in range(5):  # what a fit keeps gives the same classes as the logits
        kept = as_ranked(compact_ranking(logits, rivals), 4, rivals)
        full = as_ranked(logits, 4, rivals)
        assert torch.equal(kept[:, 0], full[:, 0])
        assert torch.equal(kept[:, 1:].sort(1).values, full[:, 1:].sort(1).values)


@pytest.mark.parametrize("with_own", [False, True])
def test_contrast_is_the_log_ratio_to_the_nearest_rival_sphere(with_own):
    spheres = _spheres(5, [6, 3])
    g = torch.Generator().manual_seed(1)
    zs = [torch.randn(40, 6, generator=g), torch.randn(40, 3, generator=g)]
    ranked = ranked_classes(torch.randn(40, 5, generator=g), 3)
    per_class = torch.stack(
        [
            torch.stack([s.score(z, torch.full((40,), k)) for k in range(5)], 1)
            for s, z in zip(spheres, zs)
        ],
        1,
    )  # (B, L, K)
    log_score = per_class.log()
    expected = log_score.gather(2, ranked[:, None, :1].expand(-1, 2, -1))[..., 0] - (
        log_score.gather(2, ranked[:, None, 1:].expand(-1, 2, -1)).min(2).values
    )
    own = per_class.gather(2, ranked[:, None, :1].expand(-1, 2, -1))[..., 0] if with_own else None
    got = rival_contrast(spheres, zs, ranked, own)
    assert torch.allclose(got, expected, atol=1e-4)


def test_contrast_is_positive_for_a_row_inside_a_rival_sphere_and_has_gradients():
    free = BatchedSVDD(3, 2, encoder=False)  # the centres live in the input space
    free.center.copy_(torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]]))
    free.radius2.fill_(1.0)
    z = torch.tensor([[0.1, 0.0], [0.1, 0.0]], requires_grad=True)  # at class 0's centre
    ranked = torch.tensor([[1, 0], [0, 1]])  # predicted 1 (rival 0), predicted 0 (rival 1)
    c = rival_contrast([free], [z], ranked)
    assert c[0, 0] > 5 and c[1, 0] < -5
    c.sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
