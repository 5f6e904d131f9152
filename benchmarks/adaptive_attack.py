"""Adaptive attack on MNIST (LeNet-5): UniformDetector vs Mahalanobis vs MultiMahalanobis.

For each detector, L-inf PGD against classifier + detector (``uniad_plugin.anomalies.adaptive``)
with the same budget (eps, steps) and detector weights lambda; lambda = 0 is the non-adaptive
margin PGD. Reported: AUROC of ID test vs the successful adversarials, and the attack's success
rate at a 5% false-positive rate on ID data (misclassified AND below the detector's threshold,
as a fraction of the attacked, correctly classified inputs).

    python benchmarks/adaptive_attack.py --data-root ../shared/data
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from pytorch_ood.detector import Mahalanobis, MultiMahalanobis
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mnist_setup import HERE, trained_lenet  # noqa: E402

from uniad_plugin.anomalies.adaptive import evasion_rate, make_adaptive  # noqa: E402
from uniad_plugin.benchmark import UnifiedBenchmark  # noqa: E402
from uniad_plugin.data import mnist_dataset  # noqa: E402
from uniad_plugin.detectors.uniform import UniformDetector  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--eps", type=float, nargs="+", default=[0.1, 0.3])
    ap.add_argument("--lam", type=float, nargs="+", default=[0.0, 1.0, 10.0])
    ap.add_argument("--n-attack", type=int, default=500)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(HERE / "results" / "adaptive_attack"))
    args = ap.parse_args(argv)

    train = mnist_dataset(args.data_root, train=True)
    test = mnist_dataset(args.data_root, train=False)
    model = trained_lenet(train, seed=args.seed)
    for p in model.parameters():
        p.requires_grad_(False)
    x_test, y_test = test.tensors
    id_x = x_test[:2000]
    attack_data = TensorDataset(x_test[2000 : 2000 + args.n_attack], y_test[2000:][: args.n_attack])
    loader = DataLoader(train, batch_size=1000)
    detectors = {
        "UniformDetector": UniformDetector(model, seed=args.seed).fit(loader),
        "Mahalanobis": Mahalanobis(model[:11]).fit(loader),
        "MultiMahalanobis": MultiMahalanobis([model[:2], model[2:5], model[5:6]]).fit(loader),
    }
    # every adaptive set is an AD set of one UnifiedBenchmark; all detectors score all sets
    # (the set made against a detector is its white-box result, the others are transfer)
    id_test = TensorDataset(id_x, y_test[:2000])
    with torch.no_grad():
        s_id = {
            name: torch.cat([det.predict(c) for c in id_x.split(1000)])
            for name, det in detectors.items()
        }
    sets, made = [], []
    for name, det in detectors.items():
        for eps in args.eps:
            for lam in args.lam:
                adv = make_adaptive(
                    model,
                    det,
                    attack_data,
                    eps,
                    lam=lam,
                    id_reference=id_x,
                    steps=args.steps,
                    seed=args.seed,
                    name=f"vs {name} eps={eps:g} lam={lam:g}",
                )
                print(
                    f"{adv.name}: {len(adv)} of {adv.info['n_attacked']} misclassified", flush=True
                )
                made.append((name, eps, lam, adv))
                if len(adv):
                    sets.append(adv)
    bench = UnifiedBenchmark(train, id_test, sets, batch_size=1000, progress=False)
    bench_rows = bench.evaluate(detectors)
    auc = {
        (r["Detector"], r["Dataset"]): r["AUROC"]
        for r in bench_rows
        if r["Class"] == "AD" and r["Dataset"] != "mean"
    }
    rows = []
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
                "n_attacked": adv.info["n_attacked"],
                "misclassified": adv.info["success_rate"],
                "auroc": auc.get((name, adv.name), float("nan")),
                "success_at_5fpr": ev["success_at_fpr"],
                "transfer_auroc": {d: auc.get((d, adv.name), float("nan")) for d in detectors},
            }
        )
        print(rows[-1], flush=True)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = "python benchmarks/adaptive_attack.py " + " ".join(argv or sys.argv[1:])
    out.with_suffix(".json").write_text(json.dumps({"command": cmd, "rows": rows}, indent=1))
    lines = [
        "# Adaptive attack (MNIST, LeNet-5)",
        "",
        f"Produced by `{cmd.strip()}`. L-inf PGD, {args.steps} steps, random start, against",
        "classifier + detector; lambda = 0 is the non-adaptive margin PGD. ID: 2,000 MNIST test",
        f"images; {args.n_attack} other test images attacked. *misclassified*: share of attacked",
        "inputs whose adversarial fools the classifier; *AUROC*: ID vs those adversarials;",
        "*success @5% FPR*: share of attacked inputs that fool the classifier AND score below the",
        "detector's threshold at 5% false positives on ID data (lower is better for the detector).",
        "",
        "Every adaptive set is an AD set of one `UnifiedBenchmark`, scored by all three detectors.",
        "",
        "| detector | eps | lambda | misclassified | AUROC | success @5% FPR |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['detector']} | {r['eps']:g} | {r['lam']:g} | {r['misclassified']:.3f} | "
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
    lines += [
        "",
        "Transfer: AUROC of each detector (columns) on the sets made against another (rows);",
        "the diagonal repeats the white-box result.",
        "",
        "| set | " + " | ".join(detectors) + " |",
        "|---" * (len(detectors) + 1) + "|",
    ]
    for r in rows:
        lines.append(
            f"| {r['set']} | "
            + " | ".join(f"{r['transfer_auroc'][d]:.3f}" for d in detectors)
            + " |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
