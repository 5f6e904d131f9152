"""One evaluation for out-of-distribution, adversarial and noise inputs.

:class:`UnifiedBenchmark` is a :class:`pytorch_ood.benchmark.Benchmark` whose test sets are the
ID test set combined with anomaly sets of the three classes of the uniform framework (OOD:
natural data from another distribution, AD: adversarial examples, NS: noise), each an
:class:`~uniad_plugin.anomalies.AnomalySet` tagged with its ``kind``.
:meth:`UnifiedBenchmark.evaluate` scores the ID test set **once** per detector and every anomaly
set once, then computes pytorch-ood's :class:`~pytorch_ood.metrics.OODMetrics` for each set from
the cached scores, and adds per-class means and an overall mean (:func:`summarise`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from pytorch_ood.api import BenchmarkInfo, Detector, GradientDetector, Task
from pytorch_ood.benchmark import Benchmark
from pytorch_ood.metrics import OODMetrics
from torch import Tensor
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

from uniad_plugin import distributed as dist
from uniad_plugin.benchmark._common import one_line
from uniad_plugin.benchmark._common import progress as _progress
from uniad_plugin.benchmark.fitting import (
    extract,
    fit_detectors,
    move_entries,
    predict_shared,
    producers_of,
    sync_entries,
)
from uniad_plugin.benchmark.wiring import DetectorEntry, as_entries, is_builtin
from uniad_plugin.detectors import UniformDetector  # its info cites the framework's paper

__all__ = [
    "ALL",
    "DETECTION_FPR",
    "DR_METRIC",
    "GROUPS",
    "ID_NAME",
    "KINDS",
    "LOWER_IS_BETTER",
    "MEAN",
    "METRICS",
    "OOD_METRICS",
    "SUMMARY_SETS",
    "VAL_NAME",
    "WORST",
    "UnifiedBenchmark",
    "detection_rate",
    "flag_separable",
    "group_mean",
    "summarise",
    "threshold_at_fpr",
]

#: the three anomaly classes, in the order of the tables
KINDS: tuple[str, ...] = ("OOD", "AD", "NS")
#: the metrics of :class:`~pytorch_ood.metrics.OODMetrics` that are reported
OOD_METRICS: tuple[str, ...] = ("AUROC", "AUPR-IN", "AUPR-OUT", "FPR95TPR")
#: false positive rate on held-out ID data at which the detection rate is reported
DETECTION_FPR = 0.05
#: the detection rate at :data:`DETECTION_FPR`, the threshold chosen on held-out ID data
DR_METRIC = "DR@5%FPR"
#: every reported metric
METRICS: tuple[str, ...] = (*OOD_METRICS, DR_METRIC)
#: metrics where a smaller value is better (the worst set is the largest)
LOWER_IS_BETTER: frozenset[str] = frozenset({"FPR95TPR"})
#: key of the ID test set in :attr:`UnifiedBenchmark.scores`
ID_NAME = "ID"
#: key of the held-out ID set (thresholds only, never reported) in :attr:`UnifiedBenchmark.scores`
VAL_NAME = "ID-val"
#: ``Dataset`` value of the mean rows, and ``Class`` value of the overall rows
MEAN = "mean"
ALL = "all"
#: ``Dataset`` value of the worst-set rows (the set an attacker would pick)
WORST = "worst"
#: groups of sets that are averaged apart within their class (an anomaly set's optional
#: ``group`` attribute): OpenOOD's near- and far-OOD sets
GROUPS: tuple[str, ...] = ("near", "far")


def group_mean(group: str, kind: str) -> str:
    """``Dataset`` value of the mean row of a group of a class, e.g. ``"near-OOD mean"``."""
    return f"{group}-{kind} mean"


#: ``Dataset`` values of the summary rows
SUMMARY_SETS: frozenset[str] = frozenset(
    {MEAN, WORST, *(group_mean(g, k) for g in GROUPS for k in KINDS)}
)


def _check_scores(scores: Any, n: int) -> Tensor:
    if not isinstance(scores, Tensor):
        raise TypeError(f"expected the detector to return a Tensor, got {type(scores).__name__}")
    scores = scores.detach().reshape(-1) if scores.dim() > 1 and scores.numel() == n else scores
    if tuple(scores.shape) != (n,):
        raise ValueError(f"expected scores of shape ({n},), got {tuple(scores.shape)}")
    return scores.detach().cpu().double()


def _score_raw(det: Detector, loader: DataLoader, device: torch.device) -> Tensor:
    out = []
    builtin = is_builtin(det)
    use_grad = isinstance(det, GradientDetector) or not builtin
    for x, _ in loader:
        x = x.to(device)
        with torch.set_grad_enabled(use_grad):
            s = det.predict(x)
        if not isinstance(s, Tensor):
            raise TypeError(f"expected predict to return a Tensor, got {type(s).__name__}")
        out.append(s.detach().reshape(-1).cpu())
    return torch.cat(out) if out else torch.empty(0)


class _IntLabels(Dataset):
    """ID samples with plain ``int`` labels, so they collate with anomaly sets' ``-1``."""

    def __init__(self, data: Dataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        x, y = self.data[i][:2]
        return x, int(y)


class UnifiedBenchmark(Benchmark):
    """ID data against OOD, adversarial (AD) and noise (NS) inputs, in one evaluation.

    A :class:`pytorch_ood.benchmark.Benchmark`: :meth:`train_set` is the ID training data,
    :meth:`test_sets` combines the ID test set with each anomaly set (anomalies labelled
    ``-1``) and :attr:`ood_names` names the anomaly sets. :attr:`kinds` maps every set name to
    its class ``"OOD"``, ``"AD"`` or ``"NS"``.

    :meth:`evaluate` differs from the base class in how it computes, not in what: the ID test
    set is scored once per detector and each anomaly set once (logits and penultimate
    features are extracted once per set for all detectors that consume them), and the metrics
    of each set are computed from these cached scores. The raw scores stay in :attr:`scores`
    for plots.

    :param train: ID training data ``(x, y)`` (labels ``>= 0``), used by :meth:`fit`
    :param test: ID test data ``(x, y)``, disjoint from ``train`` and from the attack sources
    :param anomalies: anomaly sets, each with ``kind``, ``name`` and images labelled ``-1``,
        optionally a ``group`` (one of :data:`GROUPS`) whose sets get a mean row of their own
    :param id_val: held-out ID data ``(x, y)``, disjoint from ``train`` and ``test``: the
        threshold of the detection rate at :data:`DETECTION_FPR` is chosen on it (``None``:
        that metric is not computed)
    :param batch_size: batch size of the loaders
    :param device: device to score on
    :param progress: show progress bars
    :raises ValueError: on duplicate set names, an unknown kind or group, or an empty ID test
        set
    """

    info = BenchmarkInfo(
        paper=UniformDetector.info.paper, tasks={Task.CLASSIFICATION}, ai_coded=True
    )

    def __init__(
        self,
        train: Dataset,
        test: Dataset,
        anomalies: Sequence[Dataset],
        *,
        id_val: Dataset | None = None,
        batch_size: int = 256,
        device: str | torch.device = "cpu",
        progress: bool = True,
    ) -> None:
        if len(test) == 0:
            raise ValueError("expected a non-empty ID test set, got 0 samples")
        names = []
        for a in anomalies:
            kind, name = getattr(a, "kind", None), getattr(a, "name", None)
            if kind not in KINDS or not isinstance(name, str):
                raise ValueError(
                    f"expected anomaly sets with kind in {KINDS} and a str name, got "
                    f"{type(a).__name__} with kind={kind!r}, name={name!r}"
                )
            if getattr(a, "group", None) not in (None, *GROUPS):
                raise ValueError(
                    f"expected the group of anomaly set {name!r} in {GROUPS} or None, got "
                    f"{a.group!r}"
                )
            names.append(name)
        dupes = sorted({n for n in names if names.count(n) > 1})
        reserved = sorted({ID_NAME, VAL_NAME, *SUMMARY_SETS} & set(names))
        if dupes or reserved:
            raise ValueError(
                f"expected distinct anomaly set names other than {ID_NAME!r}, {VAL_NAME!r}, "
                f"{MEAN!r}, {WORST!r} and the group means, got {dupes + reserved}"
            )
        if id_val is not None and len(id_val) == 0:
            raise ValueError("expected a non-empty held-out ID set (id_val), got 0 samples")
        if batch_size < 1:
            raise ValueError(f"expected batch_size >= 1, got {batch_size}")
        self._train = train
        self._test = test
        self._val = id_val
        self.anomalies: list[Dataset] = list(anomalies)
        self.ood_names: list[str] = names
        self.kinds: dict[str, str] = {a.name: a.kind for a in self.anomalies}
        #: set name -> group, for the sets that have one
        self.groups: dict[str, str] = {
            a.name: a.group for a in self.anomalies if getattr(a, "group", None) is not None
        }
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.progress = progress
        #: raw scores of the last :meth:`evaluate`: detector -> set name (``"ID"`` for the ID
        #: test set) -> scores of shape ``(N,)``
        self.scores: dict[str, dict[str, Tensor]] = {}
        #: detector entries of the last :meth:`evaluate` (with skip / failure reasons)
        self.entries: list[DetectorEntry] = []
        #: per detector: the threshold at :data:`DETECTION_FPR` on the held-out ID set and the
        #: share of the ID test set above it (its realised false positive rate)
        self.thresholds: dict[str, dict[str, float]] = {}
        #: sets that a model-free ``Pixel*`` baseline separates (AUROC >= 0.9) in the last run
        self.pixel_separable: list[str] = []

    def train_set(self) -> Dataset:
        return self._train

    def test_sets(self, known: bool = True, unknown: bool = True) -> list[Dataset]:
        if not known and not unknown:
            raise ValueError("expected known or unknown to be true, got both false")
        if not unknown:
            return [self._test]
        if not known:
            return list(self.anomalies)
        test = _IntLabels(self._test)
        return [ConcatDataset([test, a]) for a in self.anomalies]

    def fit(
        self, detectors: Detector | DetectorEntry | Sequence[Detector | DetectorEntry]
    ) -> list[DetectorEntry]:
        """Fit every detector on :meth:`train_set` (see :func:`fit_detectors`)."""
        return fit_detectors(
            detectors,
            self._train,
            batch_size=self.batch_size,
            device=self.device,
            progress=self.progress,
        )

    def _sets(self) -> dict[str, Dataset]:
        held_out = {VAL_NAME: self._val} if self._val is not None else {}
        return {ID_NAME: self._test, **held_out, **{a.name: a for a in self.anomalies}}

    def evaluate(  # type: ignore[override]
        self,
        detector: Detector | DetectorEntry | Sequence[Detector | DetectorEntry],
        loader_kwargs: dict | None = None,
        device: str | torch.device | None = None,
    ) -> list[dict[str, Any]]:
        """Score every set once per detector and compute the metrics per set, class and overall.

        Detectors must be fitted (e.g. with :meth:`fit`). Every result row is a dict with
        ``Detector``, ``Class`` (``"OOD"``, ``"AD"``, ``"NS"`` or ``"all"``), ``Dataset`` (set
        name or ``"mean"``), the :data:`METRICS`, ``N`` (number of anomalous samples) and
        ``Error`` (``None``, or why the row has no numbers).

        Per detector: one row per anomaly set (ID test set vs that set); one row per class
        with the unweighted mean over that class's sets (``Dataset="mean"``); one overall row
        (``Class="all"``, ``Dataset="mean"``) with the mean over the class means, so that every
        anomaly class weighs the same however many sets it has. Sets that failed or are empty
        are left out of the means. A detector that was skipped or failed gets only the overall
        row, with the reason in ``Error``.

        :param detector: one detector, entries from :func:`build_detectors`, or a sequence
        :param loader_kwargs: keyword arguments of the loaders (default
            ``{"batch_size": batch_size}``; ``shuffle`` must stay off)
        :param device: device to score on (default: the benchmark's)
        :return: the result rows
        """
        entries = as_entries(detector)
        device = torch.device(device) if device is not None else self.device
        kwargs = {"batch_size": self.batch_size, **(loader_kwargs or {})}
        if kwargs.get("shuffle"):
            raise ValueError("expected loader_kwargs without shuffle=True; scores are per sample")
        sets = self._sets()
        if dist.is_active():  # each rank scores its shard of every set
            sets = {k: Subset(ds, dist.shard_indices(len(ds))) for k, ds in sets.items()}
        loaders = {name: DataLoader(ds, **kwargs) for name, ds in sets.items() if len(ds) > 0}
        move_entries(entries, device, "predict")
        reps = self._shared_representations(entries, loaders, device)
        scores: dict[str, dict[str, Tensor | str]] = {}
        for e in _progress(entries, self.progress, desc="scoring", unit="detector"):
            if e.ok:
                per_set = _score_sets(e, sets, loaders, reps, device)
                if e.ok:
                    scores[e.name] = per_set
        if dist.is_active():
            scores = _gather_scores(entries, scores)
        self.entries = entries
        self.scores = {
            det: {k: v for k, v in s.items() if isinstance(v, Tensor)} for det, s in scores.items()
        }
        rows: list[dict[str, Any]] = []
        self.thresholds = {}
        for e in entries:
            rows.extend(self._detector_rows(e, scores.get(e.name)))
        self.pixel_separable = flag_separable(rows)
        return rows

    def _shared_representations(
        self, entries: Sequence[DetectorEntry], loaders: Mapping[str, DataLoader], device
    ) -> dict[str, dict[int, Tensor]]:
        """Representations shared by logits / features detectors: one pass per set."""
        producers = producers_of(entries)
        reps: dict[str, dict[int, Tensor]] = {}
        if producers:
            for name, loader in _progress(
                loaders.items(), self.progress, desc="extracting representations", unit="set"
            ):
                try:
                    reps[name] = extract(producers, loader, device)[0]
                except Exception:  # noqa: BLE001 - detectors then score the raw inputs
                    reps[name] = {}
        return reps

    def _detector_rows(
        self, e: DetectorEntry, scores: Mapping[str, Tensor | str] | None
    ) -> list[dict[str, Any]]:
        """One detector's rows: per set, per class and overall (one row if it did not run)."""
        if not e.ok or scores is None:
            return [_row(e.name, ALL, MEAN, None, 0, _entry_reason(e))]
        det_rows = []
        id_scores = scores[ID_NAME]
        threshold = self._threshold(e.name, scores)
        for a in self.anomalies:
            s = scores[a.name]
            if isinstance(s, str):
                det_rows.append(_row(e.name, a.kind, a.name, None, len(a), s))
            elif len(s) == 0:
                det_rows.append(_row(e.name, a.kind, a.name, None, 0, "empty set"))
            else:
                try:
                    m = _metrics(id_scores, s, threshold)
                    det_rows.append(_row(e.name, a.kind, a.name, m, len(s), None))
                except Exception as err:  # noqa: BLE001 - e.g. NaN scores
                    det_rows.append(
                        _row(e.name, a.kind, a.name, None, len(s), f"metrics: {one_line(err)}")
                    )
        return [*det_rows, *summarise(det_rows, e.name, self.groups)]

    def _threshold(self, name: str, scores: Mapping[str, Tensor | str]) -> float | None:
        """The detector's threshold at :data:`DETECTION_FPR` on the held-out ID scores."""
        val = scores.get(VAL_NAME)
        if not isinstance(val, Tensor) or len(val) == 0:
            return None
        try:
            thr = threshold_at_fpr(val, DETECTION_FPR)
        except ValueError:  # non-finite held-out scores: the metric stays empty
            return None
        self.thresholds[name] = {
            "threshold": thr,
            "id_test_fpr": detection_rate(scores[ID_NAME], thr),
        }
        return thr


def _score_sets(
    e: DetectorEntry,
    sets: Mapping[str, Dataset],
    loaders: Mapping[str, DataLoader],
    reps: Mapping[str, Mapping[int, Tensor]],
    device: torch.device,
) -> dict[str, Tensor | str]:
    """Scores of one detector per set, or why a set could not be scored; a failure on the
    ID test set marks the entry as failed."""
    per_set: dict[str, Tensor | str] = {}
    for name, ds in sets.items():
        n = len(ds)
        if n == 0:
            per_set[name] = torch.empty(0, dtype=torch.float64)
            continue
        try:
            s = predict_shared(e.detector, reps.get(name, {}), device)
            if s is None:
                s = _score_raw(e.detector, loaders[name], device)
            per_set[name] = _check_scores(s, n)
        except Exception as err:  # noqa: BLE001 - shown in the results
            if name == ID_NAME:
                e.fail("predict on the ID test set", err)
                break
            per_set[name] = f"predict failed: {one_line(err)}"
    return per_set


def _gather_scores(
    entries: Sequence[DetectorEntry], scores: Mapping[str, Mapping[str, Tensor | str]]
) -> dict[str, dict[str, Tensor | str]]:
    """Every rank's scores joined in rank order (the shards are contiguous, so this is data
    order); a set that failed on some rank fails as a whole, an entry that failed on some rank
    fails on all."""
    sync_entries(entries)
    per_rank = dist.gather_objects(dict(scores))
    joined: dict[str, dict[str, Tensor | str]] = {}
    for e in entries:
        if not e.ok:
            continue
        parts = [r.get(e.name) for r in per_rank]
        if any(p is None for p in parts):  # cannot happen once the entries are in sync
            e.status, e.reason = "failed", "predict failed on another process"
            continue
        joined[e.name] = {}
        for name in parts[0]:
            values = [p[name] for p in parts]
            failed = [v for v in values if isinstance(v, str)]
            joined[e.name][name] = failed[0] if failed else torch.cat(values)
    return joined


def _entry_reason(e: DetectorEntry) -> str:
    return f"skipped: {e.reason}" if e.status == "skipped" else str(e.reason)


def threshold_at_fpr(id_val_scores: Tensor, fpr: float = DETECTION_FPR) -> float:
    """The score threshold that flags a share ``fpr`` of held-out ID inputs.

    An input is flagged when its score is strictly above the threshold; the threshold is the
    ``1 - fpr`` quantile (higher interpolation) of the held-out ID scores, so at most ``fpr`` of
    them are flagged. Choose it on ID data that is neither fitted on nor reported.

    :raises ValueError: if ``fpr`` is not in (0, 1) or the scores are empty or not finite
    """
    if not 0 < fpr < 1:
        raise ValueError(f"expected 0 < fpr < 1, got {fpr!r}")
    s = id_val_scores.detach().double().cpu().flatten()
    if len(s) == 0 or not bool(torch.isfinite(s).all()):
        raise ValueError("expected held-out ID scores that are all finite, got none or NaN/inf")
    return float(torch.quantile(s, 1 - fpr, interpolation="higher"))


def detection_rate(scores: Tensor, threshold: float) -> float:
    """Share of ``scores`` strictly above ``threshold`` (the flagged inputs); NaN if empty."""
    s = scores.detach().double().cpu().flatten()
    return float((s > threshold).double().mean()) if len(s) else math.nan


def _metrics(id_scores: Tensor, ood_scores: Tensor, threshold: float | None) -> dict[str, float]:
    labels = torch.cat(
        [
            torch.zeros(len(id_scores), dtype=torch.long),
            -torch.ones(len(ood_scores), dtype=torch.long),
        ]
    )
    result = OODMetrics().update(torch.cat([id_scores, ood_scores]), labels).compute()
    out = {k: float(result[k]) for k in OOD_METRICS}
    out[DR_METRIC] = detection_rate(ood_scores, threshold) if threshold is not None else math.nan
    return out


def _row(
    detector: str,
    kind: str,
    dataset: str,
    metrics: Mapping[str, float] | None,
    n: int,
    error: str | None,
) -> dict[str, Any]:
    row: dict[str, Any] = {"Detector": detector, "Class": kind, "Dataset": dataset}
    for k in METRICS:
        row[k] = float(metrics[k]) if metrics is not None else math.nan
    row["N"] = int(n)
    row["Error"] = error
    return row


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _worst(metric: str, values: Sequence[float]) -> float:
    """The worst value of ``metric``: NaN-free values only; NaN if there is none."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return math.nan
    return max(finite) if metric in LOWER_IS_BETTER else min(finite)


def summarise(
    rows: Sequence[Mapping[str, Any]],
    detector: str,
    groups: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Per-class mean and worst rows and the overall mean and worst rows of one detector's
    per-set rows; with ``groups``, a mean row per group of a class before the class mean.

    The class mean is the unweighted mean over the class's sets without error; the overall
    mean is the mean over the class means (each anomaly class weighs the same). The worst row
    holds, per metric, the worst value over the sets (of the class, or of all classes): the
    set an attacker would pick. A group mean (``Dataset`` :func:`group_mean`, e.g.
    ``"near-OOD mean"``) is the unweighted mean over the group's sets without error, as
    OpenOOD reports near- and far-OOD apart; the class mean still averages all of its sets.

    :param groups: set name -> group (one of :data:`GROUPS`); sets without one are in no group
    """
    groups = groups or {}
    out = []
    class_means: list[dict[str, float]] = []
    scored: list[Mapping[str, Any]] = []
    for kind in KINDS:
        sets = [r for r in rows if r["Class"] == kind and r["Dataset"] not in SUMMARY_SETS]
        if not sets:
            continue
        valid = [r for r in sets if r["Error"] is None]
        n = sum(r["N"] for r in valid)
        if not valid:
            out.append(_row(detector, kind, MEAN, None, 0, "no set of this class was scored"))
            continue
        for g in GROUPS:
            members = [r for r in sets if groups.get(r["Dataset"]) == g]
            scored_members = [r for r in members if r["Error"] is None]
            if scored_members:
                gm = {k: _mean([r[k] for r in scored_members]) for k in METRICS}
                n_group = sum(r["N"] for r in scored_members)
                out.append(_row(detector, kind, group_mean(g, kind), gm, n_group, None))
            elif members:
                error = "no set of this group was scored"
                out.append(_row(detector, kind, group_mean(g, kind), None, 0, error))
        m = {k: _mean([r[k] for r in valid]) for k in METRICS}
        class_means.append(m)
        scored.extend(valid)
        out.append(_row(detector, kind, MEAN, m, n, None))
        worst = {k: _worst(k, [r[k] for r in valid]) for k in METRICS}
        out.append(_row(detector, kind, WORST, worst, n, None))
    if class_means:
        m = {k: _mean([c[k] for c in class_means]) for k in METRICS}
        n = sum(r["N"] for r in scored)
        out.append(_row(detector, ALL, MEAN, m, n, None))
        worst = {k: _worst(k, [r[k] for r in scored]) for k in METRICS}
        out.append(_row(detector, ALL, WORST, worst, n, None))
    else:
        out.append(_row(detector, ALL, MEAN, None, 0, "no anomaly set was scored"))
    return out


def flag_separable(rows: list[dict[str, Any]], min_auroc: float | None = None) -> list[str]:
    """Mark the sets that a model-free ``Pixel*`` baseline separates from the ID test set.

    Every per-set row gets ``PixelSeparable`` (``True`` if some sanity row of the same set has
    AUROC >= ``min_auroc``, default :data:`~uniad_plugin.benchmark.sanity.SEPARABLE_AUROC`);
    summary rows get ``None``.

    :return: the names of the separable sets, in the order of the rows
    """
    from uniad_plugin.benchmark.sanity import SEPARABLE_AUROC
    from uniad_plugin.benchmark.wiring import is_sanity

    limit = SEPARABLE_AUROC if min_auroc is None else min_auroc
    flagged = [
        r["Dataset"]
        for r in rows
        if is_sanity(r["Detector"])
        and r["Dataset"] not in SUMMARY_SETS
        and r["Error"] is None
        and r["AUROC"] >= limit
    ]
    separable = set(flagged)
    flagged = [name for name in dict.fromkeys(r["Dataset"] for r in rows) if name in separable]
    for r in rows:
        per_set = r["Dataset"] not in SUMMARY_SETS and r["Class"] != ALL
        r["PixelSeparable"] = (r["Dataset"] in flagged) if per_set else None
    return flagged
