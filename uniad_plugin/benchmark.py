"""One evaluation for out-of-distribution, adversarial and noise inputs.

:class:`UnifiedBenchmark` is a :class:`pytorch_ood.benchmark.Benchmark` whose test sets are the
ID test set combined with anomaly sets of the three classes of the uniform framework (OOD:
natural data from another distribution, AD: adversarial examples, NS: noise), each an
:class:`~uniad_plugin.anomalies.AnomalySet` tagged with its ``kind``.
:meth:`UnifiedBenchmark.evaluate` scores the ID test set **once** per detector and every anomaly
set once, then computes pytorch-ood's :class:`~pytorch_ood.metrics.OODMetrics` for each set from
the cached scores, and adds per-class means and an overall mean.

The rest of the module wires detectors to a classifier by name (:func:`build_detectors`), fits
them on the same data (:func:`fit_detectors`), turns result rows into tables, CSV and JSON
(:func:`results_to_table`, :func:`save_results`), draws ROC curves and score histograms
(:func:`plot_roc`, :func:`plot_histograms`), and runs the complete evaluations behind the
``uniad`` command (:func:`run_default` on scikit-learn's digits, :func:`run_mnist` on MNIST).

A detector that cannot run on the model is *skipped* and one that raises while it is built,
fitted or scored is marked as *failed*; either way its row says why and the other detectors
complete.
"""

from __future__ import annotations

import csv
import hashlib
import importlib
import importlib.util
import inspect
import io
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pytorch_ood.api import (
    BenchmarkInfo,
    Detector,
    FeaturesDetector,
    GradientDetector,
    LogitsDetector,
    Paper,
    Task,
)
from pytorch_ood.benchmark import Benchmark
from pytorch_ood.metrics import OODMetrics
from torch import Tensor, nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, TensorDataset

from uniad_plugin.nn.taps import INPUT_SUFFIX, LOG_SOFTMAX, LOGITS, LayerTaps, default_layers

__all__ = [
    "KINDS",
    "METRICS",
    "ID_NAME",
    "DEFAULT_DETECTORS",
    "UsageError",
    "DetectorEntry",
    "ModelParts",
    "PenultimateEncoder",
    "UnifiedBenchmark",
    "available_detectors",
    "build_detectors",
    "fit_detectors",
    "summarise",
    "results_to_table",
    "results_to_csv",
    "results_to_json",
    "save_results",
    "plot_roc",
    "plot_histograms",
    "DEFAULT_ATTACKS",
    "NOISE_SETS",
    "OFFLINE_OOD_SETS",
    "check_detector_names",
    "default_cache_dir",
    "parse_attacks",
    "load_ood_sets",
    "load_model",
    "check_model_output",
    "trained_model",
    "mnist_splits",
    "build_anomaly_sets",
    "RunResult",
    "run_benchmark",
    "run_default",
    "run_mnist",
]

#: the three anomaly classes, in the order of the tables
KINDS: tuple[str, ...] = ("OOD", "AD", "NS")
#: the metrics of :class:`~pytorch_ood.metrics.OODMetrics` that are reported
METRICS: tuple[str, ...] = ("AUROC", "AUPR-IN", "AUPR-OUT", "FPR95TPR")
#: key of the ID test set in :attr:`UnifiedBenchmark.scores`
ID_NAME = "ID"
#: ``Dataset`` value of the mean rows, and ``Class`` value of the overall mean row
MEAN = "mean"
ALL = "all"

#: detectors of the ``uniad`` command when none are chosen (those that cannot run on the
#: model are skipped with the reason shown)
DEFAULT_DETECTORS: tuple[str, ...] = (
    "UniformDetector",
    "MaxSoftmax",
    "EnergyBased",
    "ODIN",
    "Mahalanobis",
    "MultiMahalanobis",
    "KNN",
    "ViM",
)

#: noise sets and OOD sets offered by the command (real OOD sets need files under a data root)
NOISE_SETS: tuple[str, ...] = ("gaussian", "uniform", "salt_pepper", "noisy_id")
OFFLINE_OOD_SETS: tuple[str, ...] = ("letters", "photos")


class UsageError(ValueError):
    """A user-facing problem with the arguments of a run (unknown name, missing file, ...).

    The ``uniad`` command prints its message on one line and exits with status 2.
    """


# ----------------------------------------------------------------------------- wiring


class PenultimateEncoder(nn.Module):
    """The features a classifier feeds into its last ``nn.Linear`` (its penultimate layer).

    Uses :class:`~uniad_plugin.nn.taps.LayerTaps`, so it works for any model whose head is an
    ``nn.Linear`` that runs in ``forward``, not only for ``nn.Sequential``. Feature maps are
    average-pooled to ``(B, D)``.

    :param model: the classifier
    :param layer: tapped layer, e.g. ``"fc:input"``
    """

    def __init__(self, model: nn.Module, layer: str) -> None:
        super().__init__()
        self.model = model
        self.layer = layer
        self.taps = LayerTaps(model, [layer])

    def forward(self, x: Tensor) -> Tensor:
        return self.taps(x)[1][0]

    def with_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Penultimate features and logits from one forward pass."""
        logits, (z,) = self.taps(x)
        return z, logits


class _As4d(nn.Module):
    """``(B, D)`` -> ``(B, D, 1, 1)`` so that MultiMahalanobis can average over space."""

    def forward(self, x: Tensor) -> Tensor:
        return x[:, :, None, None] if x.dim() == 2 else x


@dataclass
class ModelParts:
    """What the built-in detectors need from a classifier, found by one probe forward pass.

    :param model: the classifier
    :param num_classes: number of classes (width of the logits)
    :param layers: :func:`~uniad_plugin.nn.taps.default_layers` of the model
    :param head: the last ``nn.Linear`` that runs (``None`` if there is none)
    :param encoder: penultimate features (input of ``head``), ``None`` without a head
    :param blocks: consecutive blocks split at the stage boundaries (``nn.Sequential`` only)
    :param split: ``(backbone, head)`` halves of an ``nn.Sequential`` split before its last
        ``nn.Linear`` (``None`` otherwise)
    :param feature_dim: width of the penultimate features
    :param notes: why a part is missing, by part (``"features"``, ``"sequential"``)
    """

    model: nn.Module
    num_classes: int
    layers: list[str]
    head: nn.Linear | None = None
    encoder: PenultimateEncoder | None = None
    blocks: list[nn.Module] | None = None
    split: tuple[nn.Module, nn.Module] | None = None
    feature_dim: int | None = None
    notes: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_model(cls, model: nn.Module, example: Tensor) -> ModelParts:
        """Analyse ``model`` with a probe batch ``example`` (a few inputs)."""
        with torch.no_grad():
            logits = model(example)
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        layers = default_layers(model, example)
        modules = dict(model.named_modules())
        head_layer = next((n for n in layers if n.endswith(INPUT_SUFFIX)), None)
        head = encoder = None
        feature_dim = None
        notes: dict[str, str] = {}
        if head_layer is not None:
            head_name = head_layer[: -len(INPUT_SUFFIX)]
            candidate = modules[head_name]
            if isinstance(candidate, nn.Linear):
                head = candidate
                encoder = PenultimateEncoder(model, head_layer)
                feature_dim = head.in_features
        if head is None:
            notes["features"] = "the model has no nn.Linear head whose input is the features"
        blocks = split = None
        if isinstance(model, nn.Sequential):
            top = [n for n, _ in model.named_children()]
            ends: list[int] = []
            for layer in layers:
                if layer in (LOGITS, LOG_SOFTMAX):
                    continue
                name = layer[: -len(INPUT_SUFFIX)] if layer.endswith(INPUT_SUFFIX) else layer
                idx = top.index(name.split(".")[0])
                ends.append(idx if layer.endswith(INPUT_SUFFIX) else idx + 1)
            ends = sorted(set(e for e in ends if e > 0))
            if ends:
                starts = [0, *ends[:-1]]
                blocks = [
                    nn.Sequential(*list(model.children())[s:e])
                    for s, e in zip(starts, ends, strict=True)
                ]
                blocks[-1] = nn.Sequential(*blocks[-1], _As4d())
            if head is not None and head_layer is not None:
                name = head_layer[: -len(INPUT_SUFFIX)]
                if name in top:
                    h = top.index(name)
                    split = (model[:h], model[h:])
        else:
            notes["sequential"] = (
                "needs consecutive layers; only nn.Sequential models are split automatically"
            )
        return cls(
            model=model,
            num_classes=int(logits.shape[1]),
            layers=layers,
            head=head,
            encoder=encoder,
            blocks=blocks,
            split=split,
            feature_dim=feature_dim,
            notes=notes,
        )


def _need(parts: ModelParts, what: str) -> str | None:
    """Reason why ``parts`` lacks ``what`` ("features", "bias", "sequential", "split")."""
    if what in ("features", "bias", "split") and parts.encoder is None:
        return "needs penultimate features: " + parts.notes.get("features", "none found")
    if what == "bias" and parts.head is not None and parts.head.bias is None:
        return "needs the bias of the last nn.Linear, which has none"
    if what == "sequential" and parts.blocks is None:
        return "MultiMahalanobis " + parts.notes.get("sequential", "found no layer boundaries")
    if what == "split" and parts.split is None:
        return "needs the model split before its last nn.Linear; only nn.Sequential is split"
    return None


def _builtin(name: str) -> type:
    import pytorch_ood.detector as d

    return getattr(d, name)


def _knn(p: ModelParts, kw: dict) -> Detector:
    return _builtin("KNN")(p.encoder, **{"k": 50, **kw})


def _vim(p: ModelParts, kw: dict) -> Detector:
    d = max(1, (p.feature_dim or 2) // 2)
    return _builtin("ViM")(p.encoder, **{"d": d, "w": p.head.weight, "b": p.head.bias, **kw})


def _react(p: ModelParts, kw: dict) -> Detector:
    backbone, head = p.split
    return _builtin("ReAct")(backbone, head, **kw)


#: built-in pytorch-ood detectors the benchmark can wire to a classifier:
#: name -> (requirement, factory(parts, kwargs), one-line description)
_BUILTINS: dict[str, tuple[str | None, Callable[[ModelParts, dict], Detector], str]] = {
    "MaxSoftmax": (None, lambda p, kw: _builtin("MaxSoftmax")(p.model, **kw), "logits"),
    "EnergyBased": (None, lambda p, kw: _builtin("EnergyBased")(p.model, **kw), "logits"),
    "MaxLogit": (None, lambda p, kw: _builtin("MaxLogit")(p.model, **kw), "logits"),
    "Entropy": (None, lambda p, kw: _builtin("Entropy")(p.model, **kw), "logits"),
    "GEN": (None, lambda p, kw: _builtin("GEN")(p.model, **kw), "logits"),
    "KLMatching": (None, lambda p, kw: _builtin("KLMatching")(p.model, **kw), "logits, fitted"),
    "OpenMax": (None, lambda p, kw: _builtin("OpenMax")(p.model, **kw), "logits, fitted"),
    "ODIN": (None, lambda p, kw: _builtin("ODIN")(p.model, **kw), "input gradients"),
    "Mahalanobis": (
        "features",
        lambda p, kw: _builtin("Mahalanobis")(p.encoder, **kw),
        "penultimate features, fitted",
    ),
    "RMD": ("features", lambda p, kw: _builtin("RMD")(p.encoder, **kw), "penultimate, fitted"),
    "KNN": ("features", _knn, "penultimate features, fitted (k=50)"),
    "ViM": ("bias", _vim, "penultimate features + head, fitted (d = D/2)"),
    "fDBD": (
        "features",
        lambda p, kw: _builtin("fDBD")(p.encoder, p.head, **kw),
        "penultimate features + head, fitted",
    ),
    "NCI": (
        "features",
        lambda p, kw: _builtin("NCI")(p.encoder, p.head, **kw),
        "penultimate features + head, fitted",
    ),
    "MahalanobisODIN": (
        "features",
        lambda p, kw: _builtin("MahalanobisODIN")(p.encoder, **kw),
        "penultimate features + input gradients, fitted",
    ),
    "MultiMahalanobis": (
        "sequential",
        lambda p, kw: _builtin("MultiMahalanobis")(p.blocks, **kw),
        "every stage + penultimate features, fitted (nn.Sequential only)",
    ),
    "ReAct": ("split", _react, "clipped penultimate features (nn.Sequential only), fitted"),
}


def _registered() -> dict[str, Any]:
    from uniad_plugin import _bridge

    return dict(_bridge.registered_detectors())


def available_detectors() -> dict[str, str]:
    """Every detector name the benchmark accepts, mapped to a short description.

    Built-in pytorch-ood detectors come first, then the detectors registered in the
    ``pytorch_ood.detectors`` entry-point group (marked ``plugin``).
    """
    names = {name: f"pytorch-ood; {desc}" for name, (_, _, desc) in _BUILTINS.items()}
    for name, ep in sorted(_registered().items()):
        names.setdefault(name, f"plugin ({ep.value})")
    return names


def _canonical(name: str, known: Iterable[str]) -> str | None:
    known = list(known)
    if name in known:
        return name
    lower = {k.lower(): k for k in known}
    return lower.get(name.lower())


@dataclass
class DetectorEntry:
    """A named detector in a benchmark run, or the reason why there is none.

    :param name: name shown in the results
    :param detector: the detector (``None`` if it was skipped or could not be built)
    :param status: ``"ok"``, ``"skipped"`` (cannot run on this model) or ``"failed"`` (raised)
    :param reason: why it was skipped or failed
    """

    name: str
    detector: Detector | None = None
    status: str = "ok"
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok" and self.detector is not None

    def fail(self, stage: str, error: BaseException) -> None:
        """Mark the entry as failed at ``stage`` ("build", "fit", "predict") with ``error``."""
        self.status = "failed"
        self.reason = f"{stage} failed: {_one_line(error)}"


def _one_line(error: BaseException | str) -> str:
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    text = " ".join(str(text).split())
    return text if len(text) <= 300 else text[:297] + "..."


def build_detectors(
    names: Sequence[str],
    model: nn.Module,
    example: Tensor,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    detector_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[DetectorEntry]:
    """Build detectors by name, wired to ``model``.

    Built-in pytorch-ood detectors take the classifier (logits detectors, ODIN), its
    penultimate features (:class:`PenultimateEncoder`: Mahalanobis, KNN, ViM, ...) or, for an
    ``nn.Sequential``, its consecutive blocks (MultiMahalanobis). Registered plugin detectors
    are constructed as ``Cls(model)`` (with ``seed=seed`` if their constructor takes a seed).
    Names are matched case-insensitively.

    :param names: detector names, see :func:`available_detectors`
    :param model: the classifier, in eval mode
    :param example: a few model inputs for one probe forward pass
    :param seed: seed for detectors that take one (and for the global generator while building)
    :param device: device of the detectors
    :param detector_kwargs: extra constructor keyword arguments per detector name
    :return: one entry per name; a detector that cannot run on the model is ``"skipped"``, one
        whose constructor raises is ``"failed"``, both with the reason
    :raises UsageError: if a name is unknown or given twice (before anything is built)
    """
    registered = _registered()
    canonical = check_detector_names(names)
    kwargs_by_name = {k: dict(v) for k, v in (detector_kwargs or {}).items()}
    model.eval()
    parts = ModelParts.from_model(model, example.to(_model_device(model)))
    entries: list[DetectorEntry] = []
    for name in canonical:
        kw = kwargs_by_name.get(name, {})
        entry = DetectorEntry(name)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                if name in _BUILTINS:
                    requirement, factory, _ = _BUILTINS[name]
                    reason = _need(parts, requirement) if requirement else None
                    if reason is not None:
                        entries.append(DetectorEntry(name, None, "skipped", reason))
                        continue
                    detector = factory(parts, kw)
                else:
                    cls = registered[name].load()
                    params = inspect.signature(cls).parameters
                    if "seed" in params and "seed" not in kw:
                        kw = {**kw, "seed": seed}
                    detector = cls(model, **kw)
                entry.detector = detector.to(device)
        except Exception as e:  # noqa: BLE001 - shown in the results
            entry.fail("build", e)
        entries.append(entry)
    return entries


def _model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _as_entries(
    detectors: Detector
    | DetectorEntry
    | Sequence[Detector | DetectorEntry]
    | Mapping[str, Detector],
) -> list[DetectorEntry]:
    if isinstance(detectors, (Detector, DetectorEntry)):
        detectors = [detectors]
    if isinstance(detectors, Mapping):
        items: list[Any] = [DetectorEntry(str(k), v) for k, v in detectors.items()]
    elif isinstance(detectors, Sequence) and not isinstance(detectors, str):
        items = list(detectors)
    else:
        raise TypeError(
            "expected a Detector, a DetectorEntry, a sequence of them or a mapping name -> "
            f"Detector, got {type(detectors).__name__}"
        )
    if not items:
        raise ValueError("expected at least one detector, got none")
    entries: list[DetectorEntry] = []
    seen: dict[str, int] = {}
    for item in items:
        if isinstance(item, DetectorEntry):
            entry = item
        elif isinstance(item, Detector):
            entry = DetectorEntry(type(item).__name__, item)
        else:
            raise TypeError(f"expected Detector or DetectorEntry items, got {type(item).__name__}")
        if not isinstance(entry.detector, (Detector, type(None))):
            raise TypeError(
                f"expected entry {entry.name!r} to hold a Detector, got "
                f"{type(entry.detector).__name__}"
            )
        count = seen.get(entry.name, 0)
        seen[entry.name] = count + 1
        if count:
            entry = DetectorEntry(
                f"{entry.name}#{count + 1}", entry.detector, entry.status, entry.reason
            )
        entries.append(entry)
    return entries


# ------------------------------------------------------------ shared representations


def _logits_producer(det: Detector) -> nn.Module | None:
    if isinstance(det, LogitsDetector) and not isinstance(det, GradientDetector):
        model = getattr(det, "model", None)
        return model if isinstance(model, nn.Module) else None
    return None


def _features_producer(det: Detector) -> Callable[[Tensor], Tensor] | None:
    if isinstance(det, FeaturesDetector) and not isinstance(det, GradientDetector):
        encoder = getattr(det, "encoder", None)
        return encoder if callable(encoder) else None
    return None


def _loader(data: Dataset | DataLoader, batch_size: int) -> DataLoader:
    if isinstance(data, DataLoader):
        return data
    return DataLoader(data, batch_size=batch_size, shuffle=False)


@torch.no_grad()
def _extract(
    producers: Mapping[int, Callable[[Tensor], Tensor]],
    loader: DataLoader,
    device: torch.device,
    desc: str | None = None,
    progress: bool = False,
) -> tuple[dict[int, Tensor], Tensor]:
    """Representations of every producer (logits models, encoders) over ``loader``.

    An encoder :class:`PenultimateEncoder` of a model that is also a logits producer is
    computed in the same forward pass as the logits.
    """
    fused = {
        id(p.model): key
        for key, p in producers.items()
        if isinstance(p, PenultimateEncoder) and id(p.model) in producers
    }
    # encoders served by their model's pass, whatever the order of the producers
    served = set(fused.values())
    out: dict[int, list[Tensor]] = {k: [] for k in producers}
    labels: list[Tensor] = []
    batches = _progress(loader, progress, desc=desc, unit="batch", leave=False)
    for x, y in batches:
        x = x.to(device)
        labels.append(torch.as_tensor(y).cpu())
        for key, producer in producers.items():
            if key in served:
                continue
            if key in fused:
                enc_key = fused[key]
                z, logits = producers[enc_key].with_logits(x)
                out[key].append(logits.detach().cpu())
                out[enc_key].append(z.detach().cpu())
                continue
            r = producer(x)
            if isinstance(r, (tuple, list)):
                r = r[0]
            out[key].append(r.detach().cpu())
    return {k: torch.cat(v) for k, v in out.items()}, torch.cat(labels)


def _progress(iterable, enabled: bool, **kwargs):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)


def _producers(entries: Sequence[DetectorEntry]) -> dict[int, Callable[[Tensor], Tensor]]:
    producers: dict[int, Callable[[Tensor], Tensor]] = {}
    for e in entries:
        if not e.ok:
            continue
        for p in (_logits_producer(e.detector), _features_producer(e.detector)):
            if p is not None:
                producers[id(p)] = p
    return producers


def fit_detectors(
    detectors: Detector | DetectorEntry | Sequence[Detector | DetectorEntry],
    data: Dataset | DataLoader,
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> list[DetectorEntry]:
    """Fit every detector on the same ID data.

    Logits and penultimate features are extracted once for all detectors that consume them
    (``fit_logits`` / ``fit_features``); every other detector gets ``fit(loader)``. A detector
    whose fitting raises is marked ``"failed"`` with the error; the others are still fitted.

    :param detectors: detectors or entries (see :func:`build_detectors`)
    :param data: ID training data, a dataset or loader of ``(x, y)`` with labels ``>= 0``
    :param batch_size: batch size when ``data`` is a dataset
    :param device: device to fit on
    :param progress: show progress bars
    :return: the entries, updated in place
    """
    entries = _as_entries(detectors)
    device = torch.device(device)
    loader = _loader(data, batch_size)
    to_fit = [e for e in entries if e.ok and getattr(e.detector, "requires_fit", True)]
    for e in to_fit:
        try:
            e.detector.to(device)
        except Exception as err:  # noqa: BLE001
            e.fail("fit", err)
    producers = _producers([e for e in to_fit if e.ok])
    reps: dict[int, Tensor] = {}
    labels: Tensor | None = None
    if producers:
        try:
            reps, labels = _extract(producers, loader, device, "extracting train", progress)
        except Exception:  # noqa: BLE001 - fall back to each detector's own fit
            reps = {}
    for e in _progress(to_fit, progress, desc="fitting detectors", unit="detector"):
        if not e.ok:
            continue
        det = e.detector
        try:
            lp, fp = _logits_producer(det), _features_producer(det)
            if lp is not None and id(lp) in reps:
                det.fit_logits(reps[id(lp)].to(device), labels.to(device))
            elif fp is not None and id(fp) in reps:
                det.fit_features(reps[id(fp)].to(device), labels.to(device))
            else:
                det.fit(loader)
        except Exception as err:  # noqa: BLE001 - shown in the results
            e.fail("fit", err)
    return entries


# ------------------------------------------------------------------------- benchmark


def _check_scores(scores: Any, n: int) -> Tensor:
    if not isinstance(scores, Tensor):
        raise TypeError(f"expected the detector to return a Tensor, got {type(scores).__name__}")
    scores = scores.detach().reshape(-1) if scores.dim() > 1 and scores.numel() == n else scores
    if tuple(scores.shape) != (n,):
        raise ValueError(f"expected scores of shape ({n},), got {tuple(scores.shape)}")
    return scores.detach().cpu().double()


def _score_raw(det: Detector, loader: DataLoader, device: torch.device) -> Tensor:
    out = []
    builtin = type(det).__module__.startswith("pytorch_ood.")
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
    :param anomalies: anomaly sets, each with ``kind``, ``name`` and images labelled ``-1``
    :param batch_size: batch size of the loaders
    :param device: device to score on
    :param progress: show progress bars
    :raises ValueError: on duplicate set names, an unknown kind or an empty ID test set
    """

    info = BenchmarkInfo(
        paper=Paper(
            title="A Uniform Framework for Anomaly Detection in Deep Neural Networks",
            venue="Neural Processing Letters",
            year=2022,
            url="https://arxiv.org/abs/2110.03092",
        ),
        tasks={Task.CLASSIFICATION},
        ai_coded=True,
    )

    def __init__(
        self,
        train: Dataset,
        test: Dataset,
        anomalies: Sequence[Dataset],
        *,
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
            names.append(name)
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes or ID_NAME in names:
            raise ValueError(
                f"expected distinct anomaly set names other than {ID_NAME!r}, got duplicates "
                f"{dupes or [ID_NAME]}"
            )
        if batch_size < 1:
            raise ValueError(f"expected batch_size >= 1, got {batch_size}")
        self._train = train
        self._test = test
        self.anomalies: list[Dataset] = list(anomalies)
        self.ood_names: list[str] = names
        self.kinds: dict[str, str] = {a.name: a.kind for a in self.anomalies}
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.progress = progress
        #: raw scores of the last :meth:`evaluate`: detector -> set name (``"ID"`` for the ID
        #: test set) -> scores of shape ``(N,)``
        self.scores: dict[str, dict[str, Tensor]] = {}
        #: detector entries of the last :meth:`evaluate` (with skip / failure reasons)
        self.entries: list[DetectorEntry] = []

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
        return {ID_NAME: self._test, **{a.name: a for a in self.anomalies}}

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
        entries = _as_entries(detector)
        device = torch.device(device) if device is not None else self.device
        kwargs = {"batch_size": self.batch_size, **(loader_kwargs or {})}
        if kwargs.get("shuffle"):
            raise ValueError("expected loader_kwargs without shuffle=True; scores are per sample")
        sets = self._sets()
        loaders = {name: DataLoader(ds, **kwargs) for name, ds in sets.items() if len(ds) > 0}
        for e in entries:
            if e.ok:
                try:
                    e.detector.to(device)
                except Exception as err:  # noqa: BLE001
                    e.fail("predict", err)

        # representations shared by logits / features detectors: one pass per set
        producers = _producers(entries)
        reps: dict[str, dict[int, Tensor]] = {}
        if producers:
            for name, loader in _progress(
                loaders.items(), self.progress, desc="extracting representations", unit="set"
            ):
                try:
                    reps[name] = _extract(producers, loader, device)[0]
                except Exception:  # noqa: BLE001 - detectors then score the raw inputs
                    reps[name] = {}

        scores: dict[str, dict[str, Tensor | str]] = {}
        for e in _progress(entries, self.progress, desc="scoring", unit="detector"):
            if not e.ok:
                continue
            det = e.detector
            per_set: dict[str, Tensor | str] = {}
            lp, fp = _logits_producer(det), _features_producer(det)
            for name, ds in sets.items():
                n = len(ds)
                if n == 0:
                    per_set[name] = torch.empty(0, dtype=torch.float64)
                    continue
                try:
                    shared = reps.get(name, {})
                    if lp is not None and id(lp) in shared:
                        with torch.no_grad():
                            s = det.predict_logits(shared[id(lp)].to(device))
                    elif fp is not None and id(fp) in shared:
                        with torch.no_grad():
                            s = det.predict_features(shared[id(fp)].to(device))
                    else:
                        s = _score_raw(det, loaders[name], device)
                    per_set[name] = _check_scores(s, n)
                except Exception as err:  # noqa: BLE001 - shown in the results
                    if name == ID_NAME:
                        e.fail("predict on the ID test set", err)
                        break
                    per_set[name] = f"predict failed: {_one_line(err)}"
            if e.ok:
                scores[e.name] = per_set

        self.entries = entries
        self.scores = {
            det: {k: v for k, v in s.items() if isinstance(v, Tensor)} for det, s in scores.items()
        }
        rows: list[dict[str, Any]] = []
        for e in entries:
            if not e.ok:
                rows.append(_row(e.name, ALL, MEAN, None, 0, _entry_reason(e)))
                continue
            det_rows = []
            id_scores = scores[e.name][ID_NAME]
            for a in self.anomalies:
                s = scores[e.name][a.name]
                if isinstance(s, str):
                    det_rows.append(_row(e.name, a.kind, a.name, None, len(a), s))
                elif len(s) == 0:
                    det_rows.append(_row(e.name, a.kind, a.name, None, 0, "empty set"))
                else:
                    try:
                        m = _metrics(id_scores, s)
                        det_rows.append(_row(e.name, a.kind, a.name, m, len(s), None))
                    except Exception as err:  # noqa: BLE001 - e.g. NaN scores
                        det_rows.append(
                            _row(e.name, a.kind, a.name, None, len(s), f"metrics: {_one_line(err)}")
                        )
            rows.extend(det_rows)
            rows.extend(summarise(det_rows, e.name))
        return rows


def _entry_reason(e: DetectorEntry) -> str:
    return f"skipped: {e.reason}" if e.status == "skipped" else str(e.reason)


def _metrics(id_scores: Tensor, ood_scores: Tensor) -> dict[str, float]:
    labels = torch.cat(
        [
            torch.zeros(len(id_scores), dtype=torch.long),
            -torch.ones(len(ood_scores), dtype=torch.long),
        ]
    )
    result = OODMetrics().update(torch.cat([id_scores, ood_scores]), labels).compute()
    return {k: float(result[k]) for k in METRICS}


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


def summarise(rows: Sequence[Mapping[str, Any]], detector: str) -> list[dict[str, Any]]:
    """Per-class mean rows and the overall mean row of one detector's per-set rows.

    The class mean is the unweighted mean over the class's sets without error; the overall
    mean is the mean over the class means (each anomaly class weighs the same).
    """
    out = []
    class_means: list[dict[str, float]] = []
    for kind in KINDS:
        sets = [r for r in rows if r["Class"] == kind and r["Dataset"] != MEAN]
        if not sets:
            continue
        valid = [r for r in sets if r["Error"] is None]
        n = sum(r["N"] for r in valid)
        if not valid:
            out.append(_row(detector, kind, MEAN, None, 0, "no set of this class was scored"))
            continue
        m = {k: sum(r[k] for r in valid) / len(valid) for k in METRICS}
        class_means.append(m)
        out.append(_row(detector, kind, MEAN, m, n, None))
    if class_means:
        m = {k: sum(c[k] for c in class_means) / len(class_means) for k in METRICS}
        n = sum(r["N"] for r in out if r["Error"] is None)
        out.append(_row(detector, ALL, MEAN, m, n, None))
    else:
        out.append(_row(detector, ALL, MEAN, None, 0, "no anomaly set was scored"))
    return out


# --------------------------------------------------------------------------- output


def _detectors_in(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r["Detector"] for r in rows))


def _fmt(value: float) -> str:
    return (
        "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"
    )


def results_to_table(
    rows: Sequence[Mapping[str, Any]], metric: str = "AUROC", *, fmt: str = "text"
) -> str:
    """One metric as a table: a line per anomaly set, class mean and overall mean, a column
    per detector; detectors without numbers are listed below with the reason.

    :param rows: rows from :meth:`UnifiedBenchmark.evaluate`
    :param metric: one of :data:`METRICS`
    :param fmt: ``"text"`` (aligned columns for a terminal) or ``"markdown"``
    :raises ValueError: on an unknown metric or format
    """
    if metric not in METRICS:
        raise ValueError(f"expected metric in {METRICS}, got {metric!r}")
    if fmt not in ("text", "markdown"):
        raise ValueError(f"expected fmt 'text' or 'markdown', got {fmt!r}")
    detectors = _detectors_in(rows)
    index = {(r["Detector"], r["Class"], r["Dataset"]): r for r in rows}
    evaluated = [d for d in detectors if any(k[0] == d and k[2] != MEAN for k in index)]
    keys: list[tuple[str, str]] = []
    for kind in KINDS:
        sets = list(
            dict.fromkeys(r["Dataset"] for r in rows if r["Class"] == kind and r["Dataset"] != MEAN)
        )
        keys.extend((kind, s) for s in sets)
        if sets:
            keys.append((kind, MEAN))
    if evaluated:
        keys.append((ALL, MEAN))
    header = ["Class", "Dataset", "N", *evaluated]
    body = []
    for kind, name in keys:
        ns = [index[(d, kind, name)]["N"] for d in evaluated if (d, kind, name) in index]
        line = [kind, name, str(max(ns)) if ns and name != MEAN else ""]
        for d in evaluated:
            r = index.get((d, kind, name))
            if r is None:
                line.append("")
            elif r["Error"] is not None and name != MEAN:
                line.append("err" if r["Error"] != "empty set" else "empty")
            else:
                line.append(_fmt(r[metric]))
        body.append(line)
    lower = " (lower is better)" if metric.startswith("FPR") else ""
    title = f"{metric}{lower}: ID test set vs each anomaly set"
    notes = []
    for d in detectors:
        for r in rows:
            if r["Detector"] == d and r["Error"] is not None and r["Error"] != "empty set":
                where = "" if r["Dataset"] == MEAN and r["Class"] == ALL else f" [{r['Dataset']}]"
                if d not in evaluated or r["Dataset"] != MEAN:
                    notes.append(f"{d}{where}: {r['Error']}")
    if fmt == "markdown":
        lines = [
            "| " + " | ".join(header) + " |",
            "|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|",
        ]
        lines += ["| " + " | ".join(c if c else " " for c in line) + " |" for line in body]
        out = "\n".join([f"**{title}**", "", *lines])
        if notes:
            out += "\n\n" + "\n".join(f"- {n}" for n in notes)
        return out + "\n"
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=True)]
    lines = [title]
    lines.append(
        "  ".join(
            h.ljust(w) if i < 2 else h.rjust(w)
            for i, (h, w) in enumerate(zip(header, widths, strict=True))
        )
    )
    lines.append("  ".join("-" * w for w in widths))
    for line in body:
        lines.append(
            "  ".join(
                c.ljust(w) if i < 2 else c.rjust(w)
                for i, (c, w) in enumerate(zip(line, widths, strict=True))
            )
        )
    if notes:
        lines.append("")
        lines.append("Not evaluated / errors:")
        lines.extend(f"  {n}" for n in notes)
    return "\n".join(lines) + "\n"


def results_to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as CSV (one line per row; missing numbers are empty cells)."""
    buf = io.StringIO()
    fields = ["Detector", "Class", "Dataset", *METRICS, "N", "Error"]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow(
            {
                k: ("" if v is None or (isinstance(v, float) and math.isnan(v)) else v)
                for k, v in r.items()
            }
        )
    return buf.getvalue()


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Tensor):
        return _jsonable(value.tolist())
    return value


def results_to_json(
    rows: Sequence[Mapping[str, Any]], meta: Mapping[str, Any] | None = None
) -> str:
    """The rows (and run details ``meta``) as JSON; missing numbers are ``null``."""
    return json.dumps(_jsonable({"meta": dict(meta or {}), "rows": list(rows)}), indent=2)


def save_results(
    rows: Sequence[Mapping[str, Any]],
    out_dir: str | os.PathLike,
    meta: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``results.json``, ``results.csv``, ``table.txt`` and ``table.md`` to ``out_dir``.

    :return: file kind -> path
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "json": out / "results.json",
        "csv": out / "results.csv",
        "table": out / "table.txt",
        "markdown": out / "table.md",
    }
    files["json"].write_text(results_to_json(rows, meta) + "\n")
    files["csv"].write_text(results_to_csv(rows))
    files["table"].write_text("\n".join(results_to_table(rows, m) for m in METRICS))
    files["markdown"].write_text(
        "\n".join(results_to_table(rows, m, fmt="markdown") for m in METRICS)
    )
    return files


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@-]+", "_", name).strip("_") or "x"


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import auc

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
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
        fig.tight_layout()
        path = out / f"roc_{kind}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        files.append(path)
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
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
        fig.tight_layout()
        path = out / f"hist_{_safe(det)}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        files.append(path)
    return files


# ------------------------------------------------------------------------------ runs


def default_cache_dir() -> Path:
    """``$UNIAD_CACHE`` if set, else ``~/.cache/uniad-plugin``."""
    env = os.environ.get("UNIAD_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "uniad-plugin"


def _attack_norms() -> dict[str, str]:
    from uniad_plugin.anomalies import ATTACKS

    return {name: spec.norm for name, spec in ATTACKS.items()}


def parse_attacks(
    specs: Sequence[str], default_eps: Mapping[str, Sequence[float]]
) -> dict[str, tuple[float, ...]]:
    """Parse attack specs ``"name"`` (default budgets) or ``"name@eps1,eps2"``.

    :param specs: e.g. ``["fgsm", "pgd_l2@0.5,1"]``
    :param default_eps: budgets per attack norm (``"linf"``, ``"l2"``) or per attack name
    :return: attack name -> budgets, in the order given
    :raises UsageError: on an unknown attack, a bad or non-positive eps, or a repeated attack
    """
    norms = _attack_norms()
    out: dict[str, tuple[float, ...]] = {}
    for spec in specs:
        name, _, eps_text = str(spec).partition("@")
        name = name.strip().lower()
        if name not in norms:
            raise UsageError(
                f"unknown attack {name!r}; choose from {', '.join(norms)} "
                "(optionally with budgets, e.g. pgd_linf@0.1,0.2)"
            )
        if name in out:
            raise UsageError(f"attack {name!r} was given twice; list its budgets once: {name}@a,b")
        if eps_text:
            try:
                eps = tuple(float(e) for e in eps_text.split(","))
            except ValueError:
                raise UsageError(
                    f"bad budget in {spec!r}; expected numbers, e.g. {name}@0.1,0.2"
                ) from None
            if not all(math.isfinite(e) and e > 0 for e in eps):
                raise UsageError(f"expected positive finite budgets in {spec!r}")
        else:
            eps = tuple(default_eps.get(name, default_eps.get(norms[name], ())))
            if not eps:
                raise UsageError(f"no default budget for {name!r}; give one, e.g. {name}@0.1")
        out[name] = tuple(dict.fromkeys(eps))
    return out


def _ood_names() -> list[str]:
    from uniad_plugin.anomalies import OOD_DATASETS

    return [*OFFLINE_OOD_SETS, *(n for n in OOD_DATASETS if n not in OFFLINE_OOD_SETS)]


def _check_choice(kind: str, names: Sequence[str], allowed: Sequence[str]) -> list[str]:
    out = []
    for name in names:
        key = name.strip().lower()
        if key not in allowed:
            raise UsageError(f"unknown {kind} {name!r}; choose from {', '.join(allowed)}")
        if key not in out:
            out.append(key)
    return out


def _resolve_factory(arch: str | Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    if callable(arch):
        return arch
    module_name, sep, func_name = str(arch).rpartition(":")
    if not sep or not module_name or not func_name:
        raise UsageError(
            f"expected --arch as 'module:function' or 'file.py:function', got {arch!r}"
        )
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise UsageError(f"architecture file not found: {module_name}")
            spec = importlib.util.spec_from_file_location(f"_uniad_arch_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except UsageError:
        raise
    except Exception as e:  # noqa: BLE001
        raise UsageError(
            f"cannot import {module_name!r} for --arch {arch!r}: {_one_line(e)}"
        ) from e
    factory = getattr(module, func_name, None)
    if not callable(factory):
        raise UsageError(f"{module_name!r} has no function {func_name!r} (from --arch {arch!r})")
    return factory


def load_model(path: str | os.PathLike, arch: str | Callable[[], nn.Module]) -> nn.Module:
    """Load a user's classifier: an architecture factory plus a ``state_dict`` file.

    The weights are read with ``torch.load(path, weights_only=True)``, which cannot run code
    from the file; the architecture is the user's own code, named by ``arch``. Save a model
    with ``torch.save(model.state_dict(), path)`` (a dict ``{"state_dict": ...}`` also works).

    :param path: the ``state_dict`` file
    :param arch: ``"package.module:function"`` or ``"path/to/file.py:function"``, a function
        called without arguments that returns the untrained ``nn.Module``; or that function
    :return: the model with the weights loaded, in eval mode
    :raises UsageError: if the file is missing or not a ``state_dict``, the factory cannot be
        imported or does not return a module, or the weights do not fit the architecture
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"model file not found: {path}")
    factory = _resolve_factory(arch)
    try:
        model = factory()
    except Exception as e:  # noqa: BLE001
        raise UsageError(
            f"--arch {arch!r} raised when called without arguments: {_one_line(e)}"
        ) from e
    if not isinstance(model, nn.Module):
        raise UsageError(
            f"--arch {arch!r} returned a {type(model).__name__}, expected an nn.Module"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise UsageError(
            f"cannot read {path} as a state_dict (save it with torch.save(model.state_dict(), "
            f"path)): {_one_line(e)}"
        ) from e
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise UsageError(
            f"{path} holds a {type(state).__name__}, not a state_dict; save the model with "
            "torch.save(model.state_dict(), path)"
        )
    try:
        model.load_state_dict(state)
    except Exception as e:  # noqa: BLE001
        raise UsageError(
            f"the weights in {path} do not fit the architecture {arch!r}: {_one_line(e)}"
        ) from e
    return model.eval()


def check_model_output(model: nn.Module, example: Tensor, num_classes: int) -> None:
    """Check that ``model`` maps ``example`` to logits of shape ``(B, num_classes)``.

    :raises UsageError: if the model fails on the inputs or its output has another shape
    """
    try:
        with torch.no_grad():
            out = model(example.to(_model_device(model)))
    except Exception as e:  # noqa: BLE001
        raise UsageError(
            f"the model fails on inputs of shape {tuple(example.shape)}: {_one_line(e)}"
        ) from e
    if isinstance(out, (tuple, list)) and out:
        out = out[0]
    shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
    if shape != (len(example), num_classes):
        raise UsageError(
            f"the model's output has shape {shape} for {len(example)} inputs of shape "
            f"{tuple(example.shape[1:])}; expected logits of shape ({len(example)}, {num_classes}) "
            f"for the {num_classes} classes of the data set"
        )


def _hash_dataset(h: Any, data: Dataset) -> None:
    if isinstance(data, TensorDataset):
        tensors = data.tensors
    else:  # pragma: no cover - run_* always pass tensor datasets
        tensors = tuple(torch.stack([torch.as_tensor(s[i]) for s in data]) for i in range(2))
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def trained_model(
    name: str,
    factory: Callable[[], nn.Module],
    train: Dataset,
    *,
    epochs: int,
    seed: int = 0,
    lr: float = 1e-3,
    batch_size: int = 64,
    cache_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> tuple[nn.Module, bool]:
    """A reference classifier trained on ``train``, cached on disk.

    The cache file ``<cache_dir>/models/<name>-<key>.pt`` holds the ``state_dict``; the key
    hashes the name, the training settings, the seed and the training data. A second call with
    the same arguments loads it (``weights_only=True``) instead of training.

    :param name: architecture name (part of the file name)
    :param factory: builds the untrained model
    :param train: training data ``(x, y)``
    :return: the model in eval mode, and whether it came from the cache
    """
    torch.manual_seed(seed)
    model = factory()
    # the architecture itself is part of the key (an edited factory must not load stale weights)
    h = hashlib.sha256(f"{name}|{model!r}|{epochs}|{seed}|{lr}|{batch_size}".encode())
    _hash_dataset(h, train)
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / "models" / f"{name}-{h.hexdigest()[:16]}.pt"
        if path.is_file():
            try:
                model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
                return model.to(device).eval(), True
            except Exception:  # noqa: BLE001 - a corrupt cache file is rebuilt
                torch.manual_seed(seed)
                model = factory()
    from uniad_plugin import models

    loader = DataLoader(
        train, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    models.train_classifier(
        model, loader, epochs=epochs, lr=lr, seed=seed, device=device, progress=progress
    )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save({k: v.cpu() for k, v in model.state_dict().items()}, tmp)
        os.replace(tmp, path)
    return model.eval(), False


def mnist_splits(
    root: str | os.PathLike,
    *,
    seed: int = 0,
    n_test: int = 2000,
    n_attack: int = 1000,
    download: bool = False,
):
    """MNIST through torchvision as :class:`~uniad_plugin.data.Splits` (images 1x28x28 in [0, 1]).

    ``train`` is the 60,000 training images; ``test`` and ``attack`` are disjoint random
    subsets (``n_test`` and ``n_attack`` images, drawn with ``seed``) of the 10,000 test images.

    :raises UsageError: if ``root`` does not exist or holds no MNIST (and ``download`` is off)
    """
    from torchvision.datasets import MNIST

    from uniad_plugin.data import Splits

    root = Path(root)
    if not root.is_dir() and not download:
        raise UsageError(
            f"data root {str(root)!r} does not exist; pass --data-root DIR with MNIST/raw inside, "
            "or add --download"
        )
    if n_test < 1 or n_attack < 1 or n_test + n_attack > 10000:
        raise UsageError(
            f"expected n_test >= 1, n_attack >= 1 and n_test + n_attack <= 10000 (MNIST's test "
            f"set), got {n_test} and {n_attack}"
        )
    try:
        train = MNIST(str(root), train=True, download=download)
        test = MNIST(str(root), train=False, download=download)
    except Exception as e:  # noqa: BLE001
        raise UsageError(
            f"MNIST not found under {str(root)!r} ({_one_line(e)}); expected "
            f"{root / 'MNIST' / 'raw'} with the IDX files, or add --download"
        ) from e

    def tensors(ds) -> tuple[Tensor, Tensor]:
        return ds.data.unsqueeze(1).float().div_(255.0), ds.targets.long()

    x_tr, y_tr = tensors(train)
    x_te, y_te = tensors(test)
    perm = torch.randperm(len(x_te), generator=torch.Generator().manual_seed(seed))
    t_idx, a_idx = perm[:n_test], perm[n_test : n_test + n_attack]
    return Splits(
        train=TensorDataset(x_tr, y_tr),
        test=TensorDataset(x_te[t_idx], y_te[t_idx]),
        attack=TensorDataset(x_te[a_idx], y_te[a_idx]),
        num_classes=10,
    )


def load_ood_sets(
    names: Sequence[str],
    shape: tuple[int, int, int],
    *,
    optional: Sequence[str] = (),
    n: int = 1000,
    data_root: str | os.PathLike | None = None,
    download: bool = False,
    seed: int = 0,
) -> tuple[list[Any], list[str]]:
    """Load OOD sets by name: ``letters`` and ``photos`` offline, real sets from ``data_root``.

    :param names: set names
    :param shape: image shape ``(C, H, W)`` the sets are converted to
    :param optional: names that are left out with a note when they cannot be loaded
    :param n: images per set
    :return: the sets and notes about optional sets left out
    :raises UsageError: if a set that is not optional cannot be loaded
    """
    from uniad_plugin import anomalies as an

    sets: list[Any] = []
    notes: list[str] = []
    for name in names:
        if name == "letters":
            sets.append(an.font_letters(n, shape, seed=seed))
        elif name == "photos":
            sets.append(an.photo_patches(n, shape, seed=seed))
        else:
            try:
                if data_root is None:
                    raise UsageError(f"the OOD set {name!r} needs --data-root (or --download)")
                sets.append(an.load_ood(name, data_root, shape, download=download, n=n, seed=seed))
            except Exception as e:  # noqa: BLE001
                if name in optional:
                    notes.append(f"OOD set {name!r} left out: {_one_line(e)}")
                    continue
                if isinstance(e, UsageError):
                    raise
                raise UsageError(f"cannot load the OOD set {name!r}: {_one_line(e)}") from e
    return sets, notes


def build_anomaly_sets(
    model: nn.Module,
    attack_data: Dataset,
    shape: tuple[int, int, int],
    *,
    attacks: Mapping[str, Sequence[float]],
    noise: Sequence[str],
    ood: Sequence[str],
    optional_ood: Sequence[str] = (),
    n_noise: int = 1000,
    n_ood: int = 1000,
    n_attack: int | None = None,
    attack_params: Mapping[str, Mapping[str, Any]] | None = None,
    prebuilt: Sequence[Any] = (),
    data_root: str | os.PathLike | None = None,
    download: bool = False,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> tuple[list[Any], list[str]]:
    """The anomaly sets of one run, in the order OOD, AD, NS.

    :param model: the classifier that is attacked
    :param attack_data: ID samples the adversarials are crafted from (not the ID test set);
        ``noisy_id`` also draws its images from here
    :param shape: image shape ``(C, H, W)``
    :param attacks: attack name -> budgets (see :func:`parse_attacks`)
    :param noise: noise set names (``gaussian``, ``uniform``, ``salt_pepper``, ``noisy_id``)
    :param ood: OOD set names (``letters``, ``photos`` offline; real sets need ``data_root``)
    :param optional_ood: names in ``ood`` that are left out with a note when their files are
        missing (instead of raising)
    :param n_noise: images per noise set (``noisy_id``: at most this many)
    :param n_ood: images per OOD set
    :param n_attack: attack at most this many correctly classified sources per attack
    :param attack_params: foolbox keyword overrides per attack name
    :param prebuilt: sets made beforehand (e.g. OOD sets from :func:`load_ood_sets`), put first
    :return: the sets and notes about optional sets left out
    :raises UsageError: if a requested real OOD set cannot be loaded
    """
    from uniad_plugin import anomalies as an

    sets, notes = load_ood_sets(
        ood,
        shape,
        optional=optional_ood,
        n=n_ood,
        data_root=data_root,
        download=download,
        seed=seed,
    )
    sets = [*prebuilt, *sets]
    adv_dir = Path(cache_dir) / "adversarial" if cache_dir is not None else None
    for attack, budgets in attacks.items():
        for eps in budgets:
            sets.append(
                an.make_adversarial(
                    model,
                    attack_data,
                    attack,
                    float(eps),
                    device=device,
                    seed=seed,
                    cache_dir=adv_dir,
                    progress=progress,
                    max_samples=n_attack,
                    attack_params=dict((attack_params or {}).get(attack, {})) or None,
                )
            )
    for name in noise:
        if name == "gaussian":
            sets.append(an.gaussian_noise(n_noise, shape, seed=seed))
        elif name == "uniform":
            sets.append(an.uniform_noise(n_noise, shape, seed=seed))
        elif name == "salt_pepper":
            sets.append(an.salt_and_pepper(n_noise, shape, seed=seed))
        elif name == "noisy_id":
            sets.append(an.noisy_id(attack_data, seed=seed, max_samples=n_noise))
    return sets, notes


@dataclass
class RunResult:
    """Everything one run produced.

    :param rows: result rows (see :meth:`UnifiedBenchmark.evaluate`)
    :param table: the AUROC table as printed by the ``uniad`` command
    :param meta: run details (data, model, anomaly sets, detectors, timings, notes)
    :param files: written files by kind (``json``, ``csv``, ``table``, ``markdown``, plots)
    :param benchmark: the benchmark, with the raw scores in ``benchmark.scores``
    :param model: the evaluated classifier
    """

    rows: list[dict[str, Any]]
    table: str
    meta: dict[str, Any]
    files: dict[str, Any]
    benchmark: UnifiedBenchmark
    model: nn.Module


def _set_summary(a: Any) -> dict[str, Any]:
    info = {
        k: v for k, v in getattr(a, "info", {}).items() if k not in ("source_labels", "adv_pred")
    }
    return {"name": a.name, "kind": a.kind, "n": len(a), "info": info}


def run_benchmark(
    model: nn.Module,
    splits: Any,
    *,
    detectors: Sequence[str] = DEFAULT_DETECTORS,
    attacks: Mapping[str, Sequence[float]],
    noise: Sequence[str] = NOISE_SETS,
    ood: Sequence[str] = OFFLINE_OOD_SETS,
    optional_ood: Sequence[str] = (),
    prebuilt: Sequence[Any] = (),
    notes: Sequence[str] = (),
    n_noise: int = 1000,
    n_ood: int = 1000,
    n_attack: int | None = None,
    n_fit: int | None = None,
    attack_params: Mapping[str, Mapping[str, Any]] | None = None,
    detector_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    data_root: str | os.PathLike | None = None,
    download: bool = False,
    seed: int = 0,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = "uniad-results",
    plots: bool = True,
    progress: bool = True,
    batch_size: int = 256,
    meta: Mapping[str, Any] | None = None,
) -> RunResult:
    """Fit the detectors on ``splits.train`` and evaluate them against OOD, AD and NS sets.

    The common engine of :func:`run_default` and :func:`run_mnist`: builds the anomaly sets
    (:func:`build_anomaly_sets`, adversarials crafted from ``splits.attack``), the detectors
    (:func:`build_detectors`), fits them on the ID training data (a random subset of ``n_fit``
    samples if given), evaluates with :class:`UnifiedBenchmark`, and writes results and plots to
    ``out_dir`` (``None``: write nothing).

    :param model: the classifier, in eval mode, inputs in [0, 1]
    :param prebuilt: anomaly sets made beforehand (put first), e.g. OOD sets
    :param notes: notes to keep in the run details
    :param splits: :class:`~uniad_plugin.data.Splits` (``train``, ``test``, ``attack``,
        ``num_classes``)
    :return: the rows, the printed table, run details and the written files
    """
    t0 = time.perf_counter()
    device = torch.device(device)
    model = model.to(device).eval()
    shape = tuple(splits.test.tensors[0].shape[1:])
    example = splits.test.tensors[0][:8]
    check_model_output(model, example, splits.num_classes)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    sets, more_notes = build_anomaly_sets(
        model,
        splits.attack,
        shape,
        attacks=attacks,
        noise=noise,
        ood=ood,
        optional_ood=optional_ood,
        prebuilt=prebuilt,
        n_noise=n_noise,
        n_ood=n_ood,
        n_attack=n_attack,
        attack_params=attack_params,
        data_root=data_root,
        download=download,
        seed=seed,
        cache_dir=cache_dir,
        device=device,
        progress=progress,
    )
    timings["anomaly_sets_s"] = time.perf_counter() - t

    train = splits.train
    if n_fit is not None and n_fit < len(train):
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(train), generator=g)[:n_fit]
        train = TensorDataset(*(t[idx] for t in splits.train.tensors))
    bench = UnifiedBenchmark(
        train, splits.test, sets, batch_size=batch_size, device=device, progress=progress
    )
    entries = build_detectors(
        detectors, model, example, seed=seed, device=device, detector_kwargs=detector_kwargs
    )
    t = time.perf_counter()
    bench.fit(entries)
    timings["fit_s"] = time.perf_counter() - t
    t = time.perf_counter()
    rows = bench.evaluate(entries)
    timings["evaluate_s"] = time.perf_counter() - t

    from uniad_plugin.models import accuracy

    run_meta: dict[str, Any] = dict(meta or {})
    run_meta.update(
        {
            "seed": seed,
            "device": str(device),
            "input_shape": list(shape),
            "num_classes": splits.num_classes,
            "n_train": len(splits.train),
            "n_fit": len(train),
            "n_test": len(splits.test),
            "n_attack_split": len(splits.attack),
            "test_accuracy": accuracy(
                model, DataLoader(splits.test, batch_size=batch_size), device
            ),
            "anomaly_sets": [_set_summary(a) for a in sets],
            "detectors": [
                {"name": e.name, "status": e.status, "reason": e.reason} for e in entries
            ],
            "notes": [*notes, *more_notes],
            "metric_notes": (
                "per set: ID test set vs that set (OODMetrics, anomalies positive); class "
                "mean: unweighted mean over the class's sets; overall: mean of the class means"
            ),
        }
    )
    table = results_to_table(rows, "AUROC")
    files: dict[str, Any] = {}
    if out_dir is not None:
        t = time.perf_counter()
        if plots:
            plot_dir = Path(out_dir) / "plots"
            files["roc"] = plot_roc(bench.scores, bench.kinds, plot_dir)
            files["histograms"] = plot_histograms(bench.scores, bench.kinds, plot_dir)
        timings["plots_s"] = time.perf_counter() - t
        timings["total_s"] = time.perf_counter() - t0 + float(run_meta.get("model_s", 0.0))
        run_meta["timings"] = {k: round(v, 2) for k, v in timings.items()}
        files.update(save_results(rows, out_dir, run_meta))
    else:
        timings["total_s"] = time.perf_counter() - t0
        run_meta["timings"] = {k: round(v, 2) for k, v in timings.items()}
    return RunResult(
        rows=rows, table=table, meta=run_meta, files=files, benchmark=bench, model=model
    )


@dataclass(frozen=True)
class _Profile:
    """Defaults of one data set for :func:`run_default` / :func:`run_mnist`."""

    name: str
    arch: str
    epochs: int
    batch_size: int
    eps: Mapping[str, tuple[float, ...]]
    ood: tuple[str, ...]
    optional_ood: tuple[str, ...]
    n_noise: int
    n_ood: int
    n_attack: int | None
    n_fit: int | None
    attack_params: Mapping[str, Mapping[str, Any]]
    fast: Mapping[str, Any]


#: C&W settings of the command: 3 binary-search steps of 50 Adam steps from c = 1 (instead
#: of foolbox's 5 x 100 from c = 0.01): 150 instead of 500 gradient steps per input
_CW_DEFAULT: dict[str, Any] = {"steps": 50, "binary_search_steps": 3, "initial_const": 1.0}

_DIGITS = _Profile(
    name="digits",
    arch="uniad_plugin.models:digits_cnn",
    epochs=30,
    batch_size=64,
    eps={"linf": (0.1, 0.2), "l2": (0.5, 1.0), "deepfool": (1.0,), "cw_l2": (1.0,)},
    ood=OFFLINE_OOD_SETS,
    optional_ood=(),
    n_noise=450,
    n_ood=450,
    n_attack=None,
    n_fit=None,
    attack_params={"cw_l2": _CW_DEFAULT},
    fast={
        "n_noise": 100,
        "n_ood": 100,
        "n_attack": 50,
        "eps": {"linf": (0.2,), "l2": (1.0,), "deepfool": (1.0,), "cw_l2": (1.0,)},
        "attack_params": {"cw_l2": {**_CW_DEFAULT, "steps": 20, "binary_search_steps": 2}},
    },
)

_MNIST = _Profile(
    name="mnist",
    arch="uniad_plugin.models:lenet",
    epochs=3,
    batch_size=128,
    eps={"linf": (0.1, 0.3), "l2": (1.0, 2.0), "deepfool": (2.0,), "cw_l2": (2.0,)},
    ood=(*OFFLINE_OOD_SETS, "fashion_mnist", "kmnist"),
    optional_ood=("fashion_mnist", "kmnist"),
    n_noise=1000,
    n_ood=1000,
    n_attack=500,
    n_fit=None,
    attack_params={"cw_l2": _CW_DEFAULT},
    fast={
        "n_noise": 100,
        "n_ood": 100,
        "n_attack": 50,
        "n_test": 200,
        "n_fit": 2000,
        "epochs": 1,
        "eps": {"linf": (0.3,), "l2": (2.0,), "deepfool": (2.0,), "cw_l2": (2.0,)},
        "attack_params": {"cw_l2": {**_CW_DEFAULT, "steps": 20, "binary_search_steps": 2}},
    },
)

#: default attacks (all five, at the profile's budgets)
DEFAULT_ATTACKS: tuple[str, ...] = ("fgsm", "pgd_linf", "pgd_l2", "deepfool", "cw_l2")


def check_detector_names(names: Sequence[str]) -> list[str]:
    """Canonical detector names (case-insensitive match).

    :raises UsageError: if a name is unknown or repeated
    """
    known = list(available_detectors())
    out: list[str] = []
    for name in names:
        c = _canonical(name, known)
        if c is None:
            raise UsageError(
                f"unknown detector {name!r}; choose from {', '.join(known)} "
                "(see 'uniad --list-detectors')"
            )
        if c in out:
            raise UsageError(f"detector {c!r} was given twice")
        out.append(c)
    return out


def _check_device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except Exception:  # noqa: BLE001
        raise UsageError(f"bad device {device!r}; expected e.g. 'cpu' or 'cuda:0'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    return dev


def _run_profile(
    profile: _Profile,
    splits_fn: Callable[[], Any],
    *,
    detectors: Sequence[str] | None,
    attacks: Sequence[str] | None,
    eps: Mapping[str, Sequence[float]] | None,
    noise: Sequence[str] | None,
    ood: Sequence[str] | None,
    model_path: str | os.PathLike | None,
    arch: str | Callable[[], nn.Module] | None,
    data_root: str | os.PathLike | None,
    download: bool,
    seed: int,
    device: str | torch.device,
    fast: bool,
    cache_dir: str | os.PathLike | None,
    out_dir: str | os.PathLike | None,
    plots: bool,
    progress: bool,
    epochs: int | None,
    n_noise: int | None,
    n_ood: int | None,
    n_attack: int | None,
    n_fit: int | None,
    attack_params: Mapping[str, Mapping[str, Any]] | None,
    detector_kwargs: Mapping[str, Mapping[str, Any]] | None,
) -> RunResult:
    fastp = dict(profile.fast) if fast else {}
    dev = _check_device(device)
    det_names = check_detector_names(detectors if detectors is not None else DEFAULT_DETECTORS)
    eps_defaults = dict(fastp.get("eps", profile.eps))
    for key in eps or {}:  # a budget per norm replaces the per-attack defaults of that norm
        for name, norm in _attack_norms().items():
            if norm == key:
                eps_defaults.pop(name, None)
    eps_defaults.update(eps or {})
    attack_specs = parse_attacks(attacks if attacks is not None else DEFAULT_ATTACKS, eps_defaults)
    noise_names = _check_choice("noise set", noise if noise is not None else NOISE_SETS, NOISE_SETS)
    ood_names = _check_choice("OOD set", ood if ood is not None else profile.ood, _ood_names())
    optional = profile.optional_ood if ood is None else ()
    for name, value in (("epochs", epochs), ("n_noise", n_noise), ("n_ood", n_ood)):
        if value is not None and value < 1:
            raise UsageError(f"expected {name} >= 1, got {value}")
    for name, value in (("n_attack", n_attack), ("n_fit", n_fit)):
        if value is not None and value < 1:
            raise UsageError(f"expected {name} >= 1, got {value}")
    if not (det_names or attack_specs or noise_names or ood_names):
        raise UsageError("nothing to evaluate")
    if not (attack_specs or noise_names or ood_names):
        raise UsageError("expected at least one anomaly set (attack, noise or OOD set)")
    if not det_names:
        raise UsageError("expected at least one detector")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()

    splits = splits_fn()
    shape = tuple(splits.test.tensors[0].shape[1:])
    ood_sets, notes = load_ood_sets(
        ood_names,
        shape,
        optional=optional,
        n=n_ood or fastp.get("n_ood", profile.n_ood),
        data_root=data_root,
        download=download,
        seed=seed,
    )
    meta: dict[str, Any] = {"dataset": profile.name, "fast": fast}
    t = time.perf_counter()
    if model_path is not None:
        model = load_model(model_path, arch or profile.arch)
        meta["model"] = {"source": str(model_path), "arch": str(arch or profile.arch)}
    else:
        if arch is not None:
            factory = _resolve_factory(arch)
            arch_name = _safe(str(arch).rpartition(":")[2])
        else:
            factory = _resolve_factory(profile.arch)
            arch_name = profile.arch.rpartition(":")[2]
        check_model_output(factory().eval(), splits.test.tensors[0][:8], splits.num_classes)
        n_epochs = epochs if epochs is not None else fastp.get("epochs", profile.epochs)
        model, cached = trained_model(
            arch_name,
            factory,
            splits.train,
            epochs=n_epochs,
            seed=seed,
            batch_size=profile.batch_size,
            cache_dir=cache,
            device=dev,
            progress=progress,
        )
        meta["model"] = {
            "source": "trained",
            "arch": str(arch or profile.arch),
            "epochs": n_epochs,
            "cached": cached,
        }
    meta["model_s"] = round(time.perf_counter() - t, 2)
    check_model_output(model.to(dev), splits.test.tensors[0][:8], splits.num_classes)

    params = {k: dict(v) for k, v in profile.attack_params.items()}
    for k, v in {**fastp.get("attack_params", {}), **(attack_params or {})}.items():
        params[k] = {**params.get(k, {}), **v}
    return run_benchmark(
        model,
        splits,
        detectors=det_names,
        attacks=attack_specs,
        noise=noise_names,
        ood=(),
        prebuilt=ood_sets,
        notes=notes,
        n_noise=n_noise or fastp.get("n_noise", profile.n_noise),
        n_ood=n_ood or fastp.get("n_ood", profile.n_ood),
        n_attack=n_attack or fastp.get("n_attack", profile.n_attack),
        n_fit=n_fit or fastp.get("n_fit", profile.n_fit),
        attack_params=params,
        detector_kwargs=detector_kwargs,
        data_root=data_root,
        download=download,
        seed=seed,
        device=dev,
        cache_dir=cache,
        out_dir=out_dir,
        plots=plots,
        progress=progress,
        meta=meta,
    )


def run_default(
    *,
    detectors: Sequence[str] | None = None,
    attacks: Sequence[str] | None = None,
    eps: Mapping[str, Sequence[float]] | None = None,
    noise: Sequence[str] | None = None,
    ood: Sequence[str] | None = None,
    model_path: str | os.PathLike | None = None,
    arch: str | Callable[[], nn.Module] | None = None,
    data_root: str | os.PathLike | None = None,
    download: bool = False,
    seed: int = 0,
    device: str | torch.device = "cpu",
    fast: bool = False,
    cache_dir: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = "uniad-results",
    plots: bool = True,
    progress: bool = True,
    epochs: int | None = None,
    n_noise: int | None = None,
    n_ood: int | None = None,
    n_attack: int | None = None,
    n_fit: int | None = None,
    attack_params: Mapping[str, Mapping[str, Any]] | None = None,
    detector_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
) -> RunResult:
    """The embedded default evaluation, offline: scikit-learn's digits (1x8x8).

    A small CNN (:func:`~uniad_plugin.models.digits_cnn`, 30 epochs, cached) or the user's
    model; the default detectors (:data:`DEFAULT_DETECTORS`); OOD sets ``letters`` and
    ``photos``; all five attacks, crafted from the correctly classified inputs of the attack
    split: ``fgsm`` and ``pgd_linf`` at L-inf budgets 0.1 and 0.2, ``pgd_l2`` at L2 budgets 0.5
    and 1.0, ``deepfool`` and ``cw_l2`` at L2 budget 1.0 (these two search the smallest
    perturbation and the budget only caps it, so each budget would rerun the same search; ask
    for more with e.g. ``"cw_l2@0.5,1"``); C&W with 3 x 50 steps from c = 1 instead of
    foolbox's 5 x 100 from c = 0.01, to stay within the time budget (override with
    ``attack_params``); the four noise sets. ``fast=True`` shrinks everything for tests (one
    budget per attack, 50 attack sources, 100 images per OOD / noise set, C&W 2 x 20 steps).

    :param detectors: detector names (default :data:`DEFAULT_DETECTORS`)
    :param attacks: attack specs ``"name"`` or ``"name@eps1,eps2"`` (default: all five)
    :param eps: default budgets of attacks given without ``@``, by norm (``"linf"``,
        ``"l2"``) or attack name
    :param noise: noise set names (default: all four)
    :param ood: OOD set names (default ``letters``, ``photos``; real sets need ``data_root``)
    :param model_path: a ``state_dict`` file of the user's classifier (see :func:`load_model`)
    :param arch: ``"module:function"`` building the architecture (default: the reference CNN)
    :param data_root: folder of real OOD data sets
    :param download: let torchvision download real OOD data sets
    :param seed: seed of every random choice (splits, training, attacks, noise, detectors)
    :param device: ``"cpu"`` or ``"cuda[:i]"``
    :param fast: small sizes, for tests
    :param cache_dir: cache of trained models and adversarials (default
        :func:`default_cache_dir`)
    :param out_dir: output folder (``None``: write nothing)
    :param plots: draw ROC curves and histograms (PNG)
    :param progress: show progress bars
    :param epochs: training epochs of the reference model
    :param n_noise: images per noise set
    :param n_ood: images per OOD set
    :param n_attack: correctly classified sources attacked per attack and budget
    :param n_fit: fit the detectors on this many training samples (default: all)
    :param attack_params: foolbox overrides per attack, e.g. ``{"cw_l2": {"steps": 50}}``
    :param detector_kwargs: constructor overrides per detector name
    :raises UsageError: on bad arguments (before any heavy work)
    """
    from uniad_plugin.data import digits_splits

    return _run_profile(
        _DIGITS,
        lambda: digits_splits(seed),
        detectors=detectors,
        attacks=attacks,
        eps=eps,
        noise=noise,
        ood=ood,
        model_path=model_path,
        arch=arch,
        data_root=data_root,
        download=download,
        seed=seed,
        device=device,
        fast=fast,
        cache_dir=cache_dir,
        out_dir=out_dir,
        plots=plots,
        progress=progress,
        epochs=epochs,
        n_noise=n_noise,
        n_ood=n_ood,
        n_attack=n_attack,
        n_fit=n_fit,
        attack_params=attack_params,
        detector_kwargs=detector_kwargs,
    )


def run_mnist(
    data_root: str | os.PathLike,
    *,
    detectors: Sequence[str] | None = None,
    attacks: Sequence[str] | None = None,
    eps: Mapping[str, Sequence[float]] | None = None,
    noise: Sequence[str] | None = None,
    ood: Sequence[str] | None = None,
    model_path: str | os.PathLike | None = None,
    arch: str | Callable[[], nn.Module] | None = None,
    download: bool = False,
    seed: int = 0,
    device: str | torch.device = "cpu",
    fast: bool = False,
    cache_dir: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = "uniad-results",
    plots: bool = True,
    progress: bool = True,
    epochs: int | None = None,
    n_test: int | None = None,
    n_noise: int | None = None,
    n_ood: int | None = None,
    n_attack: int | None = None,
    n_fit: int | None = None,
    attack_params: Mapping[str, Mapping[str, Any]] | None = None,
    detector_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
) -> RunResult:
    """The real-scale evaluation on MNIST (1x28x28) through torchvision.

    LeNet (:func:`~uniad_plugin.models.lenet`, 3 epochs on the 60,000 training images, cached)
    or the user's model; ``n_test`` (2,000) ID test images and a disjoint attack split of
    1,000 images (or ``n_attack`` if larger), both from MNIST's test set; OOD sets
    ``letters``, ``photos`` and, when their files are under ``data_root`` (or with ``download``), ``fashion_mnist`` and
    ``kmnist``; all five attacks on ``n_attack`` (500) correctly classified sources each:
    ``fgsm``, ``pgd_linf`` at L-inf budgets 0.1 and 0.3, ``pgd_l2`` at L2 budgets 1.0 and 2.0,
    ``deepfool`` and ``cw_l2`` at L2 budget 2.0; the four noise sets (1,000 images each).
    The detectors are fitted on all 60,000 training images, or on a random (``seed``) subset
    of ``n_fit``. Other parameters as in :func:`run_default`.

    :param data_root: folder with ``MNIST/raw`` (torchvision's layout)
    :param n_test: ID test images scored
    :raises UsageError: on bad arguments or missing data (before any heavy work)
    """
    fastp = _MNIST.fast if fast else {}
    n_test_ = n_test or fastp.get("n_test", 2000)
    # the attack split: 1,000 images (noisy_id draws from it too), more if n_attack asks
    n_src = fastp["n_attack"] if fast else max(1000, n_attack or 0)
    n_src = max(1, min(n_src, 10000 - n_test_))
    return _run_profile(
        _MNIST,
        lambda: mnist_splits(
            data_root, seed=seed, n_test=n_test_, n_attack=n_src, download=download
        ),
        detectors=detectors,
        attacks=attacks,
        eps=eps,
        noise=noise,
        ood=ood,
        model_path=model_path,
        arch=arch,
        data_root=data_root,
        download=download,
        seed=seed,
        device=device,
        fast=fast,
        cache_dir=cache_dir,
        out_dir=out_dir,
        plots=plots,
        progress=progress,
        epochs=epochs,
        n_noise=n_noise,
        n_ood=n_ood,
        n_attack=n_attack,
        n_fit=n_fit,
        attack_params=attack_params,
        detector_kwargs=detector_kwargs,
    )
