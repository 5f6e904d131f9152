"""Shared pieces of the MNIST protocol scripts (``a3_protocol.py``, ``r2ad2_protocol.py``)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from uniad_plugin.data import mnist_dataset
from uniad_plugin.nn.svdd import BatchedSVDD, fit_svdd


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def load_mnist(root: Path, train: bool) -> tuple[Tensor, Tensor]:
    """MNIST images in [0, 1] of shape (N, 1, 28, 28) and their labels (no download)."""
    return mnist_dataset(root, train=train).tensors


def pick(y: Tensor, classes: list[int], n: int | None, gen: torch.Generator) -> Tensor:
    """Indices of the samples of ``classes`` in random order; the first ``n`` (all if n <= 0)."""
    idx = torch.nonzero(torch.isin(y, torch.tensor(classes))).flatten()
    idx = idx[torch.randperm(len(idx), generator=gen)]
    return idx if n is None or n <= 0 else idx[:n]


def svdd_scores(
    z_train: Tensor, z_test: Tensor, hidden: Sequence[int], epochs: int, seed: int
) -> np.ndarray:
    """One-class soft-boundary Deep SVDD (nu = 0.1) baseline: squared distances of ``z_test``."""
    gen = torch.Generator().manual_seed(seed)
    model = BatchedSVDD(1, z_train.shape[1], hidden=hidden, rep_dim=32)
    fit_svdd(
        model,
        z_train,
        torch.zeros(len(z_train), dtype=torch.long),
        nu=0.1,
        epochs=epochs,
        warmup_epochs=min(5, epochs),
        generator=gen,
    )
    with torch.no_grad():
        return model.dist2(z_test, torch.zeros(len(z_test), dtype=torch.long)).numpy()


def batched(fn: Callable[[Tensor], Tensor], x: Tensor, size: int = 500) -> np.ndarray:
    """``fn`` applied to ``x`` in chunks, without autograd, as one numpy array."""
    with torch.no_grad():
        return torch.cat([fn(c) for c in x.split(size)]).cpu().numpy()


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    vals = np.asarray(values, dtype=float)
    return {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0}


def write_results(out: Path, md: str, payload: dict[str, Any]) -> None:
    """Write ``out.md`` and ``out.json`` and print the Markdown."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(md)
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2))
    print(md)
