"""Fitting detectors on the same ID data, with representations shared between detectors.

Logits and penultimate features are extracted once per data set for every detector that
consumes them (:class:`~pytorch_ood.api.LogitsDetector` / :class:`~pytorch_ood.api.FeaturesDetector`
without input gradients); :class:`~uniad_plugin.benchmark.evaluation.UnifiedBenchmark` uses the
same extraction when it scores.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from pytorch_ood.api import Detector, FeaturesDetector, GradientDetector, LogitsDetector
from pytorch_ood.detector import MultiMahalanobis
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from uniad_plugin import distributed as dist
from uniad_plugin.benchmark._common import one_line
from uniad_plugin.benchmark._common import progress as _progress
from uniad_plugin.benchmark.wiring import DetectorEntry, PenultimateEncoder, as_entries

__all__ = ["fit_detectors"]


def logits_producer(det: Detector) -> nn.Module | None:
    if isinstance(det, LogitsDetector) and not isinstance(det, GradientDetector):
        model = getattr(det, "model", None)
        return model if isinstance(model, nn.Module) else None
    return None


def features_producer(det: Detector) -> Callable[[Tensor], Tensor] | None:
    if isinstance(det, FeaturesDetector) and not isinstance(det, GradientDetector):
        encoder = getattr(det, "encoder", None)
        return encoder if callable(encoder) else None
    return None


def _loader(data: Dataset | DataLoader, batch_size: int) -> DataLoader:
    if isinstance(data, DataLoader):
        return data
    return DataLoader(data, batch_size=batch_size, shuffle=False)


@torch.no_grad()
def extract(
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


def producers_of(entries: Sequence[DetectorEntry]) -> dict[int, Callable[[Tensor], Tensor]]:
    producers: dict[int, Callable[[Tensor], Tensor]] = {}
    for e in entries:
        if not e.ok:
            continue
        for p in (logits_producer(e.detector), features_producer(e.detector)):
            if p is not None:
                producers[id(p)] = p
    return producers


def move_entries(entries: Sequence[DetectorEntry], device: torch.device, stage: str) -> None:
    """Move every usable detector to ``device``; one that raises is marked failed at ``stage``."""
    for e in entries:
        if e.ok:
            try:
                e.detector.to(device)
            except Exception as err:  # noqa: BLE001 - shown in the results
                e.fail(stage, err)


def _shared_input(det: Detector, reps: Mapping[int, Tensor]) -> tuple[str, Tensor] | None:
    """``("logits", z)`` or ``("features", z)`` if ``reps`` holds the detector's input."""
    lp, fp = logits_producer(det), features_producer(det)
    if lp is not None and id(lp) in reps:
        return "logits", reps[id(lp)]
    if fp is not None and id(fp) in reps:
        return "features", reps[id(fp)]
    return None


def predict_shared(
    det: Detector, reps: Mapping[int, Tensor], device: torch.device
) -> Tensor | None:
    """Scores from the shared logits or features of ``det`` (``None`` if ``reps`` lacks them)."""
    shared = _shared_input(det, reps)
    if shared is None:
        return None
    with torch.no_grad():
        if shared[0] == "logits":
            return det.predict_logits(shared[1].to(device))
        return det.predict_features(shared[1].to(device))


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

    In a distributed run (see :mod:`uniad_plugin.distributed`) with ``data`` a dataset, each
    rank extracts a contiguous shard: the shared logits and features, and the extraction pass
    of detectors with ``collect_fit_inputs`` / ``fit_collected`` (UniformDetector,
    ConfoundingGradients) and MultiMahalanobis's
    block features; the shards are gathered in data order and every rank fits on all of them.
    Other detectors (A3, R2AD2, the model-free sanity rows) fit on the whole data on every
    rank. An entry that fails on one
    rank is marked failed on every rank. A loader is used as given on every rank.

    :param detectors: detectors or entries (see :func:`build_detectors`)
    :param data: ID training data, a dataset or loader of ``(x, y)`` with labels ``>= 0``
    :param batch_size: batch size when ``data`` is a dataset
    :param device: device to fit on
    :param progress: show progress bars
    :return: the entries, updated in place
    """
    entries = as_entries(detectors)
    device = torch.device(device)
    loader = _loader(data, batch_size)
    sharded = dist.is_active() and not isinstance(data, DataLoader)
    part = _loader(Subset(data, dist.shard_indices(len(data))), batch_size) if sharded else loader
    to_fit = [e for e in entries if e.ok and getattr(e.detector, "requires_fit", True)]
    move_entries(to_fit, device, "fit")
    sync_entries(to_fit)
    producers = producers_of([e for e in to_fit if e.ok])
    reps: dict[int, Tensor] = {}
    labels: Tensor | None = None
    if producers:
        try:
            reps, labels = extract(producers, part, device, "extracting train", progress)
        except Exception:  # noqa: BLE001 - fall back to each detector's own fit
            reps = {}
        if sharded:
            if dist.all_true(bool(reps)):
                reps, labels = dist.gather_tree(reps), dist.gather_cat(labels)
            else:
                reps = {}
    for e in _progress(to_fit, progress, desc="fitting detectors", unit="detector"):
        if not e.ok:
            continue
        det = e.detector
        try:
            shared = _shared_input(det, reps)
            parts = _collect_and_fit(det, device) if sharded and shared is None else None
            if parts is not None:
                _fit_sharded(e, part, *parts)
            elif shared is None:
                det.fit(loader)
            elif shared[0] == "logits":
                det.fit_logits(shared[1].to(device), labels.to(device))
            else:
                det.fit_features(shared[1].to(device), labels.to(device))
        except Exception as err:  # noqa: BLE001 - shown in the results
            e.fail("fit", err)
    sync_entries(to_fit)
    return entries


def _collect_and_fit(
    det: Detector, device: torch.device
) -> tuple[Callable[[DataLoader], Any], Callable[[Any], Any]] | None:
    """How ``det`` fits as an extraction pass and a fit on its output, or ``None``: the
    detector's own ``collect_fit_inputs`` / ``fit_collected`` (UniformDetector,
    ConfoundingGradients), or pytorch-ood's MultiMahalanobis (its blocks' outputs averaged
    over space, then ``fit_structured``)."""
    if hasattr(det, "collect_fit_inputs") and hasattr(det, "fit_collected"):
        return det.collect_fit_inputs, det.fit_collected
    if isinstance(det, MultiMahalanobis) and all(isinstance(b, nn.Module) for b in det.model):
        collect = functools.partial(_block_features, det.model, device=device)
        return collect, lambda c: det.fit_structured(c["features"], c["y"].to(device))
    return None


@torch.no_grad()
def _block_features(
    blocks: Sequence[nn.Module], loader: DataLoader, device: torch.device
) -> dict[str, Any]:
    """The output of every consecutive block averaged over space (what pytorch-ood's
    MultiMahalanobis.fit extracts block prefix by block prefix), in one pass, for the ID
    samples (labels >= 0) of ``loader``."""
    zs: list[list[Tensor]] = [[] for _ in blocks]
    ys: list[Tensor] = []
    for x, y in loader:
        y = torch.as_tensor(y)
        known = y >= 0
        if not bool(known.any()):
            continue
        h = x[known].to(device)
        for i, block in enumerate(blocks):
            h = block(h)
            zs[i].append(h.mean(dim=(2, 3)).reshape(len(h), -1).cpu())
        ys.append(y[known].cpu())
    if not ys:
        raise ValueError("expected ID samples (labels >= 0) in the fit data, got none")
    return {"features": [torch.cat(z) for z in zs], "y": torch.cat(ys)}


def _fit_sharded(
    e: DetectorEntry,
    part: DataLoader,
    collect: Callable[[DataLoader], Any],
    fit: Callable[[Any], Any],
) -> None:
    """Extract this rank's shard, gather every rank's, fit on all (a distributed fit); an
    extraction that fails on any rank fails the entry on every rank."""
    try:
        collected, error = collect(part), None
    except Exception as err:  # noqa: BLE001 - shown in the results
        collected, error = None, f"fit failed: {one_line(err)}"
    errors = [r for r in dist.gather_objects(error) if r is not None]
    if errors:
        e.status, e.reason = "failed", errors[0]
        return
    fit(dist.gather_tree(_pruned(e.detector, collected)))


def _pruned(det: Detector, collected: Any) -> Any:
    """This rank's collected rows that the detector keeps of all ranks' rows (a detector with
    ``rows_kept`` / ``select_collected``, e.g. UniformDetector's ``max_fit_rows`` sample), so
    that only those travel; ``collected`` itself otherwise."""
    rows_kept = getattr(det, "rows_kept", None)
    if rows_kept is None or not isinstance(collected, dict) or "keys" not in collected:
        return collected
    y, keys = collected["y"], collected["keys"]
    kept = rows_kept(
        dist.gather_cat(keys), dist.gather_cat(y), dist.gather_cat(collected["class_counts"])
    )
    if kept is None:
        return collected
    sizes = dist.gather_objects(len(y))
    first = sum(sizes[: dist.rank()])
    mine = kept[(kept >= first) & (kept < first + len(y))] - first
    return det.select_collected(collected, torch.sort(mine).values)


def sync_entries(entries: Sequence[DetectorEntry]) -> None:
    """In a distributed run, an entry skipped or failed on some rank is so on every rank, with
    the first such rank's reason and that rank named ("... (on process 1 of 2)"); nothing for
    a single process."""
    if not dist.is_active():
        return
    states = dist.gather_objects([(e.status, e.reason) for e in entries])
    for i, e in enumerate(entries):
        bad = [(rank, s[i]) for rank, s in enumerate(states) if s[i][0] != "ok"]
        if bad and e.status == "ok":
            rank, (status, reason) = bad[0]
            e.status, e.reason = status, f"{reason} (on process {rank} of {len(states)})"
