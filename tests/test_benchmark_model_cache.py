"""The user's model from a state_dict file, the output check, the trained-model cache."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from tests.benchmark_helpers import SHAPE
from uniad_plugin.benchmark import ConfigError, check_model_output, load_model, trained_model
from uniad_plugin.models import digits_cnn


def test_load_model_round_trip_and_errors(tmp_path):
    model = digits_cnn().eval()
    path = tmp_path / "m.pt"
    torch.save(model.state_dict(), path)
    loaded = load_model(path, "uniad_plugin.models:digits_cnn")
    x = torch.rand(3, *SHAPE)
    assert torch.equal(loaded(x), model(x))
    torch.save({"state_dict": model.state_dict()}, tmp_path / "ckpt.pt")
    load_model(tmp_path / "ckpt.pt", digits_cnn)
    with pytest.raises(ConfigError, match="not found"):
        load_model(tmp_path / "missing.pt", "uniad_plugin.models:digits_cnn")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ConfigError, match="not a state_dict"):
        load_model(tmp_path / "list.pt", "uniad_plugin.models:digits_cnn")
    with pytest.raises(ConfigError, match="do not fit"):
        load_model(path, "uniad_plugin.models:lenet")
    with pytest.raises(ConfigError, match="module:function"):
        load_model(path, "digits_cnn")
    with pytest.raises(ConfigError, match="no function"):
        load_model(path, "uniad_plugin.models:nope")
    with pytest.raises(ConfigError, match=r"shape \(3, 5\).*\(3, 10\)"):
        check_model_output(digits_cnn(5).eval(), x, 10)
    with pytest.raises(ConfigError, match="fails on inputs"):
        check_model_output(digits_cnn().eval(), torch.rand(3, 1, 28, 28), 10)


def test_trained_model_is_cached(digits, tmp_path):
    small = TensorDataset(*(t[:200] for t in digits.train.tensors))
    m1, cached1 = trained_model(
        "cnn", digits_cnn, small, epochs=1, cache_dir=tmp_path, progress=False
    )
    m2, cached2 = trained_model(
        "cnn", digits_cnn, small, epochs=1, cache_dir=tmp_path, progress=False
    )
    assert (cached1, cached2) == (False, True)
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    _, cached3 = trained_model(
        "cnn", digits_cnn, small, epochs=2, cache_dir=tmp_path, progress=False
    )
    assert not cached3
