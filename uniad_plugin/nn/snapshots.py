"""Training snapshots of a target network and the per-sample losses R2-AD2 differentiates.

:func:`train_snapshots` copies the model, trains the copy further for some epochs, copies it
again, ... (as the authors of R2-AD2 do); the model itself is never modified. Snapshots are
plain state dicts, so :func:`~uniad_plugin.nn.pergrad.per_sample_grad_features` evaluates
gradients at them with ``state=`` without loading them into the model.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from uniad_plugin._utils import first_output, minibatches, seeded_generator

__all__ = ["as_state", "predicted_label_ce", "reconstruction_bce", "train_snapshots"]


def predicted_label_ce(out: Tensor, _target: Tensor | None) -> Tensor:
    """Cross-entropy of the logits w.r.t. the model's own predicted class (no label needed)."""
    return nn.functional.cross_entropy(out, out.argmax(-1).detach())


def reconstruction_bce(out: Tensor, x: Tensor) -> Tensor:
    """Mean binary cross-entropy of a reconstruction ``out`` in (0, 1) and the input ``x``.

    Written out (as Keras computes it, predictions clipped to ``[1e-7, 1 - 1e-7]``) so that
    inputs outside [0, 1], e.g. the Gaussian counter-examples, are allowed.
    """
    p = out.reshape(x.shape).clamp(1e-7, 1 - 1e-7)
    return -(x * p.log() + (1 - x) * (1 - p).log()).mean()


def as_state(snapshot: nn.Module | Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A detached copy of a module's state dict (or of a given state dict)."""
    if isinstance(snapshot, nn.Module):
        snapshot = snapshot.state_dict()
    if not isinstance(snapshot, Mapping):
        raise TypeError(
            f"expected snapshots as nn.Modules or state dicts, got {type(snapshot).__name__}"
        )
    return {str(k): v.detach().clone() for k, v in snapshot.items()}


def train_snapshots(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    n_snapshots: int,
    epochs: int,
    lr: float,
    batch_size: int,
    autoencoder: bool,
    seed: int,
    device: torch.device,
) -> list[dict[str, Tensor]]:
    """``n_snapshots`` states: the model's, then a copy trained ``epochs`` more epochs (Adam
    ``lr``) after each previous one.

    A classifier is trained with cross-entropy on the labels ``y``, an autoencoder
    (``autoencoder=True``) with :func:`reconstruction_bce`. Minibatch order and the global RNG
    (dropout) are seeded with ``seed``.
    """
    snaps = [as_state(model)]
    if n_snapshots == 1:
        return snaps
    if len(x) == 0:
        raise ValueError("R2AD2: expected ID samples (labels >= 0) to train snapshots, got none")
    target = copy.deepcopy(model).to(device).train().requires_grad_(True)
    opt = torch.optim.Adam(target.parameters(), lr=lr)
    gen = seeded_generator(seed)
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(seed)
        for _ in range(n_snapshots - 1):
            for idx in minibatches(len(x), batch_size, epochs, gen):
                xb = x[idx].to(device)
                if autoencoder:
                    loss = reconstruction_bce(first_output(target(xb)), xb)
                else:
                    loss = nn.functional.cross_entropy(first_output(target(xb)), y[idx].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            snaps.append(as_state(target))
    return snaps
