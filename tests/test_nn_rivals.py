"""Rival classes and the contrast of a row's predicted-class sphere with its rivals' spheres."""

from __future__ import annotations

import pytest
import torch

from uniad_plugin.nn.rivals import as_ranked, compact_ranking, log_contrast, ranked_classes
from uniad_plugin.nn.spheres import ClassSpheres


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


def test_contrast_is_the_log_ratio_to_the_nearest_rival():
    ratios = torch.tensor([[4.0, 2.0, 8.0], [0.5, 1.0, 4.0]])
    expected = torch.log(torch.tensor([4.0 / 2.0, 0.5 / 1.0]))
    torch.testing.assert_close(log_contrast(ratios), expected)
    with pytest.raises(ValueError, match="at least one rival"):
        log_contrast(ratios[:, :1])


def test_contrast_is_positive_for_a_row_inside_a_rival_sphere_and_has_gradients():
    spheres = ClassSpheres(3, 2, whiten=False)  # the centres live in the input space
    spheres.center.copy_(torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]]))
    spheres.radius2.fill_(1.0)
    z = torch.tensor([[0.1, 0.0], [0.1, 0.0]], requires_grad=True)  # at class 0's centre
    ranked = torch.tensor([[1, 0], [0, 1]])  # predicted 1 (rival 0), predicted 0 (rival 1)
    c = log_contrast(spheres.ratios(z, ranked))
    assert c[0] > 5 and c[1] < -5
    c.sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
