"""The classifier of a run: the user's model from a ``state_dict`` file, or a reference model
trained once and cached on disk, and the check that a model fits the data set.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from uniad_plugin._utils import atomic_save, hash_tensor, model_device
from uniad_plugin.benchmark._common import ConfigError, one_line

__all__ = [
    "check_model_output",
    "default_cache_dir",
    "load_model",
    "resolve_architecture",
    "torchvision_architecture",
    "trained_model",
]


def default_cache_dir() -> Path:
    """``$UNIAD_CACHE`` if set, else ``~/.cache/uniad-plugin``."""
    env = os.environ.get("UNIAD_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "uniad-plugin"


#: prefix of ``--arch torchvision:NAME``
TORCHVISION_PREFIX = "torchvision:"


def torchvision_architecture(name: str, num_classes: int = 10) -> Callable[[], nn.Module]:
    """A factory of ``torchvision.models.<name>(weights=None, num_classes=num_classes)``:
    untrained (no download), with a head of ``num_classes`` outputs. Its inputs are the
    model's raw inputs: wrap a model trained on normalised images in
    :class:`~uniad_plugin.models.Normalized` (through a ``file.py:function`` factory) instead.

    :param name: a model builder of ``torchvision.models`` (``resnet18``, ``vit_b_16``, ...)
    :raises ConfigError: if torchvision has no model of that name
    """
    from torchvision import models

    available = models.list_models(module=models)
    if name not in available:
        close = [n for n in available if n.startswith(name[:4])][:8] or available[:8]
        raise ConfigError(
            f"torchvision has no model {name!r} (from --arch {TORCHVISION_PREFIX}{name}); "
            f"e.g. {', '.join(close)}"
        )

    def build() -> nn.Module:
        return models.get_model(name, weights=None, num_classes=num_classes)

    build.__qualname__ = build.__name__ = f"torchvision_{name}"
    return build


def resolve_architecture(
    arch: str | Callable[[], nn.Module], num_classes: int = 10
) -> Callable[[], nn.Module]:
    """The function named by ``arch`` (``"module:function"``, ``"file.py:function"`` or
    ``"torchvision:NAME"``, see :func:`torchvision_architecture`).

    :param num_classes: classes of a ``torchvision:NAME`` model (the other forms are called
        without arguments)
    :raises ConfigError: if ``arch`` is malformed or the function cannot be imported
    """
    if callable(arch):
        return arch
    if str(arch).startswith(TORCHVISION_PREFIX):
        return torchvision_architecture(str(arch)[len(TORCHVISION_PREFIX) :], num_classes)
    module_name, sep, func_name = str(arch).rpartition(":")
    if not sep or not module_name or not func_name:
        raise ConfigError(
            f"expected --arch as 'module:function', 'file.py:function' or 'torchvision:NAME', got {arch!r}"
        )
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise ConfigError(f"architecture file not found: {module_name}")
            spec = importlib.util.spec_from_file_location(f"_uniad_arch_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001
        raise ConfigError(
            f"cannot import {module_name!r} for --arch {arch!r}: {one_line(e)}"
        ) from e
    factory = getattr(module, func_name, None)
    if not callable(factory):
        raise ConfigError(f"{module_name!r} has no function {func_name!r} (from --arch {arch!r})")
    return factory


def load_model(
    path: str | os.PathLike, arch: str | Callable[[], nn.Module], num_classes: int = 10
) -> nn.Module:
    """Load a user's classifier: an architecture factory plus a ``state_dict`` file.

    The weights are read with ``torch.load(path, weights_only=True)``, which cannot run code
    from the file; the architecture is the user's own code, named by ``arch``. Save a model
    with ``torch.save(model.state_dict(), path)`` (a dict ``{"state_dict": ...}`` also works).

    :param path: the ``state_dict`` file
    :param arch: ``"package.module:function"`` or ``"path/to/file.py:function"``, a function
        called without arguments that returns the untrained ``nn.Module``; or that function;
        or ``"torchvision:NAME"``
    :param num_classes: classes of a ``torchvision:NAME`` model
    :return: the model with the weights loaded, in eval mode
    :raises ConfigError: if the file is missing or not a ``state_dict``, the factory cannot be
        imported or does not return a module, or the weights do not fit the architecture
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"model file not found: {path}")
    factory = resolve_architecture(arch, num_classes)
    try:
        model = factory()
    except Exception as e:  # noqa: BLE001
        raise ConfigError(
            f"--arch {arch!r} raised when called without arguments: {one_line(e)}"
        ) from e
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"--arch {arch!r} returned a {type(model).__name__}, expected an nn.Module"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(
            f"cannot read {path} as a state_dict (save it with torch.save(model.state_dict(), "
            f"path)): {one_line(e)}"
        ) from e
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConfigError(
            f"{path} holds a {type(state).__name__}, not a state_dict; save the model with "
            "torch.save(model.state_dict(), path)"
        )
    try:
        model.load_state_dict(state)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(
            f"the weights in {path} do not fit the architecture {arch!r}: {one_line(e)}"
        ) from e
    return model.eval()


def check_model_output(model: nn.Module, example: Tensor, num_classes: int) -> None:
    """Check that ``model`` maps ``example`` to logits of shape ``(B, num_classes)``.

    :raises ConfigError: if the model fails on the inputs or its output has another shape
    """
    try:
        with torch.no_grad():
            out = model(example.to(model_device(model)))
    except Exception as e:  # noqa: BLE001
        raise ConfigError(
            f"the model fails on inputs of shape {tuple(example.shape)}: {one_line(e)}"
        ) from e
    if isinstance(out, (tuple, list)) and out:
        out = out[0]
    shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
    if shape != (len(example), num_classes):
        raise ConfigError(
            f"the model's output has shape {shape} for {len(example)} inputs of shape "
            f"{tuple(example.shape[1:])}; expected logits of shape ({len(example)}, {num_classes}) "
            f"for the {num_classes} classes of the data set"
        )


def _hash_dataset(h: Any, data: Dataset) -> None:
    """Feed the shapes and bytes of the tensors of ``data`` into the hashlib object ``h``; for
    a dataset of image files (torchvision's ``ImageFolder``: ``samples``, pytorch-ood's
    ``ImageListDataset``: ``files`` and ``labels``), its transform, paths and labels instead
    (reading every image of an ImageNet-scale set to hash it would take long)."""
    samples = getattr(data, "samples", None)
    if samples is None and hasattr(data, "files") and hasattr(data, "labels"):
        samples = list(zip(data.files, data.labels, strict=True))
    if samples is not None and not isinstance(data, TensorDataset):
        # the transform's repr, without the addresses of objects that have no repr of their own
        transform = re.sub(r" at 0x[0-9a-fA-F]+", "", repr(getattr(data, "transform", None)))
        h.update(f"files|{transform}|{len(samples)}|".encode())
        for path, label in samples:
            h.update(f"{path}|{label}\n".encode())
        return
    if isinstance(data, TensorDataset):
        tensors = data.tensors
    else:  # pragma: no cover - run_* always pass tensor datasets
        tensors = tuple(torch.stack([torch.as_tensor(s[i]) for s in data]) for i in range(2))
    for t in tensors:
        h.update(f"{tuple(t.shape)}|".encode())
        hash_tensor(h, t)


def trained_model(
    name: str,
    factory: Callable[[], nn.Module],
    train: Dataset,
    *,
    epochs: int,
    seed: int = 0,
    lr: float = 1e-3,
    batch_size: int = 64,
    cache_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> tuple[nn.Module, bool]:
    """A reference classifier trained on ``train``, cached on disk.

    The cache file ``<cache_dir>/models/<name>-<key>.pt`` holds the ``state_dict``; the key
    hashes the name, the training settings, the seed and the training data. A second call with
    the same arguments loads it (``weights_only=True``) instead of training.

    :param name: architecture name (part of the file name)
    :param factory: builds the untrained model
    :param train: training data ``(x, y)``
    :return: the model in eval mode, and whether it came from the cache
    """
    torch.manual_seed(seed)
    model = factory()
    # the architecture itself is part of the key (an edited factory must not load stale weights)
    h = hashlib.sha256(f"{name}|{model!r}|{epochs}|{seed}|{lr}|{batch_size}".encode())
    _hash_dataset(h, train)
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / "models" / f"{name}-{h.hexdigest()[:16]}.pt"
        if path.is_file():
            try:
                model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
                return model.to(device).eval(), True
            except Exception:  # noqa: BLE001 - a corrupt cache file is rebuilt
                torch.manual_seed(seed)
                model = factory()
    from uniad_plugin import models

    loader = DataLoader(
        train, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    models.train_classifier(
        model, loader, epochs=epochs, lr=lr, seed=seed, device=device, progress=progress
    )
    if path is not None:
        atomic_save({k: v.cpu() for k, v in model.state_dict().items()}, path)
    return model.eval(), False
