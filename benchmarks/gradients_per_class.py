"""ConfoundingGradients' unsupervised score: one Gaussian per predicted class vs one for all.

Measures the design choice ``per_class=True`` (default) against ``per_class=False`` on the
same classifier, the same gradient features and the same test sets. No known anomalies.

Setup: a LeNet (``uniad_plugin.models.lenet``) trained for ``--clf-epochs`` on a random
subsample of the MNIST training digits 0-5 (``--n-train``); both detectors are fitted on that
subsample. ID test set: ``--n-test`` test digits 0-5. Anomaly sets (``--n-test`` each):

* ``digits 6-9``: test digits of the classes the classifier never saw (OOD);
* ``uniform``: uniform noise per pixel on the 8-bit grid (NS);
* ``gaussian``: Gaussian noise N(0.5, 1) per pixel, clipped to [0, 1], on the 8-bit grid (NS);
* ``FGSM``: FGSM (L-inf, eps ``--eps``) from correctly classified ID test digits, rounded onto
  the 8-bit grid, only the adversarials still successful after rounding (AD).

Every set lies on MNIST's 8-bit grid (the package's generators), as the ID images do.

AUROC with the anomalies as the positive class, mean ± sample std over ``--seeds`` seeds.

Run from the repository root::

    OMP_NUM_THREADS=2 python benchmarks/gradients_per_class.py

It writes ``benchmarks/results/gradients_per_class.md`` and ``.json``, headed by the command.
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from uniad_plugin.anomalies import gaussian_noise, make_adversarial, uniform_noise
from uniad_plugin.detectors.gradients import ConfoundingGradients
from uniad_plugin.models import lenet, train_classifier

sys.path.insert(0, str(Path(__file__).resolve().parent))
from protocol_common import batched, load_mnist, log, mean_std, pick, write_results  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NORMAL = list(range(6))
UNSEEN = [6, 7, 8, 9]
VARIANTS = {"per_class=True (default)": True, "per_class=False": False}


def fgsm(model: nn.Module, x: Tensor, y: Tensor, eps: float, seed: int) -> Tensor:
    """FGSM adversarials of the correctly classified ``x``, on the 8-bit grid, kept only if
    still successful after rounding (the package's generator)."""
    data = TensorDataset(x, y)
    return make_adversarial(model, data, "fgsm", eps, seed=seed, progress=False).x


def run_seed(args, seed: int, data) -> dict:
    x_tr, y_tr, x_te, y_te = data
    gen = torch.Generator().manual_seed(seed)
    tr = pick(y_tr, NORMAL, args.n_train, gen)
    te = pick(y_te, NORMAL, args.n_test, gen)
    unseen = pick(y_te, UNSEEN, args.n_test, gen)
    torch.manual_seed(seed)
    clf = lenet(num_classes=len(NORMAL))
    train = TensorDataset(x_tr[tr], y_tr[tr])
    loader = DataLoader(
        train, batch_size=128, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    train_classifier(clf, loader, epochs=args.clf_epochs, seed=seed)
    clf.eval().requires_grad_(False)
    x_id = x_te[te]
    shape = tuple(x_id.shape[1:])
    sets = {
        "digits 6-9": x_te[unseen],
        "uniform": uniform_noise(args.n_test, shape, seed=seed).x,
        "gaussian": gaussian_noise(args.n_test, shape, seed=seed, std=1.0).x,
    }
    clf.requires_grad_(True)
    sets["FGSM"] = fgsm(clf, x_id, y_te[te], args.eps, seed)
    clf.requires_grad_(False)
    res: dict = {"n": {k: len(v) for k, v in sets.items()}, "AUROC": {}}
    for name, per_class in VARIANTS.items():
        det = ConfoundingGradients(clf, per_class=per_class, seed=seed)
        det.fit(DataLoader(train, batch_size=500))
        s_id = batched(det, x_id)
        res["AUROC"][name] = {}
        for set_name, x_anom in sets.items():
            s = batched(det, x_anom)
            labels = np.r_[np.zeros(len(s_id)), np.ones(len(s))]
            res["AUROC"][name][set_name] = roc_auc_score(labels, np.r_[s_id, s])
        log(f"seed {seed}: {name}: {res['AUROC'][name]}")
    return res


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", type=Path, default=Path("../shared/data"))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--n-train", type=int, default=3000)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--clf-epochs", type=int, default=4)
    p.add_argument("--eps", type=float, default=0.15)
    p.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "gradients_per_class"
    )
    args = p.parse_args(argv)
    command = "python " + shlex.join([f"benchmarks/{Path(__file__).name}", *sys.argv[1:]])
    if "OMP_NUM_THREADS" in os.environ:
        command = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " + command
    t0 = time.time()
    root = args.root if args.root.is_absolute() else REPO / args.root
    data = (*load_mnist(root, True), *load_mnist(root, False))
    per_seed = [run_seed(args, seed, data) for seed in range(args.seeds)]
    set_names = list(per_seed[0]["n"])
    summary = {
        v: {s: mean_std([r["AUROC"][v][s] for r in per_seed]) for s in set_names} for v in VARIANTS
    }
    wall = time.time() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime

    def cell(m: dict) -> str:
        return f"{m['mean']:.3f} ± {m['std']:.3f}"

    lines = [
        "# ConfoundingGradients: per-class Gaussians vs one Gaussian (MNIST 0-5)",
        "",
        "Produced by (from the repository root):",
        "",
        "```",
        command,
        "```",
        "",
        f"{args.seeds} seeds; AUROC (anomalies positive), mean ± sample std (ddof=1) over "
        "seeds. ID test set: "
        f"{args.n_test} test digits 0-5. No known anomalies.",
        "",
        "| unsupervised score | " + " | ".join(set_names) + " |",
        "|---" * (len(set_names) + 1) + "|",
        *(
            f"| {v} | " + " | ".join(cell(summary[v][s]) for s in set_names) + " |"
            for v in VARIANTS
        ),
        "",
        "Setup:",
        "",
        f"- LeNet (6 classes), {args.clf_epochs} epochs on {args.n_train} random training "
        "digits 0-5 per seed; both detectors fitted on the same images, with their defaults "
        "otherwise (all-ones confounding label, sigmoid, log, Ledoit-Wolf shrinkage)",
        "- anomaly sets per seed (sizes of seed 0): "
        + ", ".join(f"{k} {n}" for k, n in per_seed[0]["n"].items())
        + f"; FGSM eps {args.eps}, successful adversarials of correctly classified ID digits"
        + "; every generated set on the 8-bit grid (uniad_plugin.anomalies generators)",
        f"- wall time {wall / 60:.1f} min, process CPU time {cpu / 60:.1f} min, torch threads "
        f"{torch.get_num_threads()}, torch {torch.__version__}",
        "",
    ]
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    payload = {"command": command, "config": config, "summary": summary, "per_seed": per_seed}
    write_results(args.out, "\n".join(lines), {**payload, "wall_s": wall, "cpu_s": cpu})


if __name__ == "__main__":
    main()
