"""Ablation of UniformDetector's design choices on real MNIST (LeNet), OOD / AD / NS.

Every choice the paper leaves open (layers, whitening, pooling, score, encoder size, training)
is varied one at a time against the default, all variants fitted on the SAME extracted activations; two built-in
detectors are scored in the same run for reference.

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
from mnist_setup import HERE, auroc, mnist_model_and_suite  # noqa: E402

from uniad_plugin.detectors.uniform import UniformDetector  # noqa: E402
from uniad_plugin.nn.taps import default_layers  # noqa: E402

ALL_LAYERS = ["1", "4", "5", "11:input", "logits", "log_softmax"]
STAGES = ["1", "4", "5", "11:input"]

OUT = "log_softmax"
DEFAULT = {"layers": [*STAGES, OUT], "whiten": "full"}

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


def main(argv: list[str] | None = None) -> None:
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
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)

    train, test, model, acc, suite = mnist_model_and_suite(args.data_root, seed=args.seed)
    print(f"LeNet test accuracy {acc:.4f}")
    # the first row is what UniformDetector(model) does on this model
    assert default_layers(model, train.tensors[0][:2]) == DEFAULT["layers"]
    sets = {"ID": suite.id_test, **{n: x for n, (_, x) in suite.sets.items()}}
    kinds = {n: k for n, (k, _) in suite.sets.items()}

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
            det.fit_structured([train_z[i] for i in idx], y_train, pred=train_logits, n_classes=10)
            fit_s = time.perf_counter() - t0
            scores = {
                n: det.predict_structured([z[i] for i in idx], lg) for n, (z, lg) in set_z.items()
            }
            per_seed.append(_row(variant, scores, kinds, fit_s))
            print(per_seed[-1])
        rows.append(_over_seeds(per_seed))

    # references in the same run
    msp = MaxSoftmax(model)
    blocks = [model[:2], model[2:5], model[5:6]]
    mm = MultiMahalanobis(blocks).fit(DataLoader(train, batch_size=1000))
    for name, det in (("[built-in] MaxSoftmax", msp), ("[built-in] MultiMahalanobis", mm)):
        scores = {n: batched(det.predict, x) for n, x in sets.items()}
        rows.append(_row(name, scores, kinds, None))
        print(rows[-1])

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = "python benchmarks/uniform_ablation.py " + shlex.join(argv or sys.argv[1:])
    out.with_suffix(".json").write_text(
        json.dumps({"command": cmd, "accuracy": acc, "attacks": suite.info, "rows": rows}, indent=1)
    )
    lines = [
        "# UniformDetector ablation on MNIST (LeNet-5)",
        "",
        f"Produced by `{cmd.strip()}`. LeNet test accuracy {acc:.4f}. ID: 2,000 MNIST test",
        "images; AD crafted from 1,000 other test images (successful ones only); OOD: letters",
        "rendered from matplotlib's fonts and photo crops; NS: four noise sets. AUROC, higher is",
        "better; class columns are means over that class's sets; fit time on pre-extracted",
        "activations of the 60,000 training images.",
        "",
        "| variant | OOD | AD | NS | mean | min set | fit s |",
        "|---|---|---|---|---|---|---|",
    ]
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


def _over_seeds(rows: list[dict]) -> dict:
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
    out["fit_s"] = sum(r["fit_s"] for r in rows) / len(rows)
    out["per_seed"] = rows
    return out


def _row(variant: str, scores: dict, kinds: dict, fit_s: float | None) -> dict:
    per_set = {n: auroc(scores["ID"], s) for n, s in scores.items() if n != "ID"}
    by_kind = {
        k: sum(v for n, v in per_set.items() if kinds[n] == k)
        / sum(1 for n in per_set if kinds[n] == k)
        for k in ("OOD", "AD", "NS")
    }
    worst = min(per_set, key=per_set.get)
    return {
        "variant": variant,
        **by_kind,
        "mean": sum(by_kind.values()) / 3,
        "min_set": worst,
        "min": per_set[worst],
        "fit_s": fit_s,
        "sets": per_set,
    }


if __name__ == "__main__":
    main()
