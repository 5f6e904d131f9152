"""Forward hooks that collect several layers in one forward pass."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from uniad_plugin.models import digits_cnn
from uniad_plugin.nn.taps import LayerTaps, activation_taps, default_layers, pool, resolve_layers


class Counting(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def test_pool_shapes():
    assert pool(torch.ones(2, 3, 4, 4)).shape == (2, 3)
    assert pool(torch.ones(2, 3, 4, 4), "avgmax").shape == (2, 6)
    assert pool(torch.ones(2, 5, 7)).shape == (2, 7)
    assert pool(torch.ones(2, 7)).shape == (2, 7)
    assert pool(torch.ones(2, 1, 2, 3, 4)).shape == (2, 24)
    with pytest.raises(ValueError, match="pooling"):
        pool(torch.ones(2, 3, 4, 4), "max")


def test_resolve_layers_names_modules_and_errors():
    model = digits_cnn()
    specs = resolve_layers(model, ["1", model[3], "8:input", "logits", "log_softmax"])
    assert [s.name for s in specs] == ["1", "3", "8:input", "logits", "log_softmax"]
    assert specs[2].take_input and specs[3].module_name is None
    with pytest.raises(ValueError, match="does not exist|expected"):
        resolve_layers(model, ["nope"])
    with pytest.raises(ValueError):
        resolve_layers(model, [])


def test_all_layers_in_one_forward_pass():
    model = Counting(digits_cnn().eval())
    taps = LayerTaps(model, ["inner.1", "inner.8:input", "logits", "log_softmax"])
    x = torch.rand(4, 1, 8, 8)
    logits, feats = taps(x)
    assert model.calls == 1
    assert torch.equal(feats[2], logits)
    assert torch.allclose(feats[3], torch.log_softmax(logits, 1))
    assert [f.shape[0] for f in feats] == [4, 4, 4, 4]
    assert taps.names == ["inner.1", "inner.8:input", "logits", "log_softmax"]


def test_default_layers_of_a_cnn():
    model = digits_cnn().eval()
    assert default_layers(model, torch.rand(2, 1, 8, 8)) == [
        "3",
        "4",
        "8:input",
        "log_softmax",
        "softmax",
    ]


def test_activation_taps_finds_hidden_activations_and_refuses_reuse():
    model = digits_cnn().eval()
    names, dims, n_out, taps = activation_taps(model, None, torch.rand(2, 1, 8, 8))
    assert names == ["1", "3", "7"] and n_out == 10 and len(dims) == 3
    assert [f.shape[1] for f in taps(torch.rand(3, 1, 8, 8))[1]] == dims
    relu = nn.ReLU()
    reused = nn.Sequential(nn.Flatten(), nn.Linear(4, 4), relu, nn.Linear(4, 4), relu)
    with pytest.raises(ValueError, match="runs 2 times"):
        activation_taps(reused, None, torch.rand(2, 4))
