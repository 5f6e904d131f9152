"""R2-AD2's MNIST protocol (Răduţoiu et al., ECML-PKDD 2022) with R2AD2 and ConfoundingGradients.

Protocol (as stated by the authors' code, ``do_mnist.py``): normal data are the digits 0-3,
anomalies the digits 4-9; 100 known anomalies (training images of the digits 4-9) by default;
the test set is the normal test digits 0-3 against the test digits 4-9. Metrics: AUC and AP,
anomalies positive, mean ± std over seeds.

Differences from the paper, for a run of minutes on two CPU cores (all configurable):

* the normal training data, the known anomalies and the test sets are random subsamples per
  seed (``--n-train``, ``--n-known``, ``--n-test-normal``, ``--n-test-anomaly``);
* two targets: a LeNet-5 classifier (``uniad_plugin.models.lenet``, 4 classes) trained on the
  normal subsample, and a small convolutional autoencoder (8 filters, code 8, sigmoid output,
  BCE; the paper's MNIST target is a convolutional autoencoder of this kind), trained on the
  same subsample. The paper trains its R2-AD2 autoencoder on 75% of the normal data and keeps
  25% for the alarm; here both see the whole subsample;
* R2AD2 uses its defaults: :math:`T = 3` snapshots 5 epochs apart, gradients of the last two
  parametrised layers (without tensors above 4,096 elements outside the last layer), small
  alarm (100, 50, 25, 10), ``--r2ad2-epochs`` epochs (paper: all layers of the autoencoder,
  big alarm, 100 epochs);
* ConfoundingGradients (Lee et al.) on the LeNet, with and without the known anomalies;
* baselines in the same run on the same data: reconstruction error of the same autoencoder
  (pixel MSE), one-class Deep SVDD (soft boundary nu = 0.1, ``uniad_plugin.nn.svdd``) on the raw
  pixels, Isolation Forest on the pixels. Baselines use no known anomalies.

Run from the repository root::

    OMP_NUM_THREADS=1 python benchmarks/r2ad2_protocol.py

It writes ``benchmarks/results/r2ad2_protocol.md`` and ``.json``, headed by the command.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.ensemble import IsolationForest
from sklearn.metrics import average_precision_score, roc_auc_score
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from uniad_plugin.detectors.gradients import ConfoundingGradients
from uniad_plugin.detectors.r2ad2 import R2AD2
from uniad_plugin.models import accuracy, lenet, train_classifier

sys.path.insert(0, str(Path(__file__).resolve().parent))
from protocol_common import batched, load_mnist, log, mean_std, pick, svdd_scores, write_results  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NORMAL = [0, 1, 2, 3]
ANOMALOUS = [4, 5, 6, 7, 8, 9]


def conv_autoencoder() -> nn.Sequential:
    """Small convolutional autoencoder in the style of the authors' MNIST target (code 8)."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 7 * 7, 8),
        nn.ReLU(),
        nn.Linear(8, 8 * 7 * 7),
        nn.ReLU(),
        nn.Unflatten(1, (8, 7, 7)),
        nn.ConvTranspose2d(8, 8, 3, stride=2, padding=1, output_padding=1),
        nn.ReLU(),
        nn.ConvTranspose2d(8, 1, 3, stride=2, padding=1, output_padding=1),
        nn.Sigmoid(),
    )


def train_autoencoder(x: Tensor, epochs: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    ae = conv_autoencoder()
    opt = torch.optim.Adam(ae.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(256):
            xb = x[idx]
            loss = nn.functional.binary_cross_entropy(ae(xb), xb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return ae.eval()


def run_seed(args, seed: int, data) -> dict:
    x_tr, y_tr, x_te, y_te = data
    gen = torch.Generator().manual_seed(seed)
    normal_idx = pick(y_tr, NORMAL, args.n_train, gen)
    known_idx = pick(y_tr, ANOMALOUS, args.n_known, gen)
    x_norm, y_norm = x_tr[normal_idx], y_tr[normal_idx]
    x_known = x_tr[known_idx]
    test_normal = pick(y_te, NORMAL, args.n_test_normal, gen)
    test_anom = pick(y_te, ANOMALOUS, args.n_test_anomaly, gen)
    x_test = torch.cat([x_te[test_normal], x_te[test_anom]])
    labels = np.r_[np.zeros(len(test_normal)), np.ones(len(test_anom))]

    def metrics(scores: np.ndarray) -> dict:
        return {"AUC": roc_auc_score(labels, scores), "AP": average_precision_score(labels, scores)}

    with_known = TensorDataset(
        torch.cat([x_norm, x_known]),
        torch.cat([y_norm, torch.full((len(known_idx),), -1, dtype=torch.long)]),
    )
    only_normal = TensorDataset(x_norm, y_norm)
    res: dict = {"methods": {}, "timings_s": {}}

    def record(name: str, t0: float, scores: np.ndarray) -> None:
        res["methods"][name] = metrics(scores)
        res["timings_s"][name] = time.time() - t0
        m = res["methods"][name]
        log(f"seed {seed}: {name}: AUC {m['AUC']:.3f} AP {m['AP']:.3f} ({time.time() - t0:.0f}s)")

    t = time.time()
    torch.manual_seed(seed)
    clf = lenet(num_classes=len(NORMAL))
    loader = DataLoader(
        only_normal, batch_size=128, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    train_classifier(clf, loader, epochs=args.clf_epochs, seed=seed)
    test_id = torch.nonzero(torch.isin(y_te, torch.tensor(NORMAL))).flatten()
    res["classifier_accuracy"] = accuracy(
        clf, DataLoader(TensorDataset(x_te[test_id], y_te[test_id]), batch_size=1000)
    )
    res["timings_s"]["classifier"] = time.time() - t
    t = time.time()
    ae = train_autoencoder(x_norm, args.ae_epochs, seed)
    res["timings_s"]["autoencoder"] = time.time() - t
    log(f"seed {seed}: classifier acc {res['classifier_accuracy']:.4f}, AE trained")

    r2_kwargs = dict(epochs=args.r2ad2_epochs, seed=seed)
    fit_bs = 512
    t = time.time()
    det = R2AD2(clf, known_anomalies=True, **r2_kwargs)
    det.fit(DataLoader(with_known, batch_size=fit_bs))
    res["r2ad2_classifier_params"] = det.params
    record(f"R2AD2, LeNet target ({len(known_idx)} known)", t, batched(det, x_test))
    if args.r2ad2_unsupervised:
        t = time.time()
        det = R2AD2(clf, **r2_kwargs).fit(DataLoader(only_normal, batch_size=fit_bs))
        record("R2AD2, LeNet target (no known)", t, batched(det, x_test))
    t = time.time()
    det = R2AD2(ae, target="autoencoder", known_anomalies=True, **r2_kwargs).fit(
        DataLoader(with_known, batch_size=fit_bs)
    )
    res["r2ad2_autoencoder_params"] = det.params
    record(f"R2AD2, autoencoder target ({len(known_idx)} known)", t, batched(det, x_test))
    del det

    t = time.time()
    det = ConfoundingGradients(clf, seed=seed).fit(DataLoader(only_normal, batch_size=fit_bs))
    record("ConfoundingGradients (no known)", t, batched(det, x_test))
    t = time.time()
    det = ConfoundingGradients(clf, known_anomalies=True, seed=seed)
    det.fit(DataLoader(with_known, batch_size=fit_bs))
    record(f"ConfoundingGradients ({len(known_idx)} known)", t, batched(det, x_test))
    del det

    t = time.time()
    with torch.no_grad():
        rec = torch.cat([ae(c) for c in x_test.split(1000)])
    record("AE reconstruction error", t, (rec - x_test).pow(2).flatten(1).mean(1).numpy())
    t = time.time()
    record(
        "Deep SVDD (pixels)",
        t,
        svdd_scores(x_norm.flatten(1), x_test.flatten(1), (128,), args.svdd_epochs, seed),
    )
    t = time.time()
    forest = IsolationForest(n_estimators=100, random_state=seed).fit(x_norm.flatten(1).numpy())
    record("Isolation Forest (pixels)", t, -forest.score_samples(x_test.flatten(1).numpy()))
    res["n"] = {
        "train_normal": len(normal_idx),
        "known_anomalies": len(known_idx),
        "test_normal": len(test_normal),
        "test_anomalous": len(test_anom),
    }
    return res


def summarise(per_seed: list[dict]) -> dict:
    return {
        method: {
            "AUC": mean_std([r["methods"][method]["AUC"] for r in per_seed]),
            "AP": mean_std([r["methods"][method]["AP"] for r in per_seed]),
            "seconds": float(np.mean([r["timings_s"][method] for r in per_seed])),
        }
        for method in per_seed[0]["methods"]
    }


def to_markdown(args, command: str, per_seed: list[dict], summary: dict, wall: float, cpu: float):
    lines = [
        "# R2-AD2 MNIST protocol: normal 0-3, anomalies 4-9",
        "",
        "Produced by (from the repository root):",
        "",
        "```",
        command,
        "```",
        "",
        f"{args.seeds} seeds; mean ± sample std (ddof=1) over seeds. Anomalies are the positive "
        "class for AP. Test set: normal test digits 0-3 against test digits 4-9.",
        "",
        "| method | AUC | AP | fit + score time (s) |",
        "|---|---|---|---|",
    ]
    for method, v in summary.items():
        lines.append(
            f"| {method} | {v['AUC']['mean']:.3f} ± {v['AUC']['std']:.3f} | "
            f"{v['AP']['mean']:.3f} ± {v['AP']['std']:.3f} | {v['seconds']:.0f} |"
        )
    r0 = per_seed[0]
    accs = ", ".join(f"{r['classifier_accuracy']:.4f}" for r in per_seed)
    lines += [
        "",
        "Setup (subsampled to run in minutes on 2 CPU cores; the paper uses all data):",
        "",
        f"- normal training images (digits 0-3, random subsample per seed): "
        f"{r0['n']['train_normal']}",
        f"- known anomalies (training digits 4-9, used only by the rows that say so): "
        f"{r0['n']['known_anomalies']}",
        f"- test images: {r0['n']['test_normal']} normal, {r0['n']['test_anomalous']} anomalous",
        f"- LeNet-5 target (`uniad_plugin.models.lenet`, 4 classes), {args.clf_epochs} epochs on "
        f"the normal subsample; test accuracy on digits 0-3 per seed: {accs}",
        f"- autoencoder target/baseline: conv AE (8 filters, code 8, sigmoid, BCE), "
        f"{args.ae_epochs} epochs on the normal subsample; the baseline score is the pixel MSE",
        f"- R2AD2: defaults except `epochs={args.r2ad2_epochs}` (paper 100): T = 3 snapshots, "
        f"5 snapshot epochs, small alarm (100, 50, 25, 10), Gaussian counter-examples N(0.5, 1); "
        f"gradient of {r0['r2ad2_classifier_params']} (LeNet, cross-entropy w.r.t. the "
        f"predicted class) and of {r0['r2ad2_autoencoder_params']} (autoencoder, reconstruction "
        "BCE)",
        "- ConfoundingGradients: defaults (all-ones confounding label, sigmoid, squared gradient "
        "norms of all 10 parameter tensors, log, per-predicted-class Gaussian; with known "
        "anomalies: 2-layer classifier)",
        f"- Deep SVDD: one-class soft boundary (nu = 0.1) `uniad_plugin.nn.svdd` on the 784 "
        f"pixels (MLP 128-32), {args.svdd_epochs} epochs",
        "- Isolation Forest: scikit-learn, 100 trees, flattened pixels",
        f"- wall time {wall / 60:.1f} min, process CPU time {cpu / 60:.1f} min, "
        f"torch threads {torch.get_num_threads()}, torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--root",
        type=Path,
        default=Path("../shared/data"),
        help="torchvision MNIST root (relative paths: from the repository root)",
    )
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (0, 1, ...)")
    p.add_argument("--n-train", type=int, default=3000, help="normal training images (0 = all)")
    p.add_argument("--n-known", type=int, default=100, help="known anomalies (digits 4-9)")
    p.add_argument("--n-test-normal", type=int, default=1000, help="0 = all")
    p.add_argument("--n-test-anomaly", type=int, default=1000, help="0 = all")
    p.add_argument("--clf-epochs", type=int, default=4)
    p.add_argument("--ae-epochs", type=int, default=10)
    p.add_argument("--r2ad2-epochs", type=int, default=30)
    p.add_argument(
        "--r2ad2-unsupervised", action="store_true", help="add R2AD2 without known anomalies"
    )
    p.add_argument("--svdd-epochs", type=int, default=20)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "r2ad2_protocol")
    args = p.parse_args(argv)
    command = "python " + shlex.join([f"benchmarks/{Path(__file__).name}", *sys.argv[1:]])
    if "OMP_NUM_THREADS" in os.environ:
        command = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " + command

    t0 = time.time()
    root = args.root if args.root.is_absolute() else REPO / args.root
    log(f"loading MNIST from {root.resolve()}")
    data = (*load_mnist(root, True), *load_mnist(root, False))
    per_seed = [run_seed(args, seed, data) for seed in range(args.seeds)]
    summary = summarise(per_seed)
    wall = time.time() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime

    md = to_markdown(args, command, per_seed, summary, wall, cpu)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    payload = {"command": command, "config": config, "summary": summary, "per_seed": per_seed}
    write_results(args.out, md, {**payload, "wall_s": wall, "cpu_s": cpu})


if __name__ == "__main__":
    main()
