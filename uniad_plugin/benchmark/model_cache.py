"""The classifier of a run: the user's model from a ``state_dict`` file, or a reference model
trained once and cached on disk, and the check that a model fits the data set.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from uniad_plugin._utils import atomic_save, hash_tensor, model_device
from uniad_plugin.benchmark._common import ConfigError, one_line

__all__ = [
    "build_model",
    "check_model_output",
    "default_cache_dir",
    "load_model",
    "place_state_dict",
    "read_state_dict",
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
            f"torchvision has no model {name!r} (from arch={TORCHVISION_PREFIX}{name}); "
            f"e.g. {', '.join(close)}"
        )

    def build() -> nn.Module:
        return models.get_model(name, weights=None, num_classes=num_classes)

    build.__qualname__ = build.__name__ = f"torchvision_{name}"
    return build


@contextlib.contextmanager
def _search_path(dirs: Sequence[str]) -> Iterator[None]:
    """``dirs`` in front of ``sys.path`` while the block runs (those not there already), then
    taken out again."""
    added = [d for d in dirs if d not in sys.path]
    sys.path[:0] = added
    try:
        yield
    finally:
        for d in added:
            if d in sys.path:
                sys.path.remove(d)


def _on_search_path(
    factory: Callable[[], nn.Module], dirs: Sequence[str]
) -> Callable[[], nn.Module]:
    """``factory`` called with ``dirs`` on ``sys.path`` (imports inside it find the same
    modules as the import of its file did)."""

    @functools.wraps(factory)
    def build(*args: Any, **kwargs: Any) -> nn.Module:
        with _search_path(dirs):
            return factory(*args, **kwargs)

    return build


def _import_file(path: Path) -> Any:
    """The module of the file ``path``, registered in ``sys.modules`` under a name made from
    its resolved path (two files of one name do not collide)."""
    path = path.resolve()
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
    name = f"_uniad_arch_{re.sub(r'[^0-9A-Za-z_]', '_', path.stem)}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look a class's module up here
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def resolve_architecture(
    arch: str | Callable[[], nn.Module], num_classes: int = 10
) -> Callable[[], nn.Module]:
    """The function named by ``arch`` (``"module:function"``, ``"file.py:function"`` or
    ``"torchvision:NAME"``, see :func:`torchvision_architecture`).

    Modules are found as ``python -m`` and ``python file.py`` find them: ``"module:function"``
    imports ``module`` with the current working directory first on ``sys.path``;
    ``"path/to/file.py:function"`` runs the file with its own folder (then the current working
    directory) first on ``sys.path``, so a factory file can import a module that sits beside
    it. The folders are on ``sys.path`` only while the module is imported and while the
    returned function runs (it is wrapped), not afterwards.

    :param num_classes: classes of the data set: a ``torchvision:NAME`` model gets a head of
        that many outputs, and a named function that takes a ``num_classes`` parameter is
        called with ``num_classes=num_classes``; other functions, and a callable ``arch``, are
        called without arguments
    :raises ConfigError: if ``arch`` is malformed or the function cannot be imported
    """
    if callable(arch):
        return arch
    if str(arch).startswith(TORCHVISION_PREFIX):
        return torchvision_architecture(str(arch)[len(TORCHVISION_PREFIX) :], num_classes)
    module_name, sep, func_name = str(arch).rpartition(":")
    if not sep or not module_name or not func_name:
        raise ConfigError(
            f"expected arch= as 'module:function', 'file.py:function' or 'torchvision:NAME', got {arch!r}"
        )
    dirs = [os.getcwd()]
    try:
        if module_name.endswith(".py"):
            path = Path(module_name).expanduser()
            if not path.is_file():
                raise ConfigError(f"architecture file not found: {module_name}")
            dirs.insert(0, str(path.resolve().parent))
            with _search_path(dirs):
                module = _import_file(path)
        else:
            with _search_path(dirs):
                module = importlib.import_module(module_name)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001
        where = " (searched beside the file and in the current directory)"
        raise ConfigError(
            f"cannot import {module_name!r} for arch={arch!r}{where}: {one_line(e)}"
        ) from e
    factory = getattr(module, func_name, None)
    if not callable(factory):
        raise ConfigError(f"{module_name!r} has no function {func_name!r} (from arch={arch!r})")
    if _takes_num_classes(factory):
        factory = functools.partial(factory, num_classes=num_classes)
    return _on_search_path(factory, dirs)


def _takes_num_classes(factory: Callable[..., Any]) -> bool:
    """Whether ``factory`` has a parameter ``num_classes`` that can be passed by keyword."""
    try:
        parameter = inspect.signature(factory).parameters.get("num_classes")
    except (TypeError, ValueError):  # builtins and C functions without a signature
        return False
    return parameter is not None and parameter.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.KEYWORD_ONLY,
    )


def build_model(arch: str | Callable[[], nn.Module], num_classes: int = 10) -> nn.Module:
    """The module that ``arch`` (see :func:`resolve_architecture`) builds for ``num_classes``
    classes.

    :raises ConfigError: if the factory cannot be imported, raises, or returns no ``nn.Module``
    """
    factory = resolve_architecture(arch, num_classes)
    try:
        model = factory()
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"arch={arch!r} raised when called: {one_line(e)}") from e
    if not isinstance(model, nn.Module):
        raise ConfigError(f"arch={arch!r} returned a {type(model).__name__}, expected an nn.Module")
    return model


#: keys of a checkpoint dict that hold the model's weights, tried in this order
CHECKPOINT_KEYS: tuple[str, ...] = ("state_dict", "model_state_dict", "model", "net")
#: prefixes that wrappers add to every key: DataParallel / DistributedDataParallel
#: (``module.``) and ``torch.compile`` (``_orig_mod.``)
WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, Tensor) for v in obj.values())
    )


def _unwrap_checkpoint(obj: Any, depth: int = 0) -> Mapping[str, Tensor] | None:
    """The ``state_dict`` in ``obj``: ``obj`` itself, or the first of :data:`CHECKPOINT_KEYS`
    (nested at most twice) that holds one; ``None`` if there is none."""
    if _is_state_dict(obj):
        return obj
    if not isinstance(obj, Mapping) or depth > 2:
        return None
    for key in CHECKPOINT_KEYS:
        found = _unwrap_checkpoint(obj.get(key), depth + 1)
        if found is not None:
            return found
    return None


def read_state_dict(path: str | os.PathLike) -> Mapping[str, Tensor]:
    """The weights in the file ``path``, read with ``torch.load(path, weights_only=True)``
    (which runs no code from the file): a plain ``state_dict``, or a checkpoint dict that
    holds one under ``state_dict``, ``model_state_dict``, ``model`` or ``net`` (other entries,
    such as ``epoch``, ``best_prec1`` or ``optimizer``, are ignored).

    :raises ConfigError: if the file is missing, cannot be read with ``weights_only=True``
        (e.g. a whole pickled model) or holds no ``state_dict``
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"model file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(
            f"cannot read {path} as a state_dict with torch.load(weights_only=True) (a whole "
            f"pickled model is not read: save model.state_dict() instead): {one_line(e)}"
        ) from e
    state = _unwrap_checkpoint(obj)
    if state is None:
        keys = f" with keys {_few(list(obj))}" if isinstance(obj, Mapping) else ""
        raise ConfigError(
            f"{path} holds a {type(obj).__name__}{keys}, not a state_dict or a checkpoint dict "
            f"with one under {', '.join(repr(k) for k in CHECKPOINT_KEYS)}; save the model with "
            "torch.save(model.state_dict(), path)"
        )
    return state


def _few(keys: Sequence[str], k: int = 4) -> str:
    """The first ``k`` of ``keys`` and how many there are in all."""
    shown = ", ".join(repr(key) for key in keys[:k])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > k else shown


def _strip_prefixes(keys: Sequence[str]) -> list[str]:
    """The prefixes that every key of ``keys`` starts with and that may be taken off: the
    wrapper prefixes (:data:`WRAPPER_PREFIXES`, repeated), then one more first component
    (e.g. ``model.`` of a checkpoint saved from a wrapper); ``""`` first."""
    out, prefix = [""], ""
    while True:
        rest = [key[len(prefix) :] for key in keys]
        wrapper = next((w for w in WRAPPER_PREFIXES if all(r.startswith(w) for r in rest)), None)
        if wrapper is None:
            break
        prefix += wrapper
        out.append(prefix)
    for base in list(out):
        first = {key[len(base) :].partition(".")[0] for key in keys}
        if len(first) == 1 and all("." in key[len(base) :] for key in keys):
            out.append(f"{base}{first.pop()}.")
    return out


def place_state_dict(
    state: Mapping[str, Tensor], model: nn.Module
) -> tuple[dict[str, Tensor], str]:
    """``state``'s tensors under the keys of ``model.state_dict()``.

    The keys are placed by taking off a prefix that every key carries (``module.`` of
    DataParallel and DistributedDataParallel, ``_orig_mod.`` of ``torch.compile``, or one
    wrapper's name) and putting on the name of a submodule that holds all of the model's
    weights (``model.`` of :class:`~uniad_plugin.models.Normalized`, whose ``state_dict`` is
    the inner network's with that prefix), whichever makes the keys those of the model. A
    BatchNorm's ``num_batches_tracked`` that the file lacks (checkpoints of old PyTorch) keeps
    the model's value.

    :return: the placed ``state_dict`` and how the keys were mapped (``""`` if as they were)
    :raises ConfigError: if no such mapping places every key; the message lists the keys that
        could not be placed and those the model misses, a few each
    """
    target = model.state_dict()
    wanted = set(target)
    optional = {k for k in wanted if k.rsplit(".", 1)[-1] == "num_batches_tracked"}
    keys = list(state)
    adds = [""] + [f"{name}." for name, _ in model.named_modules() if name]
    adds = [q for q in adds if all(k.startswith(q) for k in wanted)]
    best: tuple[int, str, str] | None = None
    for strip in _strip_prefixes(keys):
        for add in adds:
            placed = {add + k[len(strip) :] for k in keys}
            if placed <= wanted and wanted - placed <= optional:
                mapped = {add + k[len(strip) :]: v for k, v in state.items()}
                for k in wanted - placed:
                    mapped[k] = target[k]
                return mapped, _mapping_words(strip, add)
            score = len(placed & wanted)
            if best is None or score > best[0]:
                best = (score, strip, add)
    _, strip, add = best if best is not None else (0, "", "")
    placed = {add + k[len(strip) :]: k for k in keys}
    unplaced = [placed[k] for k in placed if k not in wanted]
    missing = [k for k in target if k not in placed and k not in optional]
    how = _mapping_words(strip, add)
    raise ConfigError(
        f"the file's keys do not match the model's{f' ({how})' if how else ''}: "
        f"{len(unplaced)} of {len(keys)} could not be placed ({_few(unplaced) or 'none'}); "
        f"{len(missing)} of the model's {len(target)} are missing ({_few(missing) or 'none'})"
    )


def _mapping_words(strip: str, add: str) -> str:
    """How keys were mapped, in words (``""``: as they were)."""
    words = [f"removed {strip!r}" if strip else "", f"added {add!r}" if add else ""]
    return " and ".join(w for w in words if w)


def load_model(
    path: str | os.PathLike, arch: str | Callable[[], nn.Module], num_classes: int = 10
) -> nn.Module:
    """Load a user's classifier: an architecture factory plus a file of its weights.

    The weights are read with ``torch.load(path, weights_only=True)``, which cannot run code
    from the file (see :func:`read_state_dict`); the architecture is the user's own code,
    named by ``arch``. The file may hold a plain ``state_dict``
    (``torch.save(model.state_dict(), path)``) or a checkpoint dict with one under
    ``state_dict``, ``model_state_dict``, ``model`` or ``net`` (e.g. ``{"state_dict": ...,
    "best_prec1": ...}``); keys saved through DataParallel (``module.``) and the weights of
    the inner network of a :class:`~uniad_plugin.models.Normalized` model are placed onto the
    model's keys (see :func:`place_state_dict`).

    :param path: the weights file
    :param arch: ``"package.module:function"`` or ``"path/to/file.py:function"``, a function
        that returns the untrained ``nn.Module`` (see :func:`resolve_architecture`); or that
        function;
        or ``"torchvision:NAME"``
    :param num_classes: classes of a ``torchvision:NAME`` model
    :return: the model with the weights loaded, in eval mode
    :raises ConfigError: if the file is missing or holds no ``state_dict``, the factory cannot
        be imported or does not return a module, or the weights do not fit the architecture
    """
    state = read_state_dict(path)
    model = build_model(arch, num_classes)
    try:
        placed, _ = place_state_dict(state, model)
    except ConfigError as e:
        raise ConfigError(
            f"the weights in {path} do not fit the architecture {arch!r}: {e}"
        ) from None
    try:
        model.load_state_dict(placed)
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
