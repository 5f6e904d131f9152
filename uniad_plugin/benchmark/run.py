"""The engine of a run: :func:`run` takes a :class:`~uniad_plugin.benchmark.config.RunConfig`
and does everything behind the ``uniad`` command: the ID splits, the classifier (the user's or
a cached reference model), the anomaly sets, the detectors, fitting, evaluation and the files.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from uniad_plugin import distributed as dist
from uniad_plugin.anomalies.openood import CROP
from uniad_plugin.benchmark._common import safe_name
from uniad_plugin.benchmark.anomaly_sets import (
    adversarial_sets,
    load_ood_sets,
    noise_sets,
)
from uniad_plugin.benchmark.config import RunConfig, RunPlan
from uniad_plugin.benchmark.evaluation import UnifiedBenchmark
from uniad_plugin.benchmark.model_cache import (
    build_model,
    check_model_output,
    load_model,
    resolve_architecture,
    trained_model,
)
from uniad_plugin.benchmark.plots import plot_heatmap, plot_histograms, plot_roc
from uniad_plugin.benchmark.reporting import accuracy_lines, results_to_table, save_results
from uniad_plugin.benchmark.wiring import build_detectors
from uniad_plugin.data import Splits

__all__ = [
    "RunResult",
    "Suite",
    "evaluate_plan",
    "prepare_suite",
    "run",
    "work_lines",
]

_METRIC_NOTES = (
    "per set: ID test set vs that set (OODMetrics, anomalies positive); class "
    "mean: unweighted mean over the class's sets; overall: mean of the class means; worst: "
    "the worst set (of the class, or of all); DR@5%FPR: share of the set above the threshold "
    "that flags 5% of the held-out ID set (splits.val, neither fitted on nor reported); "
    "PixelSeparable: a model-free Pixel* baseline reaches AUROC >= 0.9 on the set"
)

#: plugin detectors whose alarm trains on Gaussian noise counter-examples N(0.5, 1)
_NOISE_TRAINED = ("A3", "R2AD2")


def _detector_kwargs(plan: RunPlan) -> dict[str, dict[str, Any]]:
    """The configured constructor overrides, with the sanity baselines set to the data's grid
    and the run's seed."""
    c = plan.config
    kwargs = {k: dict(v) for k, v in (c.detector_kwargs or {}).items()}
    kwargs["PixelGrid"] = {"levels": plan.id_levels, **kwargs.get("PixelGrid", {})}
    kwargs["PixelKNN"] = {"seed": c.seed, **kwargs.get("PixelKNN", {})}
    return kwargs


def _family_notes(plan: RunPlan, sets: Sequence[Any]) -> list[str]:
    """A note where a detector trains on the same family of noise that an NS set is drawn from."""
    trained = [d for d in plan.detectors if d in _NOISE_TRAINED]
    gaussian = [a.name for a in sets if a.kind == "NS" and a.name.startswith("gaussian")]
    if not trained or not gaussian:
        return []
    return [
        f"{' and '.join(trained)} train their alarm on Gaussian noise counter-examples "
        f"N(0.5, 1); the NS set {gaussian[0]!r} is Gaussian noise too, so their NS numbers "
        "there are not a test on an unseen kind of input"
    ]


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


def run(config: RunConfig, *, echo: Callable[[str], None] | None = None) -> RunResult:
    """Run the benchmark that ``config`` describes.

    Checks the configuration first (:meth:`RunConfig.resolve`), then loads the ID splits and
    the OOD sets, loads the user's model or trains (or loads from the cache) the reference
    model, measures its accuracy on the ID test images, crafts the adversarial sets from the
    attack split, makes the noise sets, builds the detectors, fits them on the ID training
    data, evaluates them with :class:`UnifiedBenchmark` and writes results and plots to
    ``config.out_dir``.

    :param echo: called once (by the main process) before the attacks start with a short
        block of lines: the data, the classifier's accuracy (see
        :func:`~uniad_plugin.benchmark.reporting.accuracy_lines`) and the work ahead (see
        :func:`work_lines`); the ``uniad`` command prints it
    :raises ConfigError: on a bad configuration (before any heavy work), missing data or a
        model that does not fit the data set
    """
    from uniad_plugin.models import accuracy

    plan, splits, model, ood_sets, notes, meta = _setup(config)
    loader = DataLoader(splits.test, batch_size=config.batch_size)
    meta.update(
        num_classes=splits.num_classes,
        n_test=len(splits.test),
        test_accuracy=accuracy(model, loader, plan.device),
    )
    if echo is not None and dist.is_main():
        echo("\n".join([*accuracy_lines(meta), *work_lines(plan, splits, ood_sets)]))
    return evaluate_plan(model, splits, plan, prebuilt=ood_sets, notes=notes, meta=meta)


#: on the CPU, a run that attacks more than this many input values (attacked inputs times
#: values per input) gets a warning that it may take hours: the full CIFAR-10 run does
#: (5,000 attacked 3x32x32 inputs), the full MNIST run does not (5,000 of 1x28x28)
CPU_WARNING_VALUES: int = 10_000_000


def work_lines(plan: RunPlan, splits: Splits, ood_sets: Sequence[Any] = ()) -> list[str]:
    """A rough estimate of a run's work, in one or two lines: the ID images, the sets, the
    attacks and budgets, the inputs attacked (at most; only correctly classified sources are
    attacked, and cached sets are not attacked again), the detectors and the device; a
    warning on the CPU when the attacked input values exceed :data:`CPU_WARNING_VALUES`.

    :param ood_sets: the OOD sets already loaded (default: ``plan.ood`` counts them)
    """
    shape = tuple(splits.test.tensors[0].shape[1:])
    dims = "x".join(str(d) for d in shape)
    n_src = len(splits.attack)
    per_budget = min(plan.n_attack, n_src) if plan.n_attack is not None else n_src
    budgets = sum(len(b) for b in plan.attacks.values())
    attacked = per_budget * budgets
    n_ood = len(ood_sets) or len(plan.ood)
    counts = [
        _count(n_ood, "OOD set"),
        f"{_count(len(plan.attacks), 'attack')} at {_count(budgets, 'budget')} on up to "
        f"{per_budget:,} inputs each ({attacked:,} attacked)",
        _count(len(plan.noise), "noise set"),
    ]
    lines = [
        f"Run: {len(splits.train):,} training and {len(splits.test):,} ID test images of "
        f"{dims} on {plan.device}; {', '.join(counts)}; {_count(len(plan.detectors), 'detector')}."
    ]
    if plan.device.type == "cpu" and attacked * math.prod(shape) > CPU_WARNING_VALUES:
        lines.append(
            f"Warning: attacking {attacked:,} inputs of {dims} on the CPU may take hours; "
            "pass device='cuda' (a GPU) or fast=True (smaller sizes)."
        )
    return lines


def _count(n: int, what: str) -> str:
    return f"{n:,} {what}{'' if n == 1 else 's'}"


def _setup(config: RunConfig) -> tuple[RunPlan, Splits, nn.Module, list[Any], list[str], dict]:
    """The checked plan (OOD sets already loaded, so the plan asks for no more), the splits,
    the model on the plan's device, the OOD sets, their notes and the run details so far."""
    plan = _per_process(config.resolve())
    with dist.main_first():  # a download happens once
        splits = _splits(plan)
        ood_sets, notes = _ood_sets(plan, tuple(splits.test.tensors[0].shape[1:]))
    _near_far(config, ood_sets)  # an unknown near-OOD name stops here, before the model
    meta: dict[str, Any] = {
        "dataset": config.profile.name,
        "fast": config.fast,
        "split": config.split,
        "grid_levels": plan.grid_levels,
    }
    t = time.perf_counter()
    model, meta["model"] = _model(plan, splits)
    meta["model_s"] = round(time.perf_counter() - t, 2)
    model = model.to(plan.device).eval()
    check_model_output(model, splits.test.tensors[0][:8], splits.num_classes)
    plan = dataclasses.replace(plan, ood=(), optional_ood=())
    return plan, splits, model, ood_sets, notes, meta


@dataclass
class Suite:
    """What a run evaluates on, before any detector: the model, the ID splits and the anomaly
    sets (see :func:`prepare_suite`).

    :param plan: the checked configuration
    :param model: the classifier, in eval mode on ``plan.device``
    :param splits: the ID splits (``train``, ``test``, ``attack``, ``val``)
    :param anomalies: the anomaly sets, in the order OOD, AD, NS
    :param notes: notes about sets left out
    """

    plan: RunPlan
    model: nn.Module
    splits: Splits
    anomalies: list[Any]
    notes: list[str]


def prepare_suite(config: RunConfig) -> Suite:
    """The model, ID splits and anomaly sets that ``config`` describes, without detectors:
    for scripts that evaluate their own detectors (ablations) on exactly the sets of a run
    (e.g. ``split="validation"``).

    :raises ConfigError: as :func:`run`
    """
    plan, splits, model, ood_sets, notes, _ = _setup(config)
    sets, more_notes = _anomaly_sets(model, splits, plan, ood_sets)
    return Suite(plan, model, splits, sets, [*notes, *more_notes])


def _per_process(plan: RunPlan) -> RunPlan:
    """The plan as this process runs it: in a distributed run, ``cuda`` means this process's
    GPU, and only rank 0 shows progress and writes files (see :mod:`uniad_plugin.distributed`)."""
    device = dist.local_device(plan.device)
    config = plan.config
    if not dist.is_main():
        config = dataclasses.replace(config, out_dir=None, progress=False)
    if device == plan.device and config is plan.config:
        return plan
    return dataclasses.replace(plan, device=device, config=config)


def _splits(plan: RunPlan) -> Splits:
    from uniad_plugin import data

    c = plan.config
    name = c.profile.name
    sizes = {"n_test": plan.n_test, "n_attack": plan.attack_split, "n_val": plan.n_val}
    if name in ("mnist", "cifar10", "cifar100", "imagenet200"):
        sized = getattr(data, f"{name}_splits")
        size = {"image_size": plan.image_size} if name == "imagenet200" else {}
        return sized(c.data_root, seed=c.seed, download=c.download, part=c.split, **sizes, **size)
    if name == "imagenet":
        return data.imagenet_splits(
            c.data_root, seed=c.seed, part=c.split, image_size=plan.image_size, **sizes
        )
    if name == "folder":
        return data.folder_splits(c.train_dir, c.test_dir, image_size=plan.image_size, seed=c.seed)
    return data.digits_splits(c.seed)


def _factory(plan: RunPlan, num_classes: int) -> Callable[[], nn.Module]:
    """The architecture of the run: ``--arch`` (a ``torchvision:NAME`` model gets
    ``num_classes`` outputs), else the profile's reference model with ``num_classes`` outputs."""
    c = plan.config
    if c.arch is not None:
        return resolve_architecture(c.arch, num_classes)
    return resolve_architecture(c.profile.arch, num_classes)


def _model(plan: RunPlan, splits: Splits) -> tuple[nn.Module, dict[str, Any]]:
    """The user's model (weights from ``model_path``, or the factory's own with
    ``pretrained``), or the reference model (or ``arch`` with ``train``) trained on
    ``splits.train`` (cached)."""
    c = plan.config
    arch = c.arch or c.profile.arch
    if c.model_path is not None:
        named = c.arch if c.arch is not None else _factory(plan, splits.num_classes)
        model = load_model(c.model_path, named, splits.num_classes)
        return model, {"source": str(c.model_path), "arch": str(arch)}
    if c.pretrained:
        model = build_model(c.arch, splits.num_classes).eval()
        return model, {"source": "pretrained (the factory's own weights)", "arch": str(arch)}
    factory = _factory(plan, splits.num_classes)
    if c.arch is not None:
        arch_name = safe_name(str(c.arch).rpartition(":")[2])
    else:
        arch_name = c.profile.arch.rpartition(":")[2]
    check_model_output(factory().eval(), splits.test.tensors[0][:8], splits.num_classes)
    if not dist.is_main():  # rank 0 trains (or loads) the model; the others receive it
        model = dist.broadcast_module(factory().to(plan.device).eval())
        return model, {"source": "trained", "arch": str(arch), "epochs": plan.epochs}
    model, cached = trained_model(
        arch_name,
        factory,
        splits.train,
        epochs=plan.epochs,
        seed=c.seed,
        batch_size=c.profile.train_batch_size,
        cache_dir=plan.cache_dir,
        device=plan.device,
        progress=c.progress,
    )
    dist.broadcast_module(model.to(plan.device).eval())
    return model, {"source": "trained", "arch": str(arch), "epochs": plan.epochs, "cached": cached}


def evaluate_plan(
    model: nn.Module,
    splits: Splits,
    plan: RunPlan,
    *,
    prebuilt: Sequence[Any] = (),
    notes: Sequence[str] = (),
    meta: Mapping[str, Any] | None = None,
) -> RunResult:
    """Fit the detectors of ``plan`` on ``splits.train`` and evaluate them against its OOD, AD
    and NS sets; write results and plots to ``plan.config.out_dir`` (``None``: nothing).

    :param model: the classifier, inputs in [0, 1]
    :param splits: :class:`~uniad_plugin.data.Splits`; the adversarials are crafted from
        ``splits.attack``
    :param plan: what to run (see :meth:`RunConfig.resolve`)
    :param prebuilt: anomaly sets made beforehand (put first), e.g. OOD sets
    :param notes: notes to keep in the run details
    :param meta: run details to start from
    :return: the rows, the printed table, run details and the written files
    """
    plan = _per_process(plan)
    c = plan.config
    t0 = time.perf_counter()
    model = model.to(plan.device).eval()
    example = splits.test.tensors[0][:8]
    check_model_output(model, example, splits.num_classes)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    sets, more_notes = _anomaly_sets(model, splits, plan, prebuilt)
    timings["anomaly_sets_s"] = time.perf_counter() - t
    train = _fit_subset(splits.train, plan.n_fit, c.seed)
    loading = {"batch_size": c.batch_size, "device": plan.device, "progress": c.progress}
    bench = UnifiedBenchmark(train, splits.test, sets, id_val=splits.val, **loading)
    bench.groups.update(_near_far(c, sets))  # --near-ood: near and far, in every table
    entries = build_detectors(
        plan.detectors,
        model,
        example,
        seed=c.seed,
        device=plan.device,
        detector_kwargs=_detector_kwargs(plan),
    )
    t = time.perf_counter()
    bench.fit(entries)
    timings["fit_s"] = time.perf_counter() - t
    t = time.perf_counter()
    rows = bench.evaluate(entries)
    timings["evaluate_s"] = time.perf_counter() - t
    run_meta = _run_meta(model, splits, plan, len(train), dict(meta or {}))
    run_meta.update(
        anomaly_sets=[_set_summary(a) for a in sets],
        detectors=[{"name": e.name, "status": e.status, "reason": e.reason} for e in entries],
        notes=[*notes, *more_notes, *_family_notes(plan, sets)],
        metric_notes=_METRIC_NOTES,
        pixel_separable=bench.pixel_separable,
        thresholds=bench.thresholds,
        near_ood=_near_ood(bench),
    )
    files = _write(rows, bench, c, run_meta, timings, t0)
    table = results_to_table(rows, "AUROC")
    return RunResult(
        rows=rows, table=table, meta=run_meta, files=files, benchmark=bench, model=model
    )


def _near_far(config: RunConfig, sets: Sequence[Any]) -> dict[str, str]:
    """``"near"`` or ``"far"`` for every OOD set of ``sets`` if ``config.near_ood`` is given,
    else nothing (see :func:`~uniad_plugin.benchmark.leaderboard.near_far_groups`)."""
    # imported here: ``python -m uniad_plugin.benchmark.leaderboard`` runs that module
    from uniad_plugin.benchmark.leaderboard import near_far_groups

    return near_far_groups(config.near_ood, sets) or {}


def _near_ood(bench: UnifiedBenchmark) -> list[str] | None:
    """The near-OOD sets of the run (``--near-ood``, or OpenOOD's groups); ``None`` if no OOD
    set has a group."""
    ood = [n for n in bench.ood_names if bench.kinds[n] == "OOD"]
    if not any(n in bench.groups for n in ood):
        return None
    return [n for n in ood if bench.groups.get(n) == "near"]


def _anomaly_sets(
    model: nn.Module, splits: Splits, plan: RunPlan, prebuilt: Sequence[Any]
) -> tuple[list[Any], list[str]]:
    """The anomaly sets of ``plan``, in the order ``prebuilt``, OOD, AD, NS."""
    c = plan.config
    shape = tuple(splits.test.tensors[0].shape[1:])
    ood, notes = _ood_sets(plan, shape)
    grid = {"seed": plan.anomaly_seed, "levels": plan.grid_levels}
    options = {"n_attack": plan.n_attack, "attack_params": plan.attack_params}
    options.update(cache_dir=plan.cache_dir, device=plan.device, progress=c.progress)
    adversarial = adversarial_sets(model, splits.attack, plan.attacks, **options, **grid)
    noise = noise_sets(plan.noise, shape, splits.attack, n=plan.n_noise, **grid)
    return [*prebuilt, *ood, *adversarial, *noise], notes


def _ood_sets(plan: RunPlan, shape: tuple[int, ...]) -> tuple[list[Any], list[str]]:
    c = plan.config
    return load_ood_sets(
        plan.ood,
        shape,
        optional=plan.optional_ood,
        n=plan.n_ood,
        data_root=c.data_root,
        download=c.download,
        seed=plan.anomaly_seed,
        levels=plan.grid_levels,
        split=c.split,
        crop=CROP.get(c.profile.name, 1.0),
    )


def _fit_subset(train: Dataset, n_fit: int | None, seed: int) -> Dataset:
    """A random (``seed``) subset of ``n_fit`` training samples; all if ``n_fit`` is None."""
    if n_fit is None or n_fit >= len(train):
        return train
    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n_fit]
    if not isinstance(train, TensorDataset):  # an on-disk training set (ImageNet-scale)
        return Subset(train, idx.tolist())
    return TensorDataset(*(t[idx] for t in train.tensors))


def _run_meta(
    model: nn.Module, splits: Splits, plan: RunPlan, n_fit: int, meta: dict[str, Any]
) -> dict[str, Any]:
    from uniad_plugin.models import accuracy

    c = plan.config
    if "test_accuracy" not in meta:  # run() measured it before the attacks
        loader = DataLoader(splits.test, batch_size=c.batch_size)
        meta["test_accuracy"] = accuracy(model, loader, plan.device)
    meta.update(
        seed=c.seed,
        device=str(plan.device),
        processes=dist.world_size(),
        input_shape=list(splits.test.tensors[0].shape[1:]),
        num_classes=splits.num_classes,
        n_train=len(splits.train),
        n_fit=n_fit,
        n_test=len(splits.test),
        n_attack_split=len(splits.attack),
        n_val=len(splits.val) if splits.val is not None else 0,
    )
    return meta


def _write(
    rows: list[dict[str, Any]],
    bench: UnifiedBenchmark,
    config: RunConfig,
    meta: dict[str, Any],
    timings: dict[str, float],
    t0: float,
) -> dict[str, Any]:
    """Plots and result files into ``config.out_dir`` (nothing if it is ``None``); the
    timings go into ``meta``."""
    files: dict[str, Any] = {}
    model_s = 0.0
    out_dir = config.out_dir
    if out_dir is not None:
        t = time.perf_counter()
        if config.plots:
            plots = Path(out_dir) / "plots"
            files["heatmap"] = plot_heatmap(rows, plots, "AUROC", bench.pixel_separable)
            files["roc"] = plot_roc(bench.scores, bench.kinds, plots)
            files["histograms"] = plot_histograms(bench.scores, bench.kinds, plots)
        timings["plots_s"] = time.perf_counter() - t
        model_s = float(meta.get("model_s", 0.0))
    timings["total_s"] = time.perf_counter() - t0 + model_s
    meta["timings"] = {k: round(v, 2) for k, v in timings.items()}
    if out_dir is not None:
        files.update(save_results(rows, out_dir, meta))
    return files


def _set_summary(a: Any) -> dict[str, Any]:
    info = {
        k: v for k, v in getattr(a, "info", {}).items() if k not in ("source_labels", "adv_pred")
    }
    return {"name": a.name, "kind": a.kind, "n": len(a), "info": info}
