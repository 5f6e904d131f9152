import pytest
import torch

from uniad_plugin.nn.pvalues import fisher_combination, log_survival, survival_knots


def test_log_p_at_the_knots_is_the_fraction_at_least_as_high():
    held = torch.tensor([[3.0], [1.0], [2.0], [4.0]])
    knots, slope = survival_knots(held)
    assert knots.tolist() == [[1.0, 2.0, 3.0, 4.0]]
    log_p = log_survival(knots, slope, torch.tensor([[1.0], [2.0], [3.0], [4.0]]))
    expected = torch.log(torch.tensor([4.0, 3.0, 2.0, 1.0]) / 5)
    assert torch.allclose(log_p[:, 0], expected)


def test_below_the_smallest_is_zero_and_beyond_the_largest_keeps_falling():
    gen = torch.Generator().manual_seed(0)
    held = torch.randn(1000, 3, generator=gen)
    knots, slope = survival_knots(held)
    assert (slope < 0).all()
    s = torch.linspace(-10, 10, 401)[:, None].expand(-1, 3)
    log_p = log_survival(knots, slope, s)
    assert (log_p[s < knots[:, 0]] == 0).all()
    diffs = log_p[1:] - log_p[:-1]
    assert (diffs <= 1e-6).all()  # non-increasing in the score
    beyond = s[:, 0] > knots[:, -1].max()
    assert (diffs[beyond[1:] & beyond[:-1]] < 0).all()  # strictly falling in the tail


def test_interpolation_has_a_gradient_between_knots_and_in_the_tail():
    knots, slope = survival_knots(torch.arange(10.0)[:, None])
    s = torch.tensor([[4.5], [20.0]], requires_grad=True)
    log_survival(knots, slope, s).sum().backward()
    assert (s.grad < 0).all()


def test_fisher_is_minus_the_sum_of_log_p():
    log_p = torch.log(torch.tensor([[0.5, 0.1], [1.0, 1.0]]))
    assert torch.allclose(fisher_combination(log_p), torch.tensor([-(log_p[0].sum()), 0.0]))


@pytest.mark.parametrize(
    "held, match",
    [(torch.zeros(1, 2), "n >= 2"), (torch.tensor([[0.0], [float("nan")]]), "finite")],
)
def test_bad_held_out_scores_are_refused(held, match):
    with pytest.raises(ValueError, match=match):
        survival_knots(held)


def test_scores_of_the_wrong_width_are_refused():
    knots, slope = survival_knots(torch.rand(5, 2))
    with pytest.raises(ValueError, match=r"expected scores of shape \(B, 2\)"):
        log_survival(knots, slope, torch.rand(3, 3))
