"""Input checks and small utilities shared by the detectors of this package."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
from pytorch_ood.api import ModelNotSetException
from torch import Tensor, nn


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


class ModelMixin:
    """The model checks every detector of this package shares (``model`` and ``device`` set
    by the detector)."""

    model: nn.Module | None
    device: str | torch.device | None

    def _require_model(self) -> nn.Module:
        if self.model is None:
            raise ModelNotSetException
        return self.model

    def _target_device(self) -> torch.device:
        dev = self.device
        return torch.device(dev) if dev is not None else torch.device("cpu")


def model_dtype(model: nn.Module | None) -> torch.dtype:
    """The floating dtype of the model's parameters (float32 for a model without any)."""
    if model is not None:
        for p in model.parameters():
            if p.dtype.is_floating_point:
                return p.dtype
    return torch.float32


def check_inputs(
    x: object,
    input_shape: tuple[int, ...] | None,
    what: str = "x",
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Validate a batch of model inputs and return it.

    Floating point inputs of another precision are cast to ``dtype`` (the model's), if given.

    :raises TypeError: if ``x`` is not a floating point tensor
    :raises ValueError: on a wrong shape (compared with ``input_shape``, the per-sample shape
        seen at fit time) or on NaN/inf values
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"expected {what} to be a torch.Tensor, got {type(x).__name__}")
    if not torch.is_floating_point(x):
        raise TypeError(
            f"expected {what} to be a floating point tensor (the model's input), got dtype "
            f"{x.dtype}; convert e.g. uint8 images with x.float() / 255"
        )
    if input_shape is not None and tuple(x.shape[1:]) != tuple(input_shape):
        raise ValueError(
            f"expected {what} of shape (B, {', '.join(map(str, input_shape))}) as seen at fit "
            f"time, got {tuple(x.shape)}"
        )
    # a NaN or inf anywhere makes the sum non-finite: one cheap reduction in the common case,
    # the element-wise check only when the sum is not finite (it may also just overflow)
    if x.numel() and not torch.isfinite(x.sum()) and not torch.isfinite(x).all():
        raise ValueError(f"expected finite values in {what}, got NaN or inf")
    if dtype is not None and x.dtype != dtype:
        x = x.to(dtype)
    return x


def check_labels(y: object, batch_size: int) -> Tensor:
    """Validate a batch of integer class labels of length ``batch_size``."""
    if not isinstance(y, Tensor):
        y = torch.as_tensor(y)
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.dim() != 1:
        raise ValueError(
            f"expected integer class labels of shape ({batch_size},), got dtype {y.dtype} and "
            f"shape {tuple(y.shape)}"
        )
    if len(y) != batch_size:
        raise ValueError(f"expected {batch_size} labels for {batch_size} inputs, got {len(y)}")
    return y.long()


def split_known(x_list: list[Tensor], y: Tensor, who: str) -> tuple[list[Tensor], Tensor]:
    """Drop samples with labels < 0 (known anomalies) that an unsupervised detector ignores."""
    known = y >= 0
    if not bool(known.all()):
        warnings.warn(
            f"{who} is fitted on in-distribution data only; ignoring {int((~known).sum())} "
            "samples with labels < 0",
            stacklevel=3,
        )
        x_list = [t[known] for t in x_list]
        y = y[known]
    return x_list, y


def check_classes(y: Tensor, n_classes: int, who: str) -> None:
    """Require labels in ``[0, n_classes)`` with every class present."""
    if len(y) == 0:
        raise ValueError(f"{who}: expected in-distribution samples with labels >= 0, got none")
    if int(y.max()) >= n_classes:
        raise ValueError(
            f"{who}: expected class labels in [0, {n_classes}) to match the model's "
            f"{n_classes} outputs, got label {int(y.max())}"
        )
    counts = torch.bincount(y, minlength=n_classes)
    if (counts == 0).any():
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(
            f"{who}: expected training samples for every class 0..{n_classes - 1}, "
            f"got none for class(es) {missing}"
        )
