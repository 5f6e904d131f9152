"""Forward hooks that collect several layers in one forward pass."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from tests.tiny_models import TinyResNet, tiny_mlp, tiny_vit
from uniad_plugin.models import digits_cnn, lenet
from uniad_plugin.nn.taps import (
    LayerTaps,
    activation_taps,
    default_layers,
    grid_side,
    pool,
    resolve_layers,
)


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
    assert pool(torch.ones(2, 3, 4, 4), "grid").shape == (2, 3 * 4 * 4)
    assert pool(torch.ones(2, 5, 7)).shape == (2, 7)
    assert pool(torch.ones(2, 7)).shape == (2, 7)
    assert pool(torch.ones(2, 1, 2, 3, 4)).shape == (2, 24)
    with pytest.raises(ValueError, match="'avg' or 'grid', got 'max'"):
        pool(torch.ones(2, 3, 4, 4), "max")


def test_grid_pooling_keeps_the_layout_within_the_feature_bound():
    # LeNet's maps (6@28x28, 16@10x10, 16@5x5): a 4x4 grid each
    assert [grid_side(*s) for s in [(6, 28, 28), (16, 10, 10), (16, 5, 5)]] == [4, 4, 4]
    # wide maps step down to 2x2, then to the global average; small maps to what fits
    assert [grid_side(*s) for s in [(64, 56, 56), (256, 14, 14), (512, 7, 7)]] == [4, 2, 1]
    assert [grid_side(*s) for s in [(8, 3, 3), (8, 1, 5), (2000, 8, 8)]] == [2, 1, 1]
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    got = pool(x, "grid")
    assert got.shape == (2, 3 * 16)
    # each feature is the mean of one 2x2 block, channel by channel, rows first
    expected = torch.stack([x[0, 0, :2, :2].mean(), x[0, 0, :2, 2:4].mean()])
    torch.testing.assert_close(got[0, :2], expected)
    torch.testing.assert_close(got[:, 16], x[:, 1, :2, :2].mean(dim=(1, 2)))
    # uneven maps: the overlapping windows of adaptive average pooling, and gradients flow
    for shape in [(2, 16, 10, 10), (2, 16, 5, 5), (2, 6, 28, 28), (2, 4, 7, 9), (2, 8, 3, 3)]:
        t = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        side = grid_side(*shape[1:])
        want = nn.functional.adaptive_avg_pool2d(t, side).flatten(1)
        torch.testing.assert_close(pool(t, "grid"), want)
        pool(t, "grid").sum().backward()
        assert t.grad is not None and t.grad.abs().sum() > 0
    # a map where only the global average fits equals "avg"
    wide = torch.randn(2, 2048, 4, 4)
    assert torch.equal(pool(wide, "grid"), pool(wide, "avg"))
    # tokens and vectors are unaffected by the mode
    assert torch.equal(pool(torch.ones(2, 5, 7), "grid"), pool(torch.ones(2, 5, 7)))


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


def test_default_layers_of_the_reference_models_are_unchanged():
    assert default_layers(lenet().eval(), torch.rand(1, 1, 28, 28)) == [
        "1",
        "4",
        "5",
        "11:input",
        "log_softmax",
        "softmax",
    ]
    assert default_layers(digits_cnn().eval(), torch.rand(1, 1, 8, 8)) == [
        "3",
        "4",
        "8:input",
        "log_softmax",
        "softmax",
    ]


def test_default_layers_of_a_vision_transformer_are_its_blocks():
    """The transformer blocks, not only the patch embedding and the head."""
    torch.manual_seed(0)
    blocks = [f"encoder.layers.encoder_layer_{i}" for i in range(4)]
    model = tiny_vit().eval()
    x = torch.rand(2, 3, 16, 16)
    assert default_layers(model, x) == [*blocks, "heads.head:input", "log_softmax", "softmax"]
    assert default_layers(model, x, max_stages=2) == [
        blocks[1],
        blocks[3],
        "heads.head:input",
        "log_softmax",
        "softmax",
    ]
    _, feats = LayerTaps(model, default_layers(model, x))(x)
    assert [tuple(f.shape) for f in feats] == [(2, 16)] * 5 + [(2, 10), (2, 10)]


def test_default_layers_spread_over_a_deep_stack_end_with_the_last_block():
    model = torchvision.models.VisionTransformer(
        image_size=8, patch_size=4, num_layers=12, num_heads=1, hidden_dim=8, mlp_dim=8
    ).eval()
    layers = default_layers(model, torch.rand(1, 3, 8, 8))
    assert layers[:4] == [f"encoder.layers.encoder_layer_{i}" for i in (2, 5, 8, 11)]


def test_default_layers_of_a_token_stack_in_a_module_list():
    """Generic detection: any stack of same-shape (B, T, D) blocks, not torchvision's names."""

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(8)
            self.mlp = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))

        def forward(self, x):
            return x + self.mlp(self.norm(x))

    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(4, 8)
            self.blocks = nn.ModuleList(Block() for _ in range(3))
            self.head = nn.Linear(8, 5)

        def forward(self, x):
            x = self.embed(x.reshape(len(x), -1, 4))
            for block in self.blocks:
                x = block(x)
            return self.head(x.mean(1))

    layers = default_layers(Tokens().eval(), torch.rand(2, 6, 4))
    assert layers == ["blocks.0", "blocks.1", "blocks.2", "head:input", "log_softmax", "softmax"]


def test_default_layers_of_a_resnet_with_batchnorm_and_skips():
    torch.manual_seed(0)
    model = TinyResNet().eval()
    expected = ["layer1", "layer2", "layer3", "fc:input", "log_softmax", "softmax"]
    assert default_layers(model, torch.rand(1, 3, 32, 32)) == expected
    assert default_layers(model, torch.rand(2, 3, 32, 32), max_stages=2) == expected[1:]


def test_default_layers_of_resnet18_on_small_inputs():
    """On 32x32 inputs layer4 runs at 1x1: it is a stage, the stem is not, avgpool is not."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    assert default_layers(model, torch.rand(1, 3, 32, 32)) == [
        "layer1",
        "layer2",
        "layer3",
        "layer4",
        "fc:input",
        "log_softmax",
        "softmax",
    ]


def test_default_layers_of_an_mlp_are_the_inputs_of_its_linear_layers():
    model = tiny_mlp().eval()
    assert default_layers(model, torch.rand(2, 1, 8, 8)) == [
        "1:input",
        "3:input",
        "5:input",
        "log_softmax",
        "softmax",
    ]


def test_default_layers_refuse_max_stages_below_one():
    with pytest.raises(ValueError, match="max_stages >= 1"):
        default_layers(digits_cnn().eval(), torch.rand(1, 1, 8, 8), max_stages=0)


def test_grid_pooling_first_run_under_inference_mode_still_serves_gradients():
    """The averaging matrix is cached: built first under inference mode (as pytorch-ood's
    callers may score), it must still work in a later pass with gradients."""
    shape = (2, 3, 11, 13)  # a map size no other test uses, so the cache starts empty
    with torch.inference_mode():
        pool(torch.randn(shape), "grid")
    t = torch.randn(shape, requires_grad=True)
    pool(t, "grid").sum().backward()
    assert t.grad is not None and t.grad.abs().sum() > 0
