"""The ``max_fit_rows`` bound of :class:`~uniad_plugin.detectors.uniform.UniformDetector`:
which collected rows a fit keeps (see :mod:`uniad_plugin.nn.sampling`)."""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import Tensor

from uniad_plugin.nn.sampling import bounded_rows, class_cap, position_keys

log = logging.getLogger("uniad_plugin.detectors.uniform")

__all__ = ["UniformBound"]


class UniformBound:
    """The rows a fit keeps under ``max_fit_rows`` (a mixin: it reads the detector's
    ``max_fit_rows``, ``holdout`` and ``seed``)."""

    def rows_kept(self, keys: Tensor, y: Tensor, class_counts: Tensor) -> Tensor | None:
        """The rows the ``max_fit_rows`` bound keeps of collected rows (gathered from several
        processes before the rows themselves travel): indices into ``keys`` / ``y``, or
        ``None`` where the bound keeps everything.

        :param class_counts: ``(K,)`` or ``(shards, K)`` ID samples per class (summed)
        """
        counts = torch.as_tensor(class_counts).long().cpu()
        counts = counts.reshape(-1, counts.shape[-1]).sum(0)
        if class_cap(counts, self.max_fit_rows) is None:
            return None
        return bounded_rows(keys, y, counts.to(y.device), self.max_fit_rows)

    @staticmethod
    def select_collected(inputs: dict[str, Any], rows: Tensor) -> dict[str, Any]:
        """The output of :meth:`collect_fit_inputs` restricted to ``rows`` (in that order);
        the class counts stay those of all the data."""
        out = dict(inputs)
        out["features"] = [f[rows] for f in inputs["features"]]
        for name in ("y", "logits", "keys"):
            if inputs.get(name) is not None:
                out[name] = inputs[name][rows]
        return out

    def _bounded(self, zs, y, pred, K, keys, class_counts):
        """The rows of the ``max_fit_rows`` sample (all of them, in order, below the bound)."""
        per_class = torch.bincount(y, minlength=K)
        if class_counts is None:
            counts = per_class
        else:
            counts = torch.as_tensor(class_counts).long().cpu()
            counts = counts.reshape(-1, counts.shape[-1]).sum(0) if counts.dim() else counts
            if counts.shape != (K,) or (counts < per_class.cpu()).any():
                raise ValueError(
                    f"expected class_counts of shape ({K},) or (shards, {K}), at least the rows "
                    f"given per class {per_class.tolist()}, got {counts.tolist()}"
                )
        cap = class_cap(counts, self.max_fit_rows)
        if cap is None:
            return zs, y, pred
        need = math.ceil(1 / self.holdout)
        if cap < need:
            enough = int(torch.clamp(counts, max=need).sum())
            raise ValueError(
                f"expected max_fit_rows to keep at least {need} ID samples per class (to hold out "
                f"{self.holdout:.0%} of each), but max_fit_rows={self.max_fit_rows} keeps {cap} per "
                f"class of {int(counts.sum())} samples in {K} classes; set max_fit_rows >= "
                f"{enough} (or raise holdout)"
            )
        if keys is None:
            keys = position_keys(len(y), self.seed, y.device)
        keep = bounded_rows(keys, y, counts.to(y.device), self.max_fit_rows)
        log.info(
            "UniformDetector: fitting on %d of %d ID samples (max_fit_rows=%d, %d per class)",
            len(keep),
            int(counts.sum()),
            self.max_fit_rows,
            cap,
        )
        return [z[keep] for z in zs], y[keep], pred[keep]
