"""A^3's MNIST protocol (Sperl et al., ECML-PKDD 2020) with our :class:`~uniad_plugin.detectors.a3.A3`.

Protocol (as stated by the authors' code, ``do_mnist.py``): normal data are the digits 0-5;
known anomalies are a few training images of the digits 6 and 7 (100 by default); the test sets
are the normal test digits 0-5 against (a) the test digits 6, 7 and (b) the test digits 6-9
(transfer to the unseen anomalies 8, 9). Metrics: AUC and AP, anomalies positive.

Differences from the paper, for a run of minutes on two CPU cores (all configurable):

* target network: a LeNet classifier (``uniad_plugin.models.lenet``) trained on the normal
  training subsample, then frozen (the authors' MNIST target is a convolutional autoencoder;
  their MNIST-vs-EMNIST experiment uses a classifier);
* the normal training data and the test sets are random subsamples (``--n-train``,
  ``--n-test-normal``, ``--n-test-anomaly``); the alarm network trains for ``--a3-epochs``
  epochs with lr ``--a3-lr`` (paper: all data, 60 epochs, lr 1e-5);
* baselines in the same run on the same data: autoencoder reconstruction error (small conv
  AE), Deep SVDD (one class, soft boundary nu = 0.1, ``uniad_plugin.nn.svdd``) on the raw
  pixels and on the classifier's penultimate features, Isolation Forest on the pixels. Only A3
  uses the known anomalies; the row "A3 (no known anomalies)" is the strict semi-supervised
  setting.

Run from the repository root::

    OMP_NUM_THREADS=2 python benchmarks/a3_protocol.py

It writes ``benchmarks/results/a3_protocol.md`` and ``.json``, headed by the command.
"""

from __future__ import annotations

import argparse
import inspect
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

from uniad_plugin.detectors.a3 import A3
from uniad_plugin.models import accuracy, lenet, train_classifier
from uniad_plugin.nn.taps import LayerTaps

sys.path.insert(0, str(Path(__file__).resolve().parent))
from protocol_common import batched, load_mnist, log, mean_std, pick, svdd_scores, write_results  # noqa: E402

#: A3's constructor defaults, quoted in the results next to the values this run used
A3_DEFAULTS = {
    k: v.default for k, v in inspect.signature(A3).parameters.items() if k in ("epochs", "lr")
}

REPO = Path(__file__).resolve().parents[1]
NORMAL = list(range(6))
KNOWN = [6, 7]
TEST_SETS = {"6,7": [6, 7], "6-9": [6, 7, 8, 9]}


class ConvAE(nn.Module):
    """Small convolutional autoencoder for 1x28x28 images (baseline)."""

    def __init__(self, code: int = 32) -> None:
        super().__init__()
        self.enc = nn.Sequential(
            nn.Conv2d(1, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(32 * 7 * 7, code),
        )
        self.dec = nn.Sequential(
            nn.Linear(code, 32 * 7 * 7),
            nn.ReLU(),
            nn.Unflatten(1, (32, 7, 7)),
            nn.ConvTranspose2d(32, 16, 3, stride=2, padding=1, output_padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(16, 1, 3, stride=2, padding=1, output_padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.dec(self.enc(x))  # logits


def ae_scores(x_train: Tensor, x_test: Tensor, epochs: int, seed: int) -> np.ndarray:
    torch.manual_seed(seed)
    ae = ConvAE()
    opt = torch.optim.Adam(ae.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(x_train), generator=gen).split(128):
            xb = x_train[idx]
            loss = nn.functional.binary_cross_entropy_with_logits(ae(xb), xb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    ae.eval()
    with torch.no_grad():
        rec = torch.cat([torch.sigmoid(ae(c)) for c in x_test.split(1000)])
    return (rec - x_test).pow(2).flatten(1).mean(1).numpy()


def run_seed(args, seed: int, data) -> dict:
    x_tr, y_tr, x_te, y_te = data
    gen = torch.Generator().manual_seed(seed)
    normal_idx = pick(y_tr, NORMAL, args.n_train, gen)
    known_idx = pick(y_tr, KNOWN, args.n_known, gen)
    x_norm, y_norm = x_tr[normal_idx], y_tr[normal_idx]

    test_normal = pick(y_te, NORMAL, args.n_test_normal, gen)
    tests = {name: pick(y_te, cls, args.n_test_anomaly, gen) for name, cls in TEST_SETS.items()}
    test_idx = torch.cat([test_normal, *tests.values()])
    x_test = x_te[test_idx]
    spans, start = {}, len(test_normal)
    for name, idx in tests.items():
        spans[name] = (start, start + len(idx))
        start += len(idx)
    n_norm_test = len(test_normal)

    def metrics(scores: np.ndarray) -> dict:
        out = {}
        for name, (a, b) in spans.items():
            s = np.r_[scores[:n_norm_test], scores[a:b]]
            lab = np.r_[np.zeros(n_norm_test), np.ones(b - a)]
            out[name] = {"AUC": roc_auc_score(lab, s), "AP": average_precision_score(lab, s)}
        return out

    res: dict = {"methods": {}, "timings_s": {}}

    t = time.time()
    torch.manual_seed(seed)
    clf = lenet(num_classes=len(NORMAL))
    loader = DataLoader(
        TensorDataset(x_norm, y_norm),
        batch_size=128,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    train_classifier(clf, loader, epochs=args.clf_epochs, seed=seed)
    test_id = torch.nonzero(torch.isin(y_te, torch.tensor(NORMAL))).flatten()
    res["classifier_accuracy"] = accuracy(
        clf, DataLoader(TensorDataset(x_te[test_id], y_te[test_id]), batch_size=1000)
    )
    res["timings_s"]["classifier"] = time.time() - t
    log(f"seed {seed}: classifier acc {res['classifier_accuracy']:.4f}")

    a3_kwargs = dict(epochs=args.a3_epochs, lr=args.a3_lr, hidden=args.a3_hidden, seed=seed)
    variants = [(f"A3 ({args.n_known} known anomalies)", True)]
    if not args.skip_a3_unsupervised:
        variants.append(("A3 (no known anomalies)", False))
    for name, with_known in variants:
        t = time.time()
        if with_known:
            xa = torch.cat([x_norm, x_tr[known_idx]])
            ya = torch.cat([y_norm, torch.full((len(known_idx),), -1)])
        else:
            xa, ya = x_norm, y_norm
        det = A3(clf, known_anomalies=with_known, **a3_kwargs)
        det.fit(DataLoader(TensorDataset(xa, ya), batch_size=512))
        res["methods"][name] = metrics(batched(det.predict, x_test))
        res["timings_s"][name] = time.time() - t
        res["a3_layers"] = dict(zip(det.layer_names, det.layer_dims, strict=True))
        res["a3_hidden"] = [lin.out_features for lin in det.alarm.hidden]
        log(f"seed {seed}: {name} {res['methods'][name]} ({res['timings_s'][name]:.0f}s)")
        del det

    t = time.time()
    res["methods"]["AE reconstruction error"] = metrics(
        ae_scores(x_norm, x_test, args.ae_epochs, seed)
    )
    res["timings_s"]["AE"] = time.time() - t

    t = time.time()
    res["methods"]["Deep SVDD (pixels)"] = metrics(
        svdd_scores(x_norm.flatten(1), x_test.flatten(1), (128,), args.svdd_epochs, seed)
    )
    last_linear = [n for n, m in clf.named_modules() if isinstance(m, nn.Linear)][-1]
    taps = LayerTaps(clf, [f"{last_linear}:input"])  # penultimate features
    z_tr = torch.cat([taps(c)[1][0] for c in x_norm.split(1000)]).detach()
    z_te = torch.cat([taps(c)[1][0] for c in x_test.split(1000)]).detach()
    res["penultimate_dim"] = z_tr.shape[1]
    res["methods"]["Deep SVDD (penultimate features)"] = metrics(
        svdd_scores(z_tr, z_te, (64,), args.svdd_epochs, seed)
    )
    res["timings_s"]["Deep SVDD"] = time.time() - t

    t = time.time()
    forest = IsolationForest(n_estimators=100, random_state=seed).fit(x_norm.flatten(1).numpy())
    res["methods"]["Isolation Forest (pixels)"] = metrics(
        -forest.score_samples(x_test.flatten(1).numpy())
    )
    res["timings_s"]["Isolation Forest"] = time.time() - t
    res["n"] = {
        "train_normal": len(normal_idx),
        "known_anomalies": len(known_idx),
        "test_normal": n_norm_test,
        **{f"test_{k}": len(v) for k, v in tests.items()},
    }
    log(f"seed {seed}: done, timings { ({k: round(v) for k, v in res['timings_s'].items()}) }")
    return res


def summarise(per_seed: list[dict]) -> dict:
    return {
        method: {
            f"{metric} {test}": mean_std([r["methods"][method][test][metric] for r in per_seed])
            for test in TEST_SETS
            for metric in ("AUC", "AP")
        }
        for method in per_seed[0]["methods"]
    }


def to_markdown(args, command: str, per_seed: list[dict], summary: dict, wall: float, cpu: float):
    cols = [f"{m} {t}" for t in TEST_SETS for m in ("AUC", "AP")]
    lines = [
        "# A^3 MNIST protocol: normal 0-5, known anomalies 6,7",
        "",
        "Produced by (from the repository root):",
        "",
        "```",
        command,
        "```",
        "",
        f"Seeds {args.seeds}; mean ± sample std (ddof=1) over seeds. Anomalies are the positive "
        "class for AP. Test sets: normal test digits 0-5 against test digits 6,7 and against "
        "test digits 6-9.",
        "",
        "| method | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for method, vals in summary.items():
        cells = [f"{vals[c]['mean']:.3f} ± {vals[c]['std']:.3f}" for c in cols]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    r0 = per_seed[0]
    accs = ", ".join(f"{r['classifier_accuracy']:.4f}" for r in per_seed)
    lines += [
        "",
        "Setup (subsampled to run in minutes on 2 CPU cores; the paper uses all data):",
        "",
        f"- normal training images (digits 0-5, random subsample per seed): {r0['n']['train_normal']}",
        f"- known anomalies (training digits 6,7, used only by the first A3 row): "
        f"{r0['n']['known_anomalies']}",
        f"- test images: {r0['n']['test_normal']} normal, "
        + ", ".join(f"{r0['n'][f'test_{k}']} of {k}" for k in TEST_SETS),
        f"- target network: LeNet (`uniad_plugin.models.lenet`, 6 classes), {args.clf_epochs} "
        f"epochs on the normal subsample; test accuracy on digits 0-5 per seed: {accs}",
        f"- A3: `A3(model, epochs={args.a3_epochs}, lr={args.a3_lr})`, otherwise A3's defaults "
        f"(its default epochs={A3_DEFAULTS['epochs']}, lr={A3_DEFAULTS['lr']}; `--a3-epochs`, "
        f"`--a3-lr` set these; Gaussian counter-examples N(0.5, 1), batch 256); tapped layers "
        f"{r0['a3_layers']}; alarm widths {r0['a3_hidden']}. The paper trains 60 epochs at "
        "lr 1e-5 on all normal data.",
        f"- AE: small conv autoencoder, BCE, {args.ae_epochs} epochs, score = pixel MSE",
        f"- Deep SVDD: one-class soft-boundary (nu = 0.1) `uniad_plugin.nn.svdd`, "
        f"{args.svdd_epochs} epochs; on the 784 pixels (MLP 128-32) and on the "
        f"{r0['penultimate_dim']} penultimate features of the classifier (MLP 64-32)",
        "- Isolation Forest: scikit-learn, 100 trees, flattened pixels",
        f"- wall time {wall / 60:.1f} min, process CPU time {cpu / 60:.1f} min, "
        f"torch threads {torch.get_num_threads()}, torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", type=Path, default=REPO / ".." / "shared" / "data")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (0, 1, ...)")
    p.add_argument("--n-train", type=int, default=3000, help="normal training images (0 = all)")
    p.add_argument("--n-known", type=int, default=100, help="known anomalies (digits 6,7)")
    p.add_argument("--n-test-normal", type=int, default=2000, help="0 = all")
    p.add_argument("--n-test-anomaly", type=int, default=1000, help="per test set, 0 = all")
    p.add_argument("--clf-epochs", type=int, default=4)
    p.add_argument("--a3-epochs", type=int, default=10)
    p.add_argument("--a3-lr", type=float, default=1e-4)
    p.add_argument("--a3-hidden", type=int, nargs="+", default=None)
    p.add_argument("--skip-a3-unsupervised", action="store_true")
    p.add_argument("--ae-epochs", type=int, default=10)
    p.add_argument("--svdd-epochs", type=int, default=20)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "a3_protocol")
    args = p.parse_args(argv)
    command = "python " + shlex.join([f"benchmarks/{Path(__file__).name}", *sys.argv[1:]])
    import os

    if "OMP_NUM_THREADS" in os.environ:
        command = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " + command

    t0 = time.time()
    root = args.root.resolve()
    log(f"loading MNIST from {root}")
    data = (*load_mnist(root, True), *load_mnist(root, False))
    per_seed = [run_seed(args, seed, data) for seed in range(args.seeds)]
    summary = summarise(per_seed)
    wall = time.time() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime

    md = to_markdown(args, command, per_seed, summary, wall, cpu)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    config["root"] = str(args.root)
    payload = {"command": command, "config": config, "summary": summary, "per_seed": per_seed}
    write_results(args.out, md, {**payload, "wall_s": wall, "cpu_s": cpu})


if __name__ == "__main__":
    main()
