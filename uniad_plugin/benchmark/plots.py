"""ROC curves and score histograms of a benchmark's raw scores (PNG files, matplotlib Agg)."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from uniad_plugin.benchmark._common import safe_name
from uniad_plugin.benchmark.evaluation import ID_NAME, KINDS, LOWER_IS_BETTER, SUMMARY_SETS

__all__ = ["plot_heatmap", "plot_histograms", "plot_roc"]


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


def _heatmap_grid(
    rows: Sequence[Mapping[str, Any]], metric: str
) -> tuple[list[str], list[tuple[str, str]], Tensor]:
    """Detectors (sanity rows last), ``(class, set)`` columns and the metric's values."""
    from uniad_plugin.benchmark.wiring import is_sanity

    sets = [
        (kind, name)
        for kind in KINDS
        for name in dict.fromkeys(
            r["Dataset"] for r in rows if r["Class"] == kind and r["Dataset"] not in SUMMARY_SETS
        )
    ]
    index = {(r["Detector"], r["Class"], r["Dataset"]): r for r in rows}
    dets = list(dict.fromkeys(r["Detector"] for r in rows))
    dets = [d for d in dets if any((d, *key) in index for key in sets)]
    dets = [d for d in dets if not is_sanity(d)] + [d for d in dets if is_sanity(d)]
    values = torch.full((len(dets), len(sets)), math.nan, dtype=torch.float64)
    for i, d in enumerate(dets):
        for j, key in enumerate(sets):
            r = index.get((d, *key))
            if r is not None and r["Error"] is None:
                values[i, j] = float(r[metric])
    return dets, sets, values


def plot_heatmap(
    rows: Sequence[Mapping[str, Any]],
    out_dir: str | os.PathLike,
    metric: str = "AUROC",
    flagged: Iterable[str] = (),
) -> Path:
    """A heatmap of one metric: a row per detector, a column per anomaly set, grouped by class,
    so that one sees at a glance where each detector fails.

    Sanity rows (``Pixel*``) come last, below a line; sets that a model-free baseline separates
    (``flagged``) carry a ``!`` in their label; every cell is annotated with its value. File
    ``heatmap_<metric>.png``.

    :param rows: rows from :meth:`~uniad_plugin.benchmark.UnifiedBenchmark.evaluate`
    :return: the written file
    """
    from uniad_plugin.benchmark.wiring import is_sanity

    dets, sets, values = _heatmap_grid(rows, metric)
    flagged = set(flagged)
    plt, out = _pyplot(out_dir)
    fig, ax = plt.subplots(figsize=(2.5 + 0.55 * len(sets), 1.6 + 0.38 * len(dets)))
    lower = metric in LOWER_IS_BETTER
    cmap = plt.get_cmap("RdYlGn_r" if lower else "RdYlGn").with_extremes(bad="lightgrey")
    vmin = 0.0 if lower or not metric.startswith("AUROC") else 0.5
    im = ax.imshow(values.numpy(), cmap=cmap, vmin=vmin, vmax=1.0, aspect="auto")
    for (i, j), v in zip(
        torch.cartesian_prod(torch.arange(len(dets)), torch.arange(len(sets))).tolist(),
        values.flatten().tolist(),
        strict=True,
    ):
        if not math.isnan(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7)
    labels = [f"{k} {s}" + (" !" if s in flagged else "") for k, s in sets]
    ax.set_xticks(range(len(sets)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(dets)), dets, fontsize=8)
    for j in range(1, len(sets)):
        if sets[j][0] != sets[j - 1][0]:
            ax.axvline(j - 0.5, color="black", linewidth=1.5)
    n_models = sum(not is_sanity(d) for d in dets)
    if 0 < n_models < len(dets):
        ax.axhline(n_models - 0.5, color="black", linewidth=1.5)
    legend = "; ! = separable by a Pixel* baseline" if flagged else ""
    ax.set_title(f"{metric} per anomaly set{legend}", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.025, pad=0.02)
    return _save(plt, fig, out / f"heatmap_{safe_name(metric)}.png")
