"""Adaptive attack on MNIST (LeNet-5): UniformDetector vs Mahalanobis vs MultiMahalanobis.

For each detector, L-inf PGD against classifier + detector (``uniad_plugin.anomalies.adaptive``)
with the same budget (eps, steps) and detector weights lambda; lambda = 0 is the non-adaptive
margin PGD. Reported: AUROC of ID test vs the successful adversarials, and the attack's success
rate at a 5% false-positive rate on ID data (misclassified AND below the detector's threshold,
as a fraction of the attacked, correctly classified inputs). Every adaptive set is on the
8-bit value grid (``--levels``, values k/255 like the MNIST images): PGD's continuous outputs
are rounded within the budget and only those still misclassified after rounding are kept.
The model-free sanity baselines PixelGrid, PixelCount and PixelKNN are scored beside the
three detectors. A gradient-free attack (the Square Attack's random search with the same
objective, ``uniad_plugin.anomalies.blackbox.make_square``) is run against UniformDetector on
the same inputs, as a check that the white-box figure is not an artefact of obfuscated
gradients.

    python benchmarks/adaptive_attack.py --data-root ../shared/data
    python benchmarks/adaptive_attack.py --fast --out /tmp/adaptive   # a smoke run

``--fast`` needs no data: a tiny stand-in written in MNIST's own file format
(:func:`mnist_setup.write_fast_mnist`, scikit-learn's digits on 28x28), 200 ID and 30 attacked
images, one budget (0.3), 5 PGD steps, 20 queries, the model cached in a temporary folder;
its numbers check that the script works, nothing more.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from pytorch_ood.detector import Mahalanobis, MultiMahalanobis
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mnist_setup import CACHE, HERE, auroc, trained_lenet, write_fast_mnist  # noqa: E402

from uniad_plugin.anomalies.adaptive import evasion_rate, make_adaptive  # noqa: E402
from uniad_plugin.anomalies.blackbox import make_square  # noqa: E402
from uniad_plugin.benchmark import (  # noqa: E402
    PixelCount,
    PixelGrid,
    PixelKNN,
    UnifiedBenchmark,
)
from uniad_plugin.data import mnist_dataset  # noqa: E402
from uniad_plugin.detectors.uniform import UniformDetector  # noqa: E402

SANITY = ("PixelGrid", "PixelCount", "PixelKNN")
#: detectors the gradient-free attack is run against
GRADIENT_FREE = ("UniformDetector",)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--eps", type=float, nargs="+", default=[0.1, 0.3])
    ap.add_argument("--lam", type=float, nargs="+", default=[0.0, 1.0, 10.0])
    ap.add_argument("--n-attack", type=int, default=500)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--gf-queries", type=int, default=1000, help="queries per input of the gradient-free attack"
    )
    ap.add_argument(
        "--gf-lam", type=float, nargs="+", default=[1.0, 10.0], help="its detector weights"
    )
    ap.add_argument(
        "--levels", type=int, default=255, help="value grid k/levels of the adversarials"
    )
    ap.add_argument("--n-id", type=int, default=2000, help="ID test images (the first ones)")
    ap.add_argument("--cache-dir", default=str(CACHE), help="cache of the trained LeNet")
    ap.add_argument("--out", default=None, help="output path without suffix (.md, .json)")
    ap.add_argument(
        "--fast",
        action="store_true",
        help="smoke run: tiny stand-in data (no --data-root), small sizes, temporary cache",
    )
    args = ap.parse_args(argv)
    if args.fast:
        work = Path(tempfile.mkdtemp(prefix="uniad-adaptive-fast-"))
        args.data_root = str(write_fast_mnist(work / "data"))
        args.cache_dir = str(work / "cache")
        args.n_id, args.n_attack, args.steps = 200, 30, 5
        args.eps, args.lam, args.gf_lam, args.gf_queries = [0.3], [0.0, 1.0], [1.0], 20
        args.out = args.out or str(work / "adaptive_attack")
    args.out = args.out or str(HERE / "results" / "adaptive_attack")
    return args


def _make_sets(model, detectors, attack_data, id_x, args) -> list[tuple[str, float, float, Any]]:
    """One adaptive set per detector, eps and lambda: (detector, eps, lam, set)."""
    made = []
    for name, det in detectors.items():
        for eps in args.eps:
            for lam in args.lam:
                t0 = time.perf_counter()
                adv = make_adaptive(
                    model,
                    det,
                    attack_data,
                    eps,
                    lam=lam,
                    id_reference=id_x,
                    steps=args.steps,
                    seed=args.seed,
                    levels=args.levels,
                    name=f"vs {name} eps={eps:g} lam={lam:g}",
                )
                i = adv.info
                print(
                    f"{adv.name}: {i['n_success']} of {i['n_attacked']} misclassified on the grid "
                    f"({i['n_success_continuous']} before rounding), "
                    f"{time.perf_counter() - t0:.0f}s",
                    flush=True,
                )
                made.append((name, eps, lam, adv))
    return made


def _rows(made, detectors, s_id, auc) -> list[dict[str, Any]]:
    rows = []
    columns = [*detectors, *SANITY]
    for name, eps, lam, adv in made:
        with torch.no_grad():
            s_adv = detectors[name].predict(adv.x) if len(adv) else torch.empty(0)
        ev = evasion_rate(s_id[name], s_adv, adv.info["n_attacked"], fpr=0.05)
        rows.append(
            {
                "detector": name,
                "set": adv.name,
                "eps": eps,
                "lam": lam,
                "grid_levels": adv.info["grid_levels"],
                "n_attacked": adv.info["n_attacked"],
                "misclassified_continuous": adv.info["success_rate_continuous"],
                "misclassified": adv.info["success_rate"],
                "auroc": auc.get((name, adv.name), float("nan")),
                "success_at_5fpr": ev["success_at_fpr"],
                "transfer_auroc": {d: auc.get((d, adv.name), float("nan")) for d in columns},
            }
        )
        print(rows[-1], flush=True)
    return rows


def _gradient_free_rows(model, detectors, attack_data, id_x, s_id, args) -> list[dict[str, Any]]:
    """The Square Attack (forward passes only) per detector of GRADIENT_FREE, eps and lambda."""
    rows = []
    for name in GRADIENT_FREE:
        det = detectors[name]
        for eps in args.eps:
            for lam in args.gf_lam:
                t0 = time.perf_counter()
                adv = make_square(
                    model,
                    det,
                    attack_data,
                    eps,
                    lam=lam,
                    id_reference=id_x,
                    queries=args.gf_queries,
                    seed=args.seed,
                    levels=args.levels,
                    name=f"square vs {name} eps={eps:g} lam={lam:g}",
                )
                with torch.no_grad():
                    s_adv = det.predict(adv.x) if len(adv) else torch.empty(0)
                ev = evasion_rate(s_id[name], s_adv, adv.info["n_attacked"], fpr=0.05)
                rows.append(
                    {
                        "detector": name,
                        "set": adv.name,
                        "eps": eps,
                        "lam": lam,
                        "queries": adv.info["queries"],
                        "p_init": adv.info["p_init"],
                        "n_attacked": adv.info["n_attacked"],
                        "misclassified_continuous": adv.info["success_rate_continuous"],
                        "misclassified": adv.info["success_rate"],
                        "auroc": auroc(s_id[name], s_adv) if len(adv) else float("nan"),
                        "success_at_5fpr": ev["success_at_fpr"],
                        "wall_s": round(time.perf_counter() - t0),
                    }
                )
                print(rows[-1], flush=True)
    return rows


def _gradient_free_markdown(gf_rows, rows, args) -> list[str]:
    """The section comparing the gradient-free attack with the white-box one."""
    white = {(r["detector"], r["eps"], r["lam"]): r["success_at_5fpr"] for r in rows}
    n_q = gf_rows[0]["queries"] if gf_rows else args.gf_queries
    p_init = gf_rows[0]["p_init"] if gf_rows else float("nan")
    lines = [
        "",
        "## Gradient-free attack",
        "",
        "A check that the white-box figure is not an artefact of obfuscated gradients: the",
        "Square Attack (Andriushchenko et al. 2020), a random search in L-inf that only runs",
        "the model and the detector's `predict` forward, minimising the white-box attack's",
        f"objective; {n_q} queries per input (stripes start, then square windows of",
        f"+/- eps, initial share of pixels p = {p_init:g}), seed {args.seed}, on the same",
        f"{args.n_attack} test images and rounded onto the grid k/{args.levels} like the",
        "white-box sets. *success @5% FPR* as above; the white-box column repeats the first",
        f"table (PGD, {args.steps} steps, same eps and lambda).",
        "",
        "| detector | eps | lambda | misclassified (continuous) | misclassified | AUROC | "
        "success @5% FPR, gradient-free | success @5% FPR, white-box |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in gf_rows:
        wb = white.get((r["detector"], r["eps"], r["lam"]), float("nan"))
        lines.append(
            f"| {r['detector']} | {r['eps']:g} | {r['lam']:g} | "
            f"{r['misclassified_continuous']:.3f} | {r['misclassified']:.3f} | "
            f"{r['auroc']:.3f} | {r['success_at_5fpr']:.3f} | {wb:.3f} |"
        )
    lam_gf = ", ".join(f"{lam:g}" for lam in args.gf_lam)
    lam_wb = ", ".join(f"{lam:g}" for lam in args.lam)
    lines += [
        "",
        f"Best success @5% FPR over lambda: gradient-free (lambda {lam_gf}) vs white-box",
        f"(lambda {lam_wb}):",
        "",
        "| detector | eps | gradient-free | white-box |",
        "|---|---|---|---|",
    ]
    for name in dict.fromkeys(r["detector"] for r in gf_rows):
        for eps in args.eps:
            gf = max(
                r["success_at_5fpr"] for r in gf_rows if (r["detector"], r["eps"]) == (name, eps)
            )
            wb = max(r["success_at_5fpr"] for r in rows if (r["detector"], r["eps"]) == (name, eps))
            lines.append(f"| {name} | {eps:g} | {gf:.3f} | {wb:.3f} |")
    return lines


def _markdown(rows, detectors, args, cmd: str, separable: list[str]) -> list[str]:
    lines = [
        "# Adaptive attack (MNIST, LeNet-5)",
        "",
        f"Produced by `{cmd.strip()}`. L-inf PGD, {args.steps} steps, random start, against",
        f"classifier + detector; lambda = 0 is the non-adaptive margin PGD. ID: {args.n_id:,} MNIST",
        f"test images; {args.n_attack} other test images attacked. Every adversarial is on the",
        f"value grid k/{args.levels} of the MNIST images: PGD's continuous output is rounded",
        "within the budget and kept only if the classifier still misclassifies it.",
        "*misclassified (continuous)*: share of attacked inputs whose adversarial fools the",
        "classifier before rounding; *misclassified*: after rounding (the kept set);",
        "*AUROC*: ID vs the kept adversarials; *success @5% FPR*: share of attacked inputs",
        "whose rounded adversarial fools the classifier AND scores below the detector's",
        "threshold at 5% false positives on ID data (lower is better for the detector).",
        "",
        "Every adaptive set is an AD set of one `UnifiedBenchmark`, scored by all three detectors",
        "and by the model-free sanity baselines PixelGrid (share of off-grid pixels), PixelCount",
        "(number of non-zero pixels) and PixelKNN (pixel distance to the nearest training image).",
        "",
        "| detector | eps | lambda | misclassified (continuous) | misclassified | AUROC | "
        "success @5% FPR |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['detector']} | {r['eps']:g} | {r['lam']:g} | "
            f"{r['misclassified_continuous']:.3f} | {r['misclassified']:.3f} | "
            f"{r['auroc']:.3f} | {r['success_at_5fpr']:.3f} |"
        )
    lines += [
        "",
        "Worst case over lambda (lowest AUROC, highest success) per detector and eps:",
        "",
    ]
    lines += ["| detector | eps | min AUROC | max success @5% FPR |", "|---|---|---|---|"]
    for name in detectors:
        for eps in args.eps:
            sel = [r for r in rows if r["detector"] == name and r["eps"] == eps]
            lines.append(
                f"| {name} | {eps:g} | {min(r['auroc'] for r in sel):.3f} | "
                f"{max(r['success_at_5fpr'] for r in sel):.3f} |"
            )
    columns = [*detectors, *SANITY]
    lines += [
        "",
        "AUROC of every detector (columns) on every set (rows): the column of the detector a",
        "set was made against repeats the white-box result, the other detectors' columns are",
        "transfer, and the three Pixel columns are the model-free sanity baselines (a set with",
        "a Pixel AUROC >= 0.9 is separable without the model).",
        "",
        "| set | " + " | ".join(columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for r in rows:
        lines.append(
            f"| {r['set']} | " + " | ".join(f"{r['transfer_auroc'][d]:.3f}" for d in columns) + " |"
        )
    lines += [
        "",
        "Sets separated by a Pixel baseline (AUROC >= 0.9): "
        + (", ".join(separable) if separable else "none")
        + ".",
    ]
    return lines


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    start = time.perf_counter()
    train = mnist_dataset(args.data_root, train=True)
    test = mnist_dataset(args.data_root, train=False)
    model = trained_lenet(train, seed=args.seed, cache_dir=args.cache_dir)
    for p in model.parameters():
        p.requires_grad_(False)
    x_test, y_test = test.tensors
    n_id = args.n_id
    id_x = x_test[:n_id]
    attack_data = TensorDataset(x_test[n_id : n_id + args.n_attack], y_test[n_id:][: args.n_attack])
    loader = DataLoader(train, batch_size=1000)
    detectors = {
        "UniformDetector": UniformDetector(model, seed=args.seed).fit(loader),
        "Mahalanobis": Mahalanobis(model[:11]).fit(loader),
        "MultiMahalanobis": MultiMahalanobis([model[:2], model[2:5], model[5:6]]).fit(loader),
    }
    # model-free sanity baselines, fitted on the same training data
    sanity = {
        "PixelGrid": PixelGrid(255),
        "PixelCount": PixelCount().fit(loader),
        "PixelKNN": PixelKNN(seed=args.seed).fit(loader),
    }
    # every adaptive set is an AD set of one UnifiedBenchmark; all detectors score all sets
    # (the set made against a detector is its white-box result, the others are transfer)
    id_test = TensorDataset(id_x, y_test[:n_id])
    with torch.no_grad():
        s_id = {
            name: torch.cat([det.predict(c) for c in id_x.split(1000)])
            for name, det in detectors.items()
        }
    # the gradient-free attack first (it uses no global random state, and fails fast)
    t_gf = time.perf_counter()
    gf_rows = _gradient_free_rows(model, detectors, attack_data, id_x, s_id, args)
    gf_wall = time.perf_counter() - t_gf
    made = _make_sets(model, detectors, attack_data, id_x, args)
    sets = [adv for *_, adv in made if len(adv)]
    bench = UnifiedBenchmark(train, id_test, sets, batch_size=1000, progress=False)
    bench_rows = bench.evaluate({**detectors, **sanity})
    auc = {
        (r["Detector"], r["Dataset"]): r["AUROC"]
        for r in bench_rows
        if r["Class"] == "AD" and r["Dataset"] != "mean"
    }
    rows = _rows(made, detectors, s_id, auc)
    wall = time.perf_counter() - start

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = "python benchmarks/adaptive_attack.py " + " ".join(argv or sys.argv[1:])
    payload = {
        "command": cmd,
        "grid_levels": args.levels,
        "wall_s": round(wall),
        "gradient_free_wall_s": round(gf_wall),
        "pixel_separable": bench.pixel_separable,
        "rows": rows,
        "gradient_free_rows": gf_rows,
    }
    out.with_suffix(".json").write_text(json.dumps(payload, indent=1))
    lines = _markdown(rows, detectors, args, cmd, bench.pixel_separable)
    lines += _gradient_free_markdown(gf_rows, rows, args)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wall time {wall:.0f}s", flush=True)


if __name__ == "__main__":
    main()
