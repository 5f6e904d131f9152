"""How UniformDetector fuses its layers, and whether the softmax layer and the rival contrasts
help: on the validation split of MNIST, for the LeNet and the ResNet the benchmark trains.

One ``UniformDetector(model)`` with the defaults is fitted (its layers: the model's stages, the
head's input, ``log_softmax`` and ``softmax``; a rival contrast for each layer but the last
two). Every row is computed from that one fit, from its per-layer scores: the fusion rules
(Fisher's combination of empirical p-values, the sum of z-scores, the smallest p-value) over
all default scores, without the rival contrasts (an earlier default), without
``softmax``, and without both (the original defaults), with the contrasts of the two
deepest contrasted layers only (a cheaper detector), and every score alone. Six more fits per
seed vary the rest: 1 and 9 rivals searched instead of 3, encoders with 32 hidden units
instead of 64 (a cheaper detector), the feature maps pooled by a global average (``avg``, the
default before ``grid``) or by average and max (``avgmax``), and the softmax layer's spheres
with a trained encoder like the other layers' (the default before ``encoder_free``). The
built-in detectors the gap is measured against (MaxSoftmax, EnergyBased, KNN and Mahalanobis
on the head's input) and the model-free sanity rows are scored on the same sets.

    python benchmarks/uniform_fusion.py --data-root ../shared/data --arch lenet
    python benchmarks/uniform_fusion.py --data-root ../shared/data --arch resnet

Writes ``benchmarks/results/uniform_fusion_<arch>.md`` and ``.json``. The sets are those of
``uniad --dataset mnist --split validation`` (other seeds, fonts, photos, budgets and test
images than the reported evaluation).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch
from pytorch_ood.detector import KNN, EnergyBased, Mahalanobis, MaxSoftmax
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mnist_setup import HERE  # noqa: E402
from uniform_ablation import _over_seeds, _row  # noqa: E402

from uniad_plugin.benchmark import PixelCount, PixelGrid, PixelKNN, RunConfig, prepare_suite  # noqa: E402
from uniad_plugin.data import Splits  # noqa: E402
from uniad_plugin.detectors.uniform import UniformDetector  # noqa: E402
from uniad_plugin.nn.pvalues import log_survival  # noqa: E402

ARCHS = {"lenet": "uniad_plugin.models:lenet", "resnet": "uniad_plugin.models:resnet_mnist"}


def validation_suite(data_root: str, arch: str, seed: int, cache_dir: str | None):
    """The validation split's suite of ``uniad --dataset mnist --split validation`` for
    ``arch`` (a key of :data:`ARCHS`), its sets ``{"ID": ..., name: inputs}`` and their kinds
    ``{name: "OOD" | "AD" | "NS"}`` (empty sets left out)."""
    config = RunConfig(
        dataset="mnist",
        data_root=data_root,
        arch=ARCHS[arch],
        train=True,
        split="validation",
        seed=seed,
        cache_dir=cache_dir,
        progress=False,
    )
    suite = prepare_suite(config)
    assert suite.plan.validation
    sets = {"ID": suite.splits.test.tensors[0]}
    sets |= {a.name: a.x for a in suite.anomalies if len(a.x)}
    kinds = {a.name: a.kind for a in suite.anomalies if len(a.x)}
    return suite, sets, kinds


def _scores(det: UniformDetector, x: torch.Tensor) -> torch.Tensor:
    """Raw scores ``(N, L + C)`` (before fusion; the layers, then the rival contrasts), batch by
    batch."""
    out = []
    with torch.no_grad():
        for c in x.split(1000):
            feats, logits = det.extract(c)
            out.append(det._layer_scores(feats, logits))
    return torch.cat(out)


def _fuse(det: UniformDetector, raw: torch.Tensor, idx: list[int], how: str) -> torch.Tensor:
    """Fusion ``how`` of the layers ``idx``, with the held-out statistics of ``det``."""
    sub = raw[:, idx]
    if how == "zsum":
        return ((sub - det.fusion_mean[idx]) / det.fusion_std[idx]).sum(1)
    log_p = log_survival(det.fusion_knots[idx], det.fusion_slope[idx], sub)
    if how == "fisher":
        return -log_p.sum(1)
    if how == "min_p":
        return -log_p.min(1).values
    raise ValueError(how)


def _uniform_rows(
    model: torch.nn.Module, loader: DataLoader, sets: dict, kinds: dict, seed: int
) -> tuple[list[dict], UniformDetector, float]:
    """The UniformDetector rows of one detector seed: every fusion rule and layer subset from
    one fit with the defaults, the default fusion with the other pooling (a second fit), and
    every layer alone; the fitted default detector and its fit time."""
    t = time.perf_counter()
    det = UniformDetector(model, seed=seed).fit(loader)
    fit_s = time.perf_counter() - t
    raw = {n: _scores(det, x) for n, x in sets.items()}
    names = det.score_names  # the layers, then their rival contrasts
    L = len(det.layers)
    every = list(range(len(names)))
    spheres_only = list(range(L))  # without rival contrasts (an earlier default)
    no_softmax = [i for i, n in enumerate(names) if n != "softmax"]
    old = [i for i in spheres_only if names[i] != "softmax"]  # the original defaults
    deep_contrasts = spheres_only + every[L:][-2:]
    default = {how: " (the default)" if how == det.fusion else "" for how in ("fisher", "zsum")}
    variants = [
        (f"Fisher, all default layers and contrasts{default['fisher']}", every, "fisher"),
        ("Fisher, without rival contrasts (issue 12, second round)", spheres_only, "fisher"),
        ("Fisher, without softmax", no_softmax, "fisher"),
        (f"sum of z-scores, all default layers and contrasts{default['zsum']}", every, "zsum"),
        (
            "sum of z-scores, without softmax or contrasts (the default before issue 12)",
            old,
            "zsum",
        ),
        ("smallest p-value, all default layers and contrasts", every, "min_p"),
        # a cheaper detector: the contrasts of the two deepest contrasted layers only
        ("Fisher, contrasts of the two deepest contrasted layers only", deep_contrasts, "fisher"),
    ]
    rows = []
    for label, idx, how in variants:
        rows.append(_row(label, {n: _fuse(det, r, idx, how) for n, r in raw.items()}, kinds, fit_s))
        print(seed, rows[-1]["variant"], round(rows[-1]["mean"], 3), rows[-1]["min"], flush=True)
    # one more fit per variant of the spheres or the rivals: the rivals searched, other poolings
    # of the feature maps, and the softmax layer's spheres with an encoder
    refits = [
        ("1 rival", {"rivals": 1}, ("fisher",)),
        ("encoders with 32 hidden units (64 by default)", {"hidden": (32,)}, ("fisher",)),
        ("9 rivals (every other class)", {"rivals": 9}, ("fisher",)),
        ("avg pooling", {"pooling": "avg"}, ("fisher", "zsum")),
        ("avgmax pooling", {"pooling": "avgmax"}, ("fisher", "zsum")),
        ("softmax spheres with an encoder", {"encoder_free": ()}, ("fisher", "zsum")),
    ]
    for what, kwargs, rules in refits:
        t = time.perf_counter()
        det2 = UniformDetector(model, seed=seed, **kwargs).fit(loader)
        fit2_s = time.perf_counter() - t
        raw2 = {n: _scores(det2, x) for n, x in sets.items()}
        every2 = list(range(len(det2.score_names)))
        for how in rules:
            label = f"{'Fisher' if how == 'fisher' else 'sum of z-scores'}, all, {what}"
            rows.append(
                _row(
                    label, {n: _fuse(det2, r, every2, how) for n, r in raw2.items()}, kinds, fit2_s
                )
            )
    for i, name in enumerate(names):
        what = f"{name.split(':', 1)[1]} contrast" if i >= L else f"layer {name}"
        rows.append(_row(f"{what} alone", {n: r[:, i] for n, r in raw.items()}, kinds, fit_s))
    with torch.no_grad():  # the default row is what predict gives (same batches)
        predicted = torch.cat([det.predict(c) for c in sets["ID"].split(1000)])
    assert torch.allclose(_fuse(det, raw["ID"], every, det.fusion), predicted, atol=1e-4)
    return rows, det, fit_s


def _features(det: UniformDetector, x: torch.Tensor, layer: str) -> torch.Tensor:
    i = det.layers.index(layer)
    with torch.no_grad():
        return torch.cat([det.extract(c)[0][i] for c in x.split(1000)])


def reference_rows(
    model: torch.nn.Module,
    det: UniformDetector,
    splits: Splits,
    sets: dict,
    kinds: dict,
    loader: DataLoader,
    seed: int,
) -> list[dict]:
    """The rows of the built-in detectors the gap is measured against (MaxSoftmax,
    EnergyBased, KNN and Mahalanobis on the head's input of ``det``'s layers) and of the
    model-free sanity baselines, on ``sets``."""
    head = next(n for n in det.layers if n.endswith(":input"))
    z_train = _features(det, splits.train.tensors[0], head)
    y_train = splits.train.tensors[1]
    z_sets = {n: _features(det, x, head) for n, x in sets.items()}
    knn = KNN(None, k=50).fit_features(z_train, y_train)
    maha = Mahalanobis(None).fit_features(z_train, y_train)
    references = [
        ("[built-in] MaxSoftmax", MaxSoftmax(model).predict),
        ("[built-in] EnergyBased", EnergyBased(model).predict),
        (f"[built-in] KNN ({head}, k=50)", None),
        (f"[built-in] Mahalanobis ({head})", None),
        ("[sanity] PixelGrid(255)", PixelGrid(255).predict),
        ("[sanity] PixelCount", PixelCount().fit(loader).predict),
        ("[sanity] PixelKNN", PixelKNN(seed=seed).fit(loader).predict),
    ]
    rows = []
    for name, fn in references:
        if "KNN (" in name:
            scores = {n: knn.predict_features(z) for n, z in z_sets.items()}
        elif "Mahalanobis (" in name:
            scores = {n: maha.predict_features(z) for n, z in z_sets.items()}
        else:
            with torch.no_grad():
                scores = {n: torch.cat([fn(c) for c in x.split(1000)]) for n, x in sets.items()}
        rows.append(_row(name, scores, kinds, None))
    return rows


def add_gaps(rows: list[dict], kinds: dict) -> dict:
    """Give every row its gap to the best built-in on each set (``gap``) and the worst of them
    (``worst_gap``); return the best built-in AUROC per set."""
    builtin = [r for r in rows if r["variant"].startswith("[built-in]")]
    best = {n: max(r["sets"][n] for r in builtin) for n in kinds}
    for r in rows:
        r["gap"] = {n: r["sets"][n] - best[n] for n in kinds}
        r["worst_gap"] = min(r["gap"].values())
    return best


def main(argv: list[str] | None = None) -> None:
    t_start = time.perf_counter()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--arch", choices=sorted(ARCHS), default="lenet")
    ap.add_argument("--seed", type=int, default=0, help="seed of the model and the sets")
    ap.add_argument(
        "--detector-seeds",
        type=int,
        nargs="+",
        default=None,
        help="fit UniformDetector once per seed; rows show mean ± std (default: --seed)",
    )
    ap.add_argument("--cache-dir", default=None, help="cache of the model and adversarials")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    suite, sets, kinds = validation_suite(args.data_root, args.arch, args.seed, args.cache_dir)
    model, splits = suite.model, suite.splits

    loader = DataLoader(splits.train, batch_size=1000)
    seeds = args.detector_seeds or [args.seed]
    per_seed = [_uniform_rows(model, loader, sets, kinds, seed) for seed in seeds]
    det, layers, fit_s = per_seed[0][1], per_seed[0][1].layers, per_seed[0][2]
    rows = [_over_seeds(list(group), kinds) for group in zip(*(p[0] for p in per_seed))]

    rows += reference_rows(model, det, splits, sets, kinds, loader, args.seed)

    best = add_gaps(rows, kinds)
    cmd = "python benchmarks/uniform_fusion.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    out = Path(args.out or HERE / "results" / f"uniform_fusion_{args.arch}")
    out.parent.mkdir(parents=True, exist_ok=True)
    wall_s = time.perf_counter() - t_start
    with torch.no_grad():
        acc = float(
            (
                torch.cat([model(c) for c in sets["ID"].split(1000)]).argmax(1)
                == splits.test.tensors[1]
            )
            .float()
            .mean()
        )
    meta = {
        "command": cmd.strip(),
        "arch": ARCHS[args.arch],
        "layers": layers,
        "accuracy": acc,
        "fit_s": fit_s,
        "detector_seeds": seeds,
        "wall_s": wall_s,
        "notes": list(suite.notes),
    }
    out.with_suffix(".json").write_text(json.dumps({**meta, "rows": rows}, indent=1, default=str))
    out.with_suffix(".md").write_text(_markdown(meta, rows, kinds, best))
    print(out.with_suffix(".md").read_text())


def _cell(r: dict, key: str) -> str:
    std = r.get("std", {}).get(key)
    return f"{r[key]:.3f}" + (f" ± {std:.3f}" if std is not None else "")


def summary_table(rows: list[dict]) -> list[str]:
    """Markdown lines: per row the classes' AUROCs, the mean, the worst set and the worst gap
    (rows with ``gap``, see :func:`add_gaps`)."""
    lines = [
        "| variant | OOD | AD | NS | mean | min set | worst gap |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        gap_set = min(r["gap"], key=r["gap"].get)
        lines.append(
            f"| {r['variant']} | {_cell(r, 'OOD')} | {_cell(r, 'AD')} | {_cell(r, 'NS')} | "
            f"{_cell(r, 'mean')} | {r['min_set']} {r['min']:.3f} | {r['worst_gap']:+.3f} "
            f"({gap_set}) |"
        )
    return lines


def per_set_table(rows: list[dict], names: list[str], best: dict) -> list[str]:
    """Markdown lines: per row the AUROC on each of the sets ``names``, then the best
    built-in's."""
    lines = ["| variant | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for r in rows:
        lines.append(
            f"| {r['variant']} | " + " | ".join(f"{r['sets'][n]:.3f}" for n in names) + " |"
        )
    lines.append("| best built-in | " + " | ".join(f"{best[n]:.3f}" for n in names) + " |")
    return lines


def closing_lines(
    rows: list[dict], names: list[str], best: dict, notes: list[str], what: str
) -> list[str]:
    """Markdown lines: the per-set table of ``names`` under the heading ``what``, then the
    run's first note, if any."""
    lines = ["", f"{what} (AUROC; last row: the best built-in on each set):", ""]
    lines += per_set_table(rows, names, best)
    if notes:
        lines += ["", f"Note: {notes[0]}."]
    return lines


def _markdown(meta: dict, rows: list[dict], kinds: dict, best: dict) -> str:
    names = list(kinds)
    lines = [
        f"# UniformDetector fusion and layers, MNIST validation split ({meta['arch']})",
        "",
        f"Command: `{meta['command']}` ({meta['wall_s']:.0f} s; the detector's fit "
        f"{meta['fit_s']:.0f} s). Validation sets only (other seeds, fonts, photos, budgets and "
        "test images than the reported evaluation). Model accuracy on the validation ID test "
        f"images: {meta['accuracy']:.4f}.",
        "",
        f"One `UniformDetector(model)` with the defaults, layers {', '.join(meta['layers'])}; "
        "the rows without a named refit are computed from its per-layer scores (the spheres "
        "are fitted once per detector seed); each refit row is one more fit with that change. "
        + (
            f"Detector seeds {meta['detector_seeds']}: class columns and mean are mean ± sample "
            "std over seeds, the per-set AUROCs and gaps are means over seeds. "
            if len(meta["detector_seeds"]) > 1
            else f"Detector seed {meta['detector_seeds'][0]}. "
        )
        + "`gap`: the row's AUROC minus the best built-in detector's on the same "
        "set, the worst over all sets (the goal of issue 12: at least -0.02).",
        "",
    ]
    lines += summary_table(rows)
    lines += closing_lines(rows, names, best, meta["notes"], "Per set")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
