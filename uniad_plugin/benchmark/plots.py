"""ROC curves and score histograms of a benchmark's raw scores (PNG files, matplotlib Agg)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from uniad_plugin.benchmark._common import safe_name
from uniad_plugin.benchmark.evaluation import ID_NAME, KINDS

__all__ = ["plot_histograms", "plot_roc"]


def _pyplot(out_dir: str | os.PathLike) -> tuple[Any, Path]:
    """matplotlib's pyplot on the Agg backend, and the output folder (created)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return plt, out


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _roc(id_scores: Tensor, ood_scores: Tensor) -> tuple[Any, Any]:
    from sklearn.metrics import roc_curve

    y = torch.cat([torch.zeros(len(id_scores)), torch.ones(len(ood_scores))]).numpy()
    s = torch.cat([id_scores, ood_scores]).double().numpy()
    fpr, tpr, _ = roc_curve(y, s)
    return fpr, tpr


def _pooled(scores: Mapping[str, Tensor], kinds: Mapping[str, str], kind: str) -> Tensor | None:
    parts = [s for name, s in scores.items() if kinds.get(name) == kind and len(s) > 0]
    parts = [p[torch.isfinite(p)] for p in parts]
    return torch.cat(parts) if parts else None


def plot_roc(
    scores: Mapping[str, Mapping[str, Tensor]],
    kinds: Mapping[str, str],
    out_dir: str | os.PathLike,
) -> list[Path]:
    """One ROC figure per anomaly class: a curve per detector, ID test set against all sets of
    that class pooled. Files ``roc_OOD.png``, ``roc_AD.png``, ``roc_NS.png``.

    :param scores: :attr:`UnifiedBenchmark.scores`
    :param kinds: :attr:`UnifiedBenchmark.kinds`
    :param out_dir: folder for the PNG files
    :return: the written files
    """
    from sklearn.metrics import auc

    plt, out = _pyplot(out_dir)
    files = []
    for kind in KINDS:
        fig, ax = plt.subplots(figsize=(5, 5))
        drawn = False
        for det, per_set in scores.items():
            id_s = per_set.get(ID_NAME)
            pooled = _pooled(per_set, kinds, kind)
            if id_s is None or pooled is None:
                continue
            id_s = id_s[torch.isfinite(id_s)]
            fpr, tpr = _roc(id_s, pooled)
            ax.plot(fpr, tpr, label=f"{det} ({auc(fpr, tpr):.3f})")
            drawn = True
        if not drawn:
            plt.close(fig)
            continue
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("false positive rate (ID flagged)")
        ax.set_ylabel("true positive rate (anomalies flagged)")
        ax.set_title(f"ROC: ID test vs {kind} (all sets pooled)")
        ax.legend(fontsize=7, loc="lower right")
        files.append(_save(plt, fig, out / f"roc_{kind}.png"))
    return files


def _hist_range(groups: Mapping[str, Tensor]) -> tuple[float, float]:
    q = torch.tensor([0.005, 0.995], dtype=torch.float64)
    everything = torch.cat([v.double() for v in groups.values()])
    lo, hi = (float(v) for v in torch.quantile(everything, q))
    if "ID" in groups:
        id_lo, id_hi = (float(v) for v in torch.quantile(groups["ID"].double(), q))
        width = id_hi - id_lo
        lo, hi = max(lo, id_lo - 2 * width), min(hi, id_hi + 2 * width)
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    return lo, hi


def plot_histograms(
    scores: Mapping[str, Mapping[str, Tensor]],
    kinds: Mapping[str, str],
    out_dir: str | os.PathLike,
    bins: int = 50,
) -> list[Path]:
    """One figure per detector: score histograms (densities) of the ID test set and of each
    anomaly class (sets pooled). Files ``hist_<detector>.png``. Anomaly scores can be orders of
    magnitude above the ID scores, so the axis spans the 0.5-99.5 % quantiles of all scores but
    at most two ID ranges beyond the ID scores' own 0.5-99.5 % range; values outside are counted
    in the edge bins.

    :param scores: :attr:`UnifiedBenchmark.scores`
    :param kinds: :attr:`UnifiedBenchmark.kinds`
    :param out_dir: folder for the PNG files
    :param bins: number of bins
    :return: the written files
    """
    plt, out = _pyplot(out_dir)
    files = []
    for det, per_set in scores.items():
        groups = {}
        if ID_NAME in per_set:
            groups["ID"] = per_set[ID_NAME][torch.isfinite(per_set[ID_NAME])]
        for kind in KINDS:
            pooled = _pooled(per_set, kinds, kind)
            if pooled is not None:
                groups[kind] = pooled
        groups = {k: v for k, v in groups.items() if len(v) > 0}
        if not groups:
            continue
        lo, hi = _hist_range(groups)
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, values in groups.items():
            v = values.double().clamp(lo, hi).numpy()
            ax.hist(
                v,
                bins=bins,
                range=(lo, hi),
                density=True,
                histtype="step",
                label=f"{label} (n={len(v)})",
            )
        ax.set_xlabel("outlier score (larger = more anomalous; edge bins hold the values beyond)")
        ax.set_ylabel("density")
        ax.set_title(det)
        ax.legend(fontsize=8)
        files.append(_save(plt, fig, out / f"hist_{safe_name(det)}.png"))
    return files
