"""Ablation of UniformDetector's design choices on real MNIST (LeNet), OOD / AD / NS, on the
validation split only.

Every choice the paper leaves open (layers, whitening, pooling, score, encoder size, training)
is varied one at a time against the default, all variants fitted on the SAME extracted
activations; two built-in detectors and the model-free sanity baselines are scored in the same
run for reference.

The sets are those of ``RunConfig(dataset="mnist", split="validation")``: other anomaly seeds,
fonts, photos, attack budgets and MNIST test images than the reported evaluation
(``uniad --dataset mnist``), so that defaults chosen here are not tuned on the reported sets.

    python benchmarks/uniform_ablation.py --data-root ../shared/data

Writes ``benchmarks/results/uniform_ablation.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch
from pytorch_ood.detector import MaxSoftmax, MultiMahalanobis
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mnist_setup import CACHE, HERE, auroc  # noqa: E402

from uniad_plugin.anomalies.ood import FONT_SPLITS, PHOTO_SPLITS  # noqa: E402
from uniad_plugin.benchmark import (  # noqa: E402
    PixelCount,
    PixelGrid,
    PixelKNN,
    RunConfig,
    prepare_suite,
)
from uniad_plugin.data import mnist_splits  # noqa: E402
from uniad_plugin.detectors.uniform import UniformDetector  # noqa: E402
from uniad_plugin.nn.taps import default_layers  # noqa: E402

ALL_LAYERS = ["1", "4", "5", "11:input", "logits", "log_softmax"]
STAGES = ["1", "4", "5", "11:input"]

OUT = "log_softmax"
#: the original defaults (sum of z-scores, no softmax layer, no rival contrasts; the
#: activations are pooled by ``avg`` below), kept so that the committed table reproduces;
#: ``uniform_fusion.py`` compares them with the current defaults
DEFAULT = {"layers": [*STAGES, OUT], "whiten": "full", "fusion": "zsum", "rivals": 0}
KIND_ORDER = ("OOD", "AD", "NS")

#: every variant spells out its layers and whitening (so later default changes don't alter
#: rows); each changes one setting of the default, the first row
VARIANTS: dict[str, dict] = {
    "default (full whitening; stages + penultimate + log_softmax)": DEFAULT,
    # layers
    "logits instead of log_softmax": {**DEFAULT, "layers": [*STAGES, "logits"]},
    "stages + penultimate (no output layer)": {**DEFAULT, "layers": STAGES},
    "penultimate only (literal reading)": {**DEFAULT, "layers": ["11:input"]},
    # per-feature standardisation instead of whitening
    "diag standardisation": {**DEFAULT, "whiten": "diag"},
    "diag standardisation, logits instead of log_softmax": {
        **DEFAULT,
        "whiten": "diag",
        "layers": [*STAGES, "logits"],
    },
    "diag standardisation, penultimate only": {
        **DEFAULT,
        "whiten": "diag",
        "layers": ["11:input"],
    },
    # score, pooling, encoder, training
    "difference score d^2 - R^2": {**DEFAULT, "score": "difference"},
    "avg+max pooling": {**DEFAULT, "pooling": "avgmax"},
    "rep_dim 16": {**DEFAULT, "rep_dim": 16},
    "hidden (128,), rep_dim 64": {**DEFAULT, "hidden": (128,), "rep_dim": 64},
    "epochs 60": {**DEFAULT, "epochs": 60},
    "nu 0.05": {**DEFAULT, "nu": 0.05},
}


def batched(fn, x: torch.Tensor, bs: int = 1000) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([fn(c) for c in x.split(bs)])


def _fmt_budgets(attacks) -> str:
    return ", ".join(f"{a}@{','.join(f'{e:g}' for e in eps)}" for a, eps in attacks.items())


def _short(info: dict) -> dict:
    """``info`` without long per-sample lists (e.g. the attack's source labels)."""
    return {k: v for k, v in info.items() if not (isinstance(v, list) and len(v) > 32)}


def _shared_images(a: list[torch.Tensor], b: list[torch.Tensor]) -> int:
    """Images (byte-identical) that occur in both lists of image tensors."""

    def keys(ts: list[torch.Tensor]) -> set[bytes]:
        return {row.numpy().tobytes() for t in ts for row in t.flatten(1)}

    return len(keys(a) & keys(b))


def main(argv: list[str] | None = None) -> None:
    t_start = time.perf_counter()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--seed", type=int, default=0, help="seed of the model and the anomaly sets")
    ap.add_argument(
        "--detector-seeds",
        type=int,
        nargs="+",
        default=None,
        help="fit every variant once per detector seed and report mean ± std (default: --seed)",
    )
    ap.add_argument("--out", default=str(HERE / "results" / "uniform_ablation"))
    ap.add_argument(
        "--variants", nargs="+", default=None, help="variant names (prefix match); default: all"
    )
    ap.add_argument("--cache-dir", default=str(CACHE), help="cache of the model and adversarials")
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)

    config = RunConfig(
        dataset="mnist",
        data_root=args.data_root,
        split="validation",
        seed=args.seed,
        cache_dir=args.cache_dir,
        progress=False,
    )
    report_plan = config.replace(split="report").resolve()
    suite = prepare_suite(config)
    plan, model, splits = suite.plan, suite.model, suite.splits
    assert plan.validation and plan.anomaly_seed != report_plan.anomaly_seed

    # the validation part of MNIST's test set shares no image with the reported part
    rep = mnist_splits(
        args.data_root,
        seed=args.seed,
        n_test=report_plan.n_test,
        n_attack=report_plan.attack_split,
        n_val=report_plan.n_val,
        part="report",
    )
    val_parts = [splits.test.tensors[0], splits.attack.tensors[0], splits.val.tensors[0]]
    rep_parts = [rep.test.tensors[0], rep.attack.tensors[0], rep.val.tensors[0]]
    shared = _shared_images(val_parts, rep_parts)
    print(f"MNIST test images shared by the validation and report parts: {shared}")

    train = splits.train
    x_test, y_test = splits.test.tensors
    with torch.no_grad():
        acc = float((batched(model, x_test).argmax(1) == y_test).float().mean())
    print(f"LeNet accuracy on the {len(x_test)} validation ID test images {acc:.4f}")
    # the first row is what UniformDetector(model) did on this model with the original defaults
    assert default_layers(model, train.tensors[0][:2]) == [*DEFAULT["layers"], "softmax"]

    empty = [a.name for a in suite.anomalies if len(a.x) == 0]
    sets = {"ID": x_test, **{a.name: a.x for a in suite.anomalies if len(a.x) > 0}}
    kinds = {a.name: a.kind for a in suite.anomalies if len(a.x) > 0}
    set_info = {
        a.name: {"kind": a.kind, "n": len(a.x), "info": _short(getattr(a, "info", {}))}
        for a in suite.anomalies
    }

    # one extraction of all candidate layers, both poolings
    feats = {}
    for pooling in ("avg", "avgmax"):
        ex = UniformDetector(model, layers=ALL_LAYERS, pooling=pooling)
        tr_feats, tr_logits = [], []
        for xb, _ in DataLoader(train, batch_size=1000):
            f, lg = ex.extract(xb)
            tr_feats.append(f)
            tr_logits.append(lg)
        train_z = [torch.cat([f[i] for f in tr_feats]) for i in range(len(ALL_LAYERS))]
        set_z = {}
        for name, x in sets.items():
            parts = [ex.extract(c) for c in x.split(1000)]
            set_z[name] = (
                [torch.cat([p[0][i] for p in parts]) for i in range(len(ALL_LAYERS))],
                torch.cat([p[1] for p in parts]),
            )
        feats[pooling] = (train_z, torch.cat(tr_logits), set_z)
    y_train = train.tensors[1]

    rows = []
    chosen = {
        k: v
        for k, v in VARIANTS.items()
        if args.variants is None or any(k.startswith(p) for p in args.variants)
    }
    for variant, kwargs in chosen.items():
        kwargs = dict(kwargs)
        layers = kwargs.pop("layers")
        idx = [ALL_LAYERS.index(n) for n in layers]
        train_z, train_logits, set_z = feats[kwargs.get("pooling", "avg")]
        per_seed = []
        for seed in args.detector_seeds or [args.seed]:
            det = UniformDetector(model, layers=layers, seed=seed, **kwargs)
            t0 = time.perf_counter()
            det.fit_structured([train_z[i] for i in idx], y_train, train_logits, num_classes=10)
            fit_s = time.perf_counter() - t0
            scores = {
                n: det.predict_structured([z[i] for i in idx], lg) for n, (z, lg) in set_z.items()
            }
            per_seed.append(_row(variant, scores, kinds, fit_s))
            print(per_seed[-1])
        rows.append(_over_seeds(per_seed, kinds))

    # references in the same run: built-in detectors on the model, model-free sanity baselines
    loader = DataLoader(train, batch_size=1000)
    msp = MaxSoftmax(model)
    blocks = [model[:2], model[2:5], model[5:6]]
    mm = MultiMahalanobis(blocks).fit(loader)
    references = [
        ("[built-in] MaxSoftmax", msp),
        ("[built-in] MultiMahalanobis", mm),
        ("[sanity] PixelGrid(255)", PixelGrid(255)),
        ("[sanity] PixelCount", PixelCount().fit(loader)),
        ("[sanity] PixelKNN", PixelKNN(seed=args.seed).fit(loader)),
    ]
    for name, det in references:
        scores = {n: batched(det.predict, x) for n, x in sets.items()}
        rows.append(_row(name, scores, kinds, None))
        print(rows[-1])

    wall_s = time.perf_counter() - t_start
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = "python benchmarks/uniform_ablation.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    cmd = cmd.strip()

    by_kind = {k: [n for n in kinds if kinds[n] == k] for k in KIND_ORDER}
    letters = set_info.get("letters", {}).get("info", {})
    photos = set_info.get("photos", {}).get("info", {})
    val_fonts = letters.get("fonts", list(FONT_SPLITS["validation"]))
    val_photos = photos.get("photos", list(PHOTO_SPLITS["validation"]))
    validation = {
        "split": "validation",
        "sets": {k: by_kind[k] for k in KIND_ORDER},
        "empty_sets": empty,
        "anomaly_seed": plan.anomaly_seed,
        "report_anomaly_seed": report_plan.anomaly_seed,
        "fonts": val_fonts,
        "report_fonts": list(FONT_SPLITS["report"]),
        "photos": val_photos,
        "report_photos": list(PHOTO_SPLITS["report"]),
        "budgets": {a: list(e) for a, e in plan.attacks.items()},
        "report_budgets": {a: list(e) for a, e in report_plan.attacks.items()},
        "mnist_test_images": {
            "id_test": len(splits.test),
            "attack_sources": len(splits.attack),
            "held_out": len(splits.val),
            "part": "back of the seeded permutation of MNIST's 10,000 test images",
            "report_part": "front of the same permutation",
            "shared_with_report": shared,
        },
        "notes": list(suite.notes),
    }
    out.with_suffix(".json").write_text(
        json.dumps(
            {
                "command": cmd,
                "wall_s": wall_s,
                "accuracy": acc,
                "validation": validation,
                "sets": set_info,
                "rows": rows,
            },
            indent=1,
            default=str,
        )
    )

    n_sources = plan.n_attack
    lines = [
        "# UniformDetector ablation on MNIST (LeNet-5), validation split",
        "",
        f"Tuned on the validation split only (command `{cmd}`): sets share nothing with the",
        "reported sets:",
        "",
        "- validation sets: OOD "
        + ", ".join(f"`{n}`" for n in by_kind["OOD"])
        + "; AD "
        + ", ".join(f"`{n}`" for n in by_kind["AD"])
        + "; NS "
        + ", ".join(f"`{n}`" for n in by_kind["NS"])
        + (f" (empty, left out: {', '.join(empty)})" if empty else ""),
        f"- seeds: the generated sets use anomaly seed {plan.anomaly_seed} (the report uses "
        f"{report_plan.anomaly_seed});",
        f"- fonts of `letters`: {', '.join(val_fonts)} (the report uses the other "
        f"{len(FONT_SPLITS['report'])} fonts);",
        f"- photos of `photos`: {', '.join(val_photos)} (the report uses "
        f"{', '.join(PHOTO_SPLITS['report'])});",
        f"- attack budgets: {_fmt_budgets(plan.attacks)} (the report uses "
        f"{_fmt_budgets(report_plan.attacks)});",
        f"- MNIST test images: ID test ({len(splits.test):,}), attack sources "
        f"({len(splits.attack):,}) and held-out ({len(splits.val):,}) images come from the back "
        "of the seeded permutation of the 10,000 test images, the report's from its front; "
        f"{shared} image(s) in common (checked by this script).",
        "",
        "Shared with the report: the classifier (the cached reference LeNet, trained on the",
        "60,000 MNIST training images) and those training images, on which every detector here",
        "is fitted. Every generated set lies on the 8-bit grid of the ID data (the PixelGrid row",
        "checks it).",
        "",
        f"LeNet accuracy on the validation ID test images {acc:.4f}. ID: {len(x_test):,} "
        "validation MNIST test images; AD crafted from up to",
        f"{n_sources} correctly classified images of the attack split per attack and budget "
        "(successful ones",
        "only); OOD: letters rendered from the validation fonts and crops of the validation",
        "photos; NS: four noise sets. AUROC, higher is better; class columns are means over that",
        "class's sets; fit time on pre-extracted activations of the 60,000 training images.",
        "",
        "| variant | OOD | AD | NS | mean | min set | fit s |",
        "|---|---|---|---|---|---|---|",
    ]
    if suite.notes:  # the first note sums up the sets left out (all of them: the .json)
        lines[-3:-3] = ["", f"Note: {suite.notes[0]}."]
    n_seeds = len(args.detector_seeds or [args.seed])
    if n_seeds > 1:
        lines[-2:-2] = [
            f"Each variant fitted with {n_seeds} detector seeds ({args.detector_seeds}) on the same",
            "activations: mean ± sample std over seeds (the model and the sets are fixed).",
            "",
        ]

    def cell(r: dict, key: str) -> str:
        std = r.get("std", {}).get(key)
        return f"{r[key]:.3f}" + (f" ± {std:.3f}" if std is not None else "")

    for r in rows:
        fit = f"{r['fit_s']:.1f}" if r["fit_s"] is not None else ""
        lines.append(
            f"| {r['variant']} | {cell(r, 'OOD')} | {cell(r, 'AD')} | {cell(r, 'NS')} | "
            f"{cell(r, 'mean')} | {r['min_set']} {r['min']:.3f} | {fit} |"
        )
    lines += ["", "Worst set per class (AUROC):", ""]
    lines.append("| variant | worst OOD | worst AD | worst NS |")
    lines.append("|---|---|---|---|")
    for r in rows:
        lines.append(
            f"| {r['variant']} | "
            + " | ".join(f"{r['worst'][k][0]} {r['worst'][k][1]:.3f}" for k in KIND_ORDER)
            + " |"
        )
    lines += ["", "Per set (AUROC):", ""]
    names = list(kinds)
    lines.append("| variant | " + " | ".join(names) + " |")
    lines.append("|---" * (len(names) + 1) + "|")
    for r in rows:
        lines.append(
            f"| {r['variant']} | " + " | ".join(f"{r['sets'][n]:.3f}" for n in names) + " |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wall time {wall_s:.0f} s")


def _worst(per_set: dict, kinds: dict) -> dict:
    """Per class, the set with the lowest AUROC: kind -> [name, AUROC]."""
    out = {}
    for k in KIND_ORDER:
        names = [n for n in per_set if kinds[n] == k]
        w = min(names, key=per_set.get)
        out[k] = [w, per_set[w]]
    return out


def _over_seeds(rows: list[dict], kinds: dict) -> dict:
    """One row from the rows of several detector seeds: means, and sample stds if > 1 seed."""
    if len(rows) == 1:
        return rows[0]
    keys = ("OOD", "AD", "NS", "mean")
    out = {"variant": rows[0]["variant"]}
    for k in keys:
        vals = torch.tensor([r[k] for r in rows], dtype=torch.float64)
        out[k] = float(vals.mean())
    out["std"] = {
        k: float(torch.tensor([r[k] for r in rows], dtype=torch.float64).std()) for k in keys
    }
    out["sets"] = {n: sum(r["sets"][n] for r in rows) / len(rows) for n in rows[0]["sets"]}
    worst = min(out["sets"], key=out["sets"].get)
    out["min_set"], out["min"] = worst, out["sets"][worst]
    out["worst"] = _worst(out["sets"], kinds)
    out["fit_s"] = sum(r["fit_s"] for r in rows) / len(rows)
    out["per_seed"] = rows
    return out


def _row(variant: str, scores: dict, kinds: dict, fit_s: float | None) -> dict:
    per_set = {n: auroc(scores["ID"], s) for n, s in scores.items() if n != "ID"}
    by_kind = {
        k: sum(v for n, v in per_set.items() if kinds[n] == k)
        / sum(1 for n in per_set if kinds[n] == k)
        for k in KIND_ORDER
    }
    worst = min(per_set, key=per_set.get)
    return {
        "variant": variant,
        **by_kind,
        "mean": sum(by_kind.values()) / 3,
        "min_set": worst,
        "min": per_set[worst],
        "worst": _worst(per_set, kinds),
        "fit_s": fit_s,
        "sets": per_set,
    }


if __name__ == "__main__":
    main()
