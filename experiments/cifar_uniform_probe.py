"""Why UniformDetector loses on natural images: a first probe on the CIFAR-10 validation split.

A study, not a benchmark: it varies one thing at a time around UniformDetector's defaults
(the pooling of the feature maps, the tapped layers, the number of fit images) and scores
every variant on the sets of ``uniad --dataset folder --split validation`` (never the reported
sets), beside pytorch-ood's MultiMahalanobis, Mahalanobis and EnergyBased built the way the
``uniad`` command builds them. Public API only.

    python experiments/cifar_uniform_probe.py --train-dir /tmp/cifar10/train \\
        --test-dir /tmp/cifar10/test --model benchmarks/weights/resnet20.pt

Writes ``experiments/results/cifar_uniform_probe.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch
from pytorch_ood.metrics import OODMetrics
from torch.utils.data import DataLoader, Subset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from uniad_plugin.benchmark import RunConfig, build_detectors, prepare_suite  # noqa: E402
from uniad_plugin.detectors import UniformDetector  # noqa: E402

#: (row name, UniformDetector keyword arguments, fit images); the first row is the defaults
VARIANTS: list[tuple[str, dict, int]] = [
    ("defaults (grid pooling), 5,000 fit images", {}, 5000),
    ("pooling='avg' (spatial means)", {"pooling": "avg"}, 5000),
    ("pooling='gridstd'", {"pooling": "gridstd"}, 5000),
    ("stages and head input only (no softmax layers)", {"layers": "stages"}, 5000),
    ("defaults, 20,000 fit images", {}, 20000),
    ("pooling='avg', 20,000 fit images", {"pooling": "avg"}, 20000),
]
REFERENCES = ("MultiMahalanobis", "Mahalanobis", "EnergyBased")


def auroc(id_scores: torch.Tensor, scores: torch.Tensor) -> float:
    labels = torch.cat([torch.zeros(len(id_scores)), -torch.ones(len(scores))]).long()
    return float(OODMetrics().update(torch.cat([id_scores, scores]), labels).compute()["AUROC"])


def scored(det, sets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {n: torch.cat([det(c).cpu() for c in x.split(500)]) for n, x in sets.items()}


def row(name: str, scores: dict, kinds: dict, seconds: float) -> dict:
    per_set = {n: auroc(scores["ID"], s) for n, s in scores.items() if n != "ID"}
    means = {
        k: sum(v for n, v in per_set.items() if kinds[n] == k)
        / max(1, sum(kinds[n] == k for n in per_set))
        for k in ("OOD", "AD", "NS")
    }
    means["all"] = sum(means[k] for k in ("OOD", "AD", "NS")) / 3
    return {"variant": name, "sets": per_set, "means": means, "fit_s": round(seconds, 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-dir", required=True)
    parser.add_argument("--test-dir", required=True)
    parser.add_argument("--model", required=True, help="resnet20_cifar weights")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--rows", type=int, nargs="*", default=None, help="subset of VARIANTS")
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "results")
    args = parser.parse_args(argv)
    config = RunConfig(
        dataset="folder",
        train_dir=args.train_dir,
        test_dir=args.test_dir,
        arch="uniad_plugin.models:resnet20_cifar",
        model_path=args.model,
        split="validation",
        fast=True,
        seed=args.seed,
        cache_dir=args.cache_dir,
        progress=False,
    )
    suite = prepare_suite(config)
    model = suite.model
    sets = {"ID": suite.splits.test.tensors[0]}
    sets |= {a.name: a.x for a in suite.anomalies if len(a.x)}
    kinds = {a.name: a.kind for a in suite.anomalies if len(a.x)}
    train = suite.splits.train
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed))
    rows = []
    for i, (name, kwargs, n_fit) in enumerate(VARIANTS):
        if args.rows is not None and i not in args.rows:
            continue
        loader = DataLoader(Subset(train, order[:n_fit].tolist()), batch_size=500)
        kwargs = dict(kwargs)
        if kwargs.get("layers") == "stages":
            kwargs["layers"] = ["layer1", "layer2", "layer3", "fc:input"]
        t = time.time()
        det = UniformDetector(model, seed=args.seed, **kwargs).fit(loader)
        rows.append(row(name, scored(det, sets), kinds, time.time() - t))
        print(f"{name}: mean {rows[-1]['means']['all']:.3f}", flush=True)
    loader = DataLoader(Subset(train, order[:5000].tolist()), batch_size=500)
    for entry in build_detectors(list(REFERENCES), model, sets["ID"][:4]):
        t = time.time()
        if entry.detector.requires_fit:
            entry.detector.fit(loader)
        rows.append(
            row(f"[built-in] {entry.name}", scored(entry.detector, sets), kinds, time.time() - t)
        )
        print(f"{entry.name}: mean {rows[-1]['means']['all']:.3f}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python experiments/cifar_uniform_probe.py " + shlex.join(argv or sys.argv[1:])
    meta = {"command": command, "sets": {n: len(x) for n, x in sets.items()}, "kinds": kinds}
    (args.out / "cifar_uniform_probe.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=1)
    )
    names = list(kinds)
    lines = [
        "# UniformDetector on CIFAR-10 (ResNet-20), validation split: a first probe",
        "",
        f"AUROC, ID validation images ({len(sets['ID'])}) against each set; built-ins fitted on "
        "5,000 training images.",
        "",
        "| variant | OOD | AD | NS | mean | fit (s) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        m = r["means"]
        lines.append(
            f"| {r['variant']} | {m['OOD']:.3f} | {m['AD']:.3f} | {m['NS']:.3f} | "
            f"{m['all']:.3f} | {r['fit_s']} |"
        )
    lines += ["", "| variant | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for r in rows:
        lines.append(
            f"| {r['variant']} | " + " | ".join(f"{r['sets'][n]:.3f}" for n in names) + " |"
        )
    lines += ["", "Produced by:", "", f"    {command}", ""]
    (args.out / "cifar_uniform_probe.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
