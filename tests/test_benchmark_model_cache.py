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


def _resnet_in_normalized():
    """A small CIFAR-style network behind a normalisation, as a newcomer's factory builds it."""
    from uniad_plugin.models import Normalized, resnet_cifar

    return Normalized(resnet_cifar(), (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))


@pytest.mark.parametrize(
    "form",
    ["plain", "state_dict", "model", "net", "model_state_dict", "module.", "module.module."],
)
def test_load_model_reads_the_common_checkpoint_forms(form, tmp_path):
    model = digits_cnn().eval()
    state = model.state_dict()
    if form.startswith("module."):
        state = {f"{form}{k}": v for k, v in state.items()}
        saved = {"state_dict": state, "best_prec1": 91.3, "epoch": 200}
    elif form == "plain":
        saved = state
    else:
        saved = {form: state, "epoch": 3, "optimizer": {"lr": 0.1}}
    torch.save(saved, tmp_path / "w.pt")
    loaded = load_model(tmp_path / "w.pt", digits_cnn)
    x = torch.rand(3, *SHAPE)
    assert torch.equal(loaded(x), model(x))


def test_dataparallel_checkpoint_of_the_inner_network_loads_into_normalized(tmp_path):
    """{"state_dict": {"module.<inner key>": ...}, "best_prec1": ...}: the published form of a
    CIFAR ResNet, loaded into Normalized(net) (whose keys are "model.<inner key>")."""
    from torch import nn

    from uniad_plugin.benchmark import place_state_dict, read_state_dict

    wrapped = _resnet_in_normalized().eval()
    inner = wrapped.model
    saved = {"state_dict": nn.DataParallel(inner).state_dict(), "best_prec1": 92.1}
    assert all(k.startswith("module.") for k in saved["state_dict"])
    torch.save(saved, tmp_path / "resnet.th")
    loaded = load_model(tmp_path / "resnet.th", _resnet_in_normalized)
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(loaded(x), wrapped(x))
    _, how = place_state_dict(read_state_dict(tmp_path / "resnet.th"), _resnet_in_normalized())
    assert how == "removed 'module.' and added 'model.'"
    # the other way round: a Normalized model's weights into the bare network
    torch.save(wrapped.state_dict(), tmp_path / "wrapped.pt")
    from uniad_plugin.models import resnet_cifar

    bare = load_model(tmp_path / "wrapped.pt", resnet_cifar)
    assert torch.equal(bare((x - wrapped.mean) / wrapped.std), wrapped(x))


def test_old_checkpoints_without_num_batches_tracked_load(tmp_path):
    from uniad_plugin.models import resnet_cifar

    model = resnet_cifar().eval()
    state = {k: v for k, v in model.state_dict().items() if "num_batches_tracked" not in k}
    torch.save(state, tmp_path / "old.pt")
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(load_model(tmp_path / "old.pt", resnet_cifar)(x), model(x))


def test_unplaceable_keys_are_listed_briefly(tmp_path):
    state = {f"module.{k}": v for k, v in digits_cnn().state_dict().items()}
    state["module.extra.weight"] = torch.zeros(1)
    state.pop("module." + next(iter(digits_cnn().state_dict())))
    torch.save({"state_dict": state}, tmp_path / "w.pt")
    with pytest.raises(ConfigError) as info:
        load_model(tmp_path / "w.pt", digits_cnn)
    msg = str(info.value)
    first = next(iter(digits_cnn().state_dict()))
    assert "do not fit" in msg and "(removed 'module.')" in msg
    assert "1 of " in msg and "'module.extra.weight'" in msg and f"'{first}'" in msg
    # many keys: the first few and how many in all
    torch.save({f"w{i}": torch.zeros(1) for i in range(30)}, tmp_path / "many.pt")
    with pytest.raises(ConfigError, match=r"30 of 30 could not be placed \('w0', 'w1', 'w2', "
                       r"'w3', \.\.\. \(30 in all\)\)"):  # fmt: skip
        load_model(tmp_path / "many.pt", digits_cnn)
    torch.save({"epoch": 3, "optimizer": {}}, tmp_path / "none.pt")
    with pytest.raises(ConfigError, match="keys 'epoch', 'optimizer', not a state_dict"):
        load_model(tmp_path / "none.pt", digits_cnn)
    torch.save(digits_cnn(), tmp_path / "whole.pt")
    with pytest.raises(ConfigError, match="a whole pickled model is not read"):
        load_model(tmp_path / "whole.pt", digits_cnn)


def test_arch_modules_are_found_beside_the_file_and_in_the_cwd(tmp_path, monkeypatch):
    """A factory file that imports a module beside it (as ``python file.py`` would find it),
    and ``module:function`` from the working directory (as ``python -m``), without
    PYTHONPATH; sys.path is as it was afterwards, and the factory still works later."""
    import sys

    from uniad_plugin.benchmark.model_cache import resolve_architecture

    tag = tmp_path.name.replace("-", "_")
    sibling, factory_mod = f"sibling_{tag}", f"factory_{tag}"
    folder = tmp_path / "my_dir"
    folder.mkdir()
    (folder / f"{sibling}.py").write_text(
        "from uniad_plugin.models import digits_cnn\n\ndef net():\n    return digits_cnn()\n"
    )
    (folder / "factory.py").write_text(
        f"from {sibling} import net\n\n\ndef build():\n    return net()\n\n\n"
        f"def lazy():\n    import {sibling}\n\n    return {sibling}.net()\n"
    )
    (tmp_path / f"{factory_mod}.py").write_text(
        "from uniad_plugin.models import digits_cnn\n\ndef build():\n    return digits_cnn(4)\n"
    )
    monkeypatch.chdir(tmp_path)
    path_before = list(sys.path)
    try:
        build = resolve_architecture(f"{folder / 'factory.py'}:build")
        assert sys.path == path_before
        assert build()(torch.rand(1, *SHAPE)).shape == (1, 10)
        sys.modules.pop(sibling)
        lazy = resolve_architecture("my_dir/factory.py:lazy")  # relative to the working dir
        assert lazy()(torch.rand(1, *SHAPE)).shape == (1, 10)
        assert sys.path == path_before
        by_name = resolve_architecture(f"{factory_mod}:build")
        assert by_name()(torch.rand(1, *SHAPE)).shape == (1, 4)
        assert sys.path == path_before
    finally:
        for name in (sibling, factory_mod):
            sys.modules.pop(name, None)
    with pytest.raises(ConfigError, match="cannot import 'nowhere_xyz'"):
        resolve_architecture("nowhere_xyz:build")


def test_a_named_factory_with_num_classes_gets_the_data_sets_classes(tmp_path):
    """A six-class checkpoint of ``resnet20_cifar`` loads through ``--arch`` by name: the
    factory takes ``num_classes`` and is called with the data set's six; a factory without
    that parameter is called without arguments, and a callable ``arch`` is used as it is."""
    from uniad_plugin.benchmark.model_cache import build_model
    from uniad_plugin.models import resnet20_cifar

    six = resnet20_cifar(6).eval()
    torch.save({"state_dict": six.state_dict()}, tmp_path / "six.pt")
    loaded = load_model(tmp_path / "six.pt", "uniad_plugin.models:resnet20_cifar", 6)
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(loaded(x), six(x))
    assert build_model("uniad_plugin.models:resnet20_cifar", 4)(x).shape == (2, 4)
    with pytest.raises(ConfigError, match="do not fit"):
        load_model(tmp_path / "six.pt", "uniad_plugin.models:resnet20_cifar", 10)
    (tmp_path / "fixed_factory.py").write_text(
        "from uniad_plugin.models import digits_cnn\n\ndef build():\n    return digits_cnn(3)\n"
    )
    fixed = build_model(f"{tmp_path / 'fixed_factory.py'}:build", 6)
    assert fixed(torch.rand(1, *SHAPE)).shape == (1, 3)
    assert build_model(lambda: digits_cnn(5), 6)(torch.rand(1, *SHAPE)).shape == (1, 5)
