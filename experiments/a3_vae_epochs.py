"""How long A3's VAE should train (``vae_epochs``): a study on the validation split.

A study, not a benchmark. A3 with ``anomaly="vae"`` trains its alarm on counter-examples
decoded from the VAE's latent space far from the data (:math:`\\mathrm{dec}(\\mu(x) + 5\\epsilon)`);
how far they look from the data depends on how long the VAE trained. This script fits A3 with
the VAE trained for each of ``--vae-epochs`` and, for reference, A3's default Gaussian
counter-examples, on the ID training images of a run, over ``--seeds`` detector seeds, and
scores every set of the run's validation split (``--split validation``: fonts, photos,
attack budgets and noise seeds that share nothing with the reported sets).

    python experiments/a3_vae_epochs.py                        # digits (offline)
    python experiments/a3_vae_epochs.py --dataset mnist --data-root ../shared/data \\
        --n-fit 10000 --seeds 0

Writes ``experiments/results/a3_vae_epochs_<dataset>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from pytorch_ood.metrics import OODMetrics
from torch.utils.data import DataLoader, Subset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from uniad_plugin.benchmark import RunConfig, prepare_suite  # noqa: E402
from uniad_plugin.detectors import A3  # noqa: E402

KINDS = ("OOD", "AD", "NS")


def auroc(id_scores: torch.Tensor, anomaly_scores: torch.Tensor) -> float:
    m = OODMetrics()
    labels = torch.cat([torch.zeros(len(id_scores)), -torch.ones(len(anomaly_scores))])
    m.update(torch.cat([id_scores, anomaly_scores]), labels.long())
    return float(m.compute()["AUROC"])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=("digits", "mnist"), default="digits")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--vae-epochs", type=int, nargs="+", default=[1, 3, 10, 30])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--n-fit", type=int, default=None, help="training images A3 is fitted on")
    ap.add_argument("--out", default=None, help="output path without suffix (.md, .json)")
    args = ap.parse_args(argv)
    config = RunConfig(
        dataset=args.dataset,
        data_root=args.data_root,
        split="validation",
        seed=0,
        progress=False,
    )
    suite = prepare_suite(config)
    model = suite.model
    train = suite.splits.train
    if args.n_fit is not None and args.n_fit < len(train):
        pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
        train = Subset(train, pick[: args.n_fit].tolist())
    loader = DataLoader(train, batch_size=256)
    x_id = suite.splits.test.tensors[0]
    sets = [a for a in suite.anomalies if len(a.x)]

    variants = [("gaussian (default)", {"anomaly": "gaussian"})]
    variants += [
        (f"vae, vae_epochs={e}", {"anomaly": "vae", "vae_epochs": e}) for e in args.vae_epochs
    ]
    rows = []
    for label, params in variants:
        per_seed = []
        t0 = time.time()
        for seed in args.seeds:
            det = A3(model, seed=seed, **params).fit(loader)
            with torch.no_grad():
                s_id = torch.cat([det.predict(b) for b in x_id.split(500)])
                per_set = {
                    a.name: auroc(s_id, torch.cat([det.predict(b) for b in a.x.split(500)]))
                    for a in sets
                }
            per_seed.append(per_set)
        names = list(per_seed[0])
        sets_mean = {n: statistics.mean(p[n] for p in per_seed) for n in names}
        kinds = {a.name: a.kind for a in sets}
        means = {
            k: statistics.mean(v for n, v in sets_mean.items() if kinds[n] == k)
            for k in KINDS
            if any(kinds[n] == k for n in names)
        }
        means["mean"] = statistics.mean(means.values())
        worst = min(sets_mean, key=sets_mean.get)
        rows.append(
            {
                "variant": label,
                "params": params,
                "means": means,
                "sets": sets_mean,
                "worst": [worst, sets_mean[worst]],
                "seconds": time.time() - t0,
            }
        )
        print(label, {k: round(v, 3) for k, v in means.items()}, flush=True)

    out = Path(args.out or ROOT / "experiments" / "results" / f"a3_vae_epochs_{args.dataset}")
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = "python experiments/a3_vae_epochs.py " + shlex.join(
        argv if argv is not None else sys.argv[1:]
    )
    lines = [
        f"# A3's VAE training length ({args.dataset}, validation split)",
        "",
        f"Produced by `{cmd.strip()}`. A3 fitted on {len(train):,} ID training images, "
        f"mean AUROC over detector seeds {args.seeds}; {len(x_id):,} ID test images against "
        "the validation split's sets.",
        "",
        "| variant | " + " | ".join(KINDS) + " | mean | worst set | s |",
        "|---|" + "---|" * (len(KINDS) + 3),
    ]
    for r in rows:
        cells = " | ".join(f"{r['means'][k]:.3f}" if k in r["means"] else "" for k in KINDS)
        lines.append(
            f"| {r['variant']} | {cells} | {r['means']['mean']:.3f} | "
            f"{r['worst'][0]} {r['worst'][1]:.3f} | {r['seconds']:.0f} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"command": cmd, "rows": rows}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
