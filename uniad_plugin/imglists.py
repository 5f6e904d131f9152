"""OpenOOD's image lists (``<relative path> <label>`` per line): where they are looked for
(:func:`imglist_dirs`) and the one a data set or an OOD test set is read from
(:func:`find_imglist`).

A low-level module shared by the ID data (:func:`~uniad_plugin.data.imagenet200_splits`) and
the OpenOOD test sets (:mod:`uniad_plugin.anomalies.openood`); it imports nothing from the
package.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["find_imglist", "imglist_dirs"]


def imglist_dirs(root: str | os.PathLike | None = None) -> list[Path]:
    """Where image lists are looked for: ``<root>/benchmark_imglist`` (OpenOOD's layout), then
    pytorch-ood's cache ``<torch.hub.get_dir()>/openood_benchmark_imglist/benchmark_imglist``."""
    cache = Path(torch.hub.get_dir()) / "openood_benchmark_imglist" / "benchmark_imglist"
    return ([Path(root) / "benchmark_imglist"] if root is not None else []) + [cache]


def find_imglist(
    subdir: str, fname: str, root: str | os.PathLike | None = None, download: bool = False
) -> Path:
    """The image list ``<subdir>/<fname>`` from :func:`imglist_dirs`; with ``download``,
    pytorch-ood fetches OpenOOD's lists into its cache if they are nowhere.

    :raises FileNotFoundError: if it is missing (one line: the file, where it was looked for,
        and ``download=True``)
    """
    candidates = [d / subdir / fname for d in imglist_dirs(root)]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None and download:
        from pytorch_ood.benchmark.img.openood import _ensure_imglists

        try:
            _ensure_imglists(True)
        except Exception as e:  # noqa: BLE001 - e.g. gdown not installed, no network
            raise FileNotFoundError(
                f"OpenOOD image list {subdir}/{fname} not found and its download failed: "
                f"{type(e).__name__}: {e}"
            ) from e
        found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise FileNotFoundError(
            f"OpenOOD image list {subdir}/{fname} not found; pass download=True (pytorch-ood "
            "fetches OpenOOD's image lists; needs gdown) or put OpenOOD's benchmark_imglist "
            f"folder in {' or in '.join(str(p.parent.parent) for p in candidates)}"
        )
    return found
