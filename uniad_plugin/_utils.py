"""Small torch helpers shared by the whole package, each written once.

Nothing here is public API; detectors, anomaly generators and the benchmark import from here
instead of keeping their own copies.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "atomic_save",
    "eval_mode",
    "hash_tensor",
    "minibatches",
    "model_device",
    "model_dtype",
    "seeded_generator",
]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode and restore each one's previous mode afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes:
            m.train(mode)


def first_output(out: Any) -> Any:
    """The logits of a model's output: the output itself, or the first element of a tuple or
    list (models that also return features, e.g. ``(logits, features)``)."""
    if isinstance(out, (tuple, list)) and out:
        return out[0]
    return out


def model_device(model: nn.Module | None, default: torch.device | None = None) -> torch.device:
    """The device of the model's first parameter or buffer (``default``, else CPU, if none)."""
    if model is not None:
        for p in model.parameters():
            return p.device
        for b in model.buffers():
            return b.device
    return default if default is not None else torch.device("cpu")


def model_dtype(model: nn.Module | None) -> torch.dtype:
    """The floating dtype of the model's parameters (float32 for a model without any)."""
    if model is not None:
        for p in model.parameters():
            if p.dtype.is_floating_point:
                return p.dtype
    return torch.float32


def seeded_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A :class:`torch.Generator` seeded with ``seed``.

    :raises TypeError: if ``seed`` is not an int
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"expected seed to be an int, got {type(seed).__name__}")
    return torch.Generator(device=device).manual_seed(seed)


def hash_tensor(h: Any, t: Tensor) -> None:
    """Feed a tensor's dtype, size and bytes into the hashlib object ``h``."""
    t = t.detach().cpu().contiguous().reshape(-1)
    h.update(f"{t.dtype}|{t.numel()}|".encode())
    if t.numel():
        h.update(t.view(torch.uint8).numpy().tobytes())


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename it into place.

    A reader never sees a half-written file, and concurrent writers of the same path leave
    one complete file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def minibatches(
    n: int,
    batch_size: int,
    epochs: int,
    generator: torch.Generator,
    device: str | torch.device | None = None,
) -> Iterator[Tensor]:
    """Index batches of ``epochs`` shuffled passes over ``n`` samples.

    Each epoch's permutation is drawn from ``generator`` lazily, when the epoch starts, so other
    draws from the same generator between batches keep their order. ``device``: where the
    indices go (they are drawn on the generator's device).
    """
    for _ in range(epochs):
        perm = torch.randperm(n, generator=generator)
        if device is not None:
            perm = perm.to(device)
        yield from torch.split(perm, batch_size)
