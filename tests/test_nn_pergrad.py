"""Per-sample gradients with torch.func against a reference loop of ordinary autograd."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from uniad_plugin.models import digits_cnn
from uniad_plugin.nn.pergrad import (
    flatten_grads,
    grad_sq_norms,
    last_layer_params,
    per_sample_grad_features,
    per_sample_grads,
    resolve_params,
)


def reference_grads(model, x, target, loss_fn):
    """One backward pass per sample: the slow, obviously correct reference."""
    out = {n: [] for n, _ in model.named_parameters()}
    for i in range(len(x)):
        model.zero_grad(set_to_none=True)
        t = None if target is None else target[i : i + 1]
        loss_fn(model(x[i : i + 1]), t).backward()
        for n, p in model.named_parameters():
            out[n].append(p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
    model.zero_grad(set_to_none=True)
    return {n: torch.stack(g) for n, g in out.items()}


def ce(out, t):
    return nn.functional.cross_entropy(out, t)


def confounding(out, _t):
    return nn.functional.binary_cross_entropy_with_logits(
        out, torch.ones_like(out), reduction="sum"
    )


@pytest.fixture
def cnn():
    torch.manual_seed(0)
    return digits_cnn().eval()


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.rand(7, 1, 8, 8, generator=g), torch.randint(0, 10, (7,), generator=g)


def test_equal_to_autograd_loop(cnn, batch):
    x, y = batch
    got = per_sample_grads(cnn, x, y, ce)
    ref = reference_grads(cnn, x, y, ce)
    assert list(got) == [n for n, _ in cnn.named_parameters()]
    for n in ref:
        assert got[n].shape == (7, *cnn.get_parameter(n).shape)
        torch.testing.assert_close(got[n], ref[n], rtol=1e-4, atol=1e-6)


def test_targetless_loss_and_chunks(cnn, batch):
    x, _ = batch
    ref = reference_grads(cnn, x, None, confounding)
    for chunk in (None, 1, 3):
        got = per_sample_grads(cnn, x, None, confounding, chunk_size=chunk)
        for n in ref:
            torch.testing.assert_close(got[n], ref[n], rtol=1e-4, atol=1e-6)


def test_parameter_subset(cnn, batch):
    x, y = batch
    names = ["8.bias", "2.weight"]
    got = per_sample_grads(cnn, x, y, ce, params=names)
    assert list(got) == ["2.weight", "8.bias"]  # model order
    ref = reference_grads(cnn, x, y, ce)
    for n in got:
        torch.testing.assert_close(got[n], ref[n], rtol=1e-4, atol=1e-6)


def test_batchnorm_model_in_eval_mode():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(144, 3),
        nn.BatchNorm1d(3),
    )
    model.train()
    for _ in range(3):  # non-trivial running statistics
        model(torch.randn(16, 1, 8, 8) * 2 + 1)
    model.eval()
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    x, y = torch.rand(5, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1])
    got = per_sample_grads(model, x, y, ce)
    ref = reference_grads(model, x, y, ce)
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], rtol=1e-4, atol=1e-6)
    assert all(torch.equal(buffers[k], v) for k, v in model.named_buffers())
    model.train()
    with pytest.raises(ValueError, match="eval mode"):
        per_sample_grads(model, x, y, ce)


def test_model_is_not_modified_and_frozen_params_work(cnn, batch):
    x, y = batch
    cnn.get_parameter("0.weight").requires_grad_(False)
    before = {k: v.clone() for k, v in cnn.state_dict().items()}
    got = per_sample_grads(cnn, x, y, ce)
    assert got["0.weight"].abs().sum() > 0  # frozen parameters are differentiated anyway
    assert all(p.grad is None for p in cnn.parameters())
    assert [p.requires_grad for p in cnn.parameters()] == [False] + [True] * 7
    assert all(torch.equal(before[k], v) for k, v in cnn.state_dict().items())
    assert not cnn.training


def test_state_override_equals_loaded_weights(cnn, batch):
    x, y = batch
    torch.manual_seed(5)
    other = digits_cnn().eval()
    got = per_sample_grads(cnn, x, y, ce, params=["6.weight", "8.bias"], state=other.state_dict())
    ref = reference_grads(other, x, y, ce)
    for n in got:
        torch.testing.assert_close(got[n], ref[n], rtol=1e-4, atol=1e-6)


def test_works_under_no_grad_and_returns_outputs(cnn, batch):
    x, y = batch
    with torch.no_grad():
        grads, out = per_sample_grads(cnn, x, y, ce, with_outputs=True)
        expected = cnn(x)
    assert grads["8.weight"].abs().sum() > 0
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_reductions(cnn, batch):
    x, y = batch
    grads = per_sample_grads(cnn, x, y, ce)
    norms = grad_sq_norms(grads)
    flat = flatten_grads(grads)
    n_params = sum(p.numel() for p in cnn.parameters())
    assert norms.shape == (7, 8) and flat.shape == (7, n_params)
    torch.testing.assert_close(norms.sum(1), flat.pow(2).sum(1))
    torch.testing.assert_close(norms[:, -1], grads["8.bias"].pow(2).sum(1))
    for reduce, expected in (("sq_norm", norms), ("flat", flat)):
        got, out = per_sample_grad_features(
            cnn, x, y, ce, reduce=reduce, chunk_size=3, with_outputs=True
        )
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-7)
        assert out.shape == (7, 10)
    with pytest.raises(ValueError, match="expected reduce"):
        per_sample_grad_features(cnn, x, y, ce, reduce="mean")


def test_empty_batch(cnn):
    got = per_sample_grads(cnn, torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long))
    assert got["8.weight"].shape == (0, 10, 64)


def test_parameter_selection_helpers(cnn):
    assert last_layer_params(cnn) == ["6.weight", "6.bias", "8.weight", "8.bias"]
    head = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 4, bias=False))
    assert last_layer_params(head, 1) == ["3.weight"]
    assert last_layer_params(head, 5) == ["1.weight", "1.bias", "3.weight"]
    assert resolve_params(cnn, ["8.bias", "0.bias"]) == ["0.bias", "8.bias"]
    with pytest.raises(ValueError, match="unknown"):
        resolve_params(cnn, ["fc.weight"])
    with pytest.raises(ValueError, match="at least one"):
        resolve_params(cnn, [])
    with pytest.raises(TypeError, match="sequence"):
        resolve_params(cnn, "8.bias")


def test_bad_arguments(cnn, batch):
    x, y = batch
    with pytest.raises(ValueError, match="7 rows"):
        per_sample_grads(cnn, x, y[:3])
    with pytest.raises(ValueError, match="target"):
        per_sample_grads(cnn, x, None)  # cross-entropy needs a target
    with pytest.raises(ValueError, match="chunk_size"):
        per_sample_grads(cnn, x, y, chunk_size=0)
    with pytest.raises(ValueError, match="scalar"):
        per_sample_grads(cnn, x, y, lambda out, t: out.sum(0))
