"""Image files as tensors on the 8-bit grid: the evaluation transform of a data set
(:func:`eval_transform`) and batched loading of chosen images (:func:`load_images`).

Decoding files is per image by nature (PIL); everything after it is batched by a
:class:`~torch.utils.data.DataLoader`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

__all__ = ["ToUnit", "eval_transform", "load_images", "missing_files"]


class ToUnit:
    """uint8 image tensor ``k`` -> float ``k / 255`` (exactly the 8-bit grid; picklable)."""

    def __call__(self, x: Tensor) -> Tensor:
        return x.float().div_(255.0)

    def __repr__(self) -> str:
        return "ToUnit()"


def eval_transform(size: int, crop: float = 1.0, *, unit: bool = False) -> Any:
    """The evaluation transform of a data set of ``size`` x ``size`` inputs: RGB, resize of the
    shorter side to ``round(size / crop)`` (bilinear, anti-aliased), center crop to ``size``,
    then a uint8 tensor ``(3, size, size)`` (or ``k / 255`` floats with ``unit``).

    ``crop=1`` (the CIFAR-style resize and crop) or ``crop=0.875`` (ImageNet's usual resize
    to 256 and center crop to 224).

    :raises ValueError: on ``size < 1`` or ``crop`` outside (0, 1]
    """
    from pytorch_ood.utils import ToRGB
    from torchvision import transforms

    if size < 1 or not 0 < crop <= 1:
        raise ValueError(f"expected size >= 1 and crop in (0, 1], got {size} and {crop}")
    steps = [
        ToRGB(),
        transforms.Resize(int(round(size / crop))),
        transforms.CenterCrop(size),
        transforms.PILToTensor(),
    ]
    return transforms.Compose([*steps, ToUnit()] if unit else steps)


def missing_files(paths: Sequence[str | os.PathLike]) -> list[str]:
    """The entries of ``paths`` that are not files, in order."""
    return [str(p) for p in paths if not os.path.isfile(p)]


def load_images(
    dataset: Dataset, indices: Sequence[int] | Tensor | None = None, batch_size: int = 64
) -> tuple[Tensor, Tensor]:
    """The images ``indices`` of a dataset whose transform returns uint8 tensors (see
    :func:`eval_transform`), as floats ``k / 255`` ``(N, C, H, W)`` and int64 labels.

    :raises ValueError: if no image is chosen
    """
    if indices is not None:
        dataset = Subset(dataset, [int(i) for i in indices])
    if len(dataset) == 0:
        raise ValueError("expected at least one image, got none")
    xs, ys = [], []
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        xs.append(x)
        ys.append(torch.as_tensor(y))
    return torch.cat(xs).float().div_(255.0), torch.cat(ys).long()
