"""Which sphere geometry UniformDetector should use: a study on the validation splits.

A study, not a benchmark. The detector's spheres sit on the tapped layers' activations; this
script varies how, one thing at a time, with the layers' activations extracted once:

* ``trained encoders``: the detector as it was up to commit 79c995c (a trained bias-free MLP
  encoder per class, Deep SVDD's soft boundary); those rows of the committed results come
  from that commit (``git checkout 79c995c``, same command); the detector no longer has
  encoders, and this script reproduces the other rows only;
* ``whitened``: no trained encoder, :math:`\\phi` the whitening map of the layer (the inverse
  square root of the tied within-class covariance, fitted on ID data); each class's centre is
  its mean and :math:`R^2` the :math:`(1-\\nu)`-quantile of its squared distances, the
  soft-boundary optimum for that centre;
* ``diag`` / ``raw``: the same with per-feature standardisation / no normalisation;
* ``only <layer>``: the spheres of one layer alone, no rival contrast (``only <layer>'s
  direction``: the penultimate layer's features divided by their norm);
* ``+ penultimate direction``: one more layer, the penultimate features divided by their
  norm (the geometry KNN scores in), with its own spheres and rival contrast;

each with ``avg`` (spatial means) or ``grid`` pooling, with or without the softmax layers and
the rival contrasts, the layers fused as the detector fuses them (z-scores on held-out ID
data). pytorch-ood's MultiMahalanobis and Mahalanobis are scored beside them, built as the
``uniad`` command builds them. Every set is a validation set (``--split validation``).

    python experiments/sphere_geometry.py cifar --train-dir /tmp/cifar10/train \\
        --test-dir /tmp/cifar10/test --model benchmarks/weights/resnet20.pt
    python experiments/sphere_geometry.py mnist --data-root ../shared/data
    python experiments/sphere_geometry.py cifar --train-dir /tmp/cifar_open/train \
        --test-dir /tmp/cifar_open/test --model benchmarks/weights/resnet20_open.pt \
        --ood letters photos /tmp/cifar4_near_val --n-ood 1000 --name cifar_open6

(the last: the open-set ResNet-20 of six classes, its near-OOD validation set the other four
classes' *training* images; its report set is their test images).

Writes ``experiments/results/sphere_geometry_<name>.md`` and ``.json``.
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
from torch import Tensor
from torch.utils.data import DataLoader, Subset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from uniad_plugin.benchmark import RunConfig, build_detectors, prepare_suite  # noqa: E402
from uniad_plugin.nn.taps import LayerTaps, default_layers, pool  # noqa: E402

REFERENCES = ("MultiMahalanobis", "Mahalanobis")
SOFTMAX = ("log_softmax", "softmax")


def auroc(id_scores: Tensor, scores: Tensor) -> float:
    labels = torch.cat([torch.zeros(len(id_scores)), -torch.ones(len(scores))]).long()
    return float(OODMetrics().update(torch.cat([id_scores, scores]), labels).compute()["AUROC"])


def extract(taps: LayerTaps, x: Tensor) -> tuple[list[Tensor], Tensor]:
    feats, logits = [], []
    for chunk in x.split(500):
        with torch.no_grad():
            lg, f = taps(chunk)
        feats.append([t.double() for t in f])
        logits.append(lg)
    return [torch.cat(col) for col in zip(*feats)], torch.cat(logits)


def projection(z: Tensor, y: Tensor, k: int, norm: str, shrinkage: float = 1e-3) -> Tensor:
    mu = torch.zeros(k, z.shape[1], dtype=z.dtype).index_add_(0, y, z)
    mu /= torch.bincount(y, minlength=k).clamp_min(1)[:, None]
    centred = z - mu[y]
    if norm == "raw":
        return torch.eye(z.shape[1], dtype=z.dtype)
    if norm == "diag":
        var = centred.pow(2).mean(0)
        return torch.diag((var + shrinkage * var.mean() + 1e-12).rsqrt())
    cov = centred.T @ centred / max(len(z) - k, 1)
    evals, evecs = torch.linalg.eigh(cov)
    evals = evals.clamp_min(0)
    evals = evals + shrinkage * evals.mean() + 1e-12
    return evecs @ torch.diag(evals.rsqrt()) @ evecs.T


class Spheres:
    """Per-class spheres on one layer: ``phi(z) = z @ P``, class means, quantile radii."""

    def __init__(
        self, z: Tensor, y: Tensor, k: int, norm: str, nu: float, shrinkage: float = 1e-3
    ) -> None:
        self.proj = projection(z, y, k, norm, shrinkage)
        h = z @ self.proj
        self.center = torch.zeros(k, h.shape[1], dtype=h.dtype).index_add_(0, y, h)
        self.center /= torch.bincount(y, minlength=k).clamp_min(1)[:, None]
        d2 = (h - self.center[y]).pow(2).sum(1)
        self.r2 = torch.stack([torch.quantile(d2[y == c], 1 - nu) for c in range(k)])

    def ratio(self, z: Tensor, cls: Tensor) -> Tensor:
        h = z @ self.proj
        return (h - self.center[cls]).pow(2).sum(1) / self.r2[cls]

    def all_ratios(self, z: Tensor) -> Tensor:
        h = z @ self.proj
        return torch.cdist(h, self.center).pow(2) / self.r2[None, :]


def variant_scores(
    fit: tuple[list[Tensor], Tensor, Tensor],
    held: tuple[list[Tensor], Tensor],
    sets: dict[str, tuple[list[Tensor], Tensor]],
    layers: list[str],
    *,
    norm: str,
    softmax: bool,
    rivals: int,
    nu: float = 0.1,
    shrinkage: float = 1e-3,
    direction: bool = False,
) -> dict[str, Tensor]:
    if direction:  # one more layer: the penultimate features' direction (L2-normalised)
        fit, held, sets, layers = _with_direction(fit, held, sets, layers)
    zs, y, _ = fit
    k = int(y.max()) + 1
    keep = [i for i, n in enumerate(layers) if softmax or n not in SOFTMAX]
    spheres = {
        i: Spheres(zs[i], y, k, "raw" if layers[i] == "softmax" else norm, nu, shrinkage)
        for i in keep
    }
    contrast = [i for i in keep if layers[i] not in SOFTMAX] if rivals else []

    def raw(feats: list[Tensor], logits: Tensor) -> Tensor:
        pred = logits.argmax(1)
        cols = [spheres[i].ratio(feats[i], pred) for i in keep]
        if contrast:
            ranked = logits.argsort(1, descending=True)[:, 1 : 1 + rivals]
            for i in contrast:
                s = spheres[i].all_ratios(feats[i])
                own = s.gather(1, pred[:, None]).squeeze(1)
                rival = s.gather(1, ranked).amin(1)
                cols.append(torch.log(own.clamp_min(1e-12) / rival.clamp_min(1e-12)))
        return torch.stack(cols, 1)

    h = raw(*held)
    mean, std = h.mean(0), h.std(0).clamp_min(1e-12)
    return {n: ((raw(*v) - mean) / std).sum(1).float() for n, v in sets.items()}


def _unit(z: Tensor) -> Tensor:
    return z / z.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _with_direction(fit, held, sets, layers):
    """The layers with the penultimate one's L2-normalised copy added after it (the last
    layer before the softmax layers), as one more sphere layer with its own rival contrast."""
    pen = max(i for i, n in enumerate(layers) if n not in SOFTMAX)

    def add(feats: list[Tensor]) -> list[Tensor]:
        return feats[: pen + 1] + [_unit(feats[pen])] + feats[pen + 1 :]

    names = layers[: pen + 1] + [f"{layers[pen]}/direction"] + layers[pen + 1 :]
    fit = (add(fit[0]), *fit[1:])
    held = (add(held[0]), held[1])
    sets = {n: (add(v[0]), v[1]) for n, v in sets.items()}
    return fit, held, sets, names


def _layer_alone(fit, held, sets, i, transform=lambda z: z):
    """``fit``, ``held`` and ``sets`` with layer ``i`` only (``transform`` applied to it)."""
    fit = ([transform(fit[0][i])], *fit[1:])
    held = ([transform(held[0][i])], held[1])
    return fit, held, {n: ([transform(v[0][i])], v[1]) for n, v in sets.items()}


def summary(
    name: str,
    scores: dict[str, Tensor],
    kinds: dict[str, str],
    seconds: float,
    per_set: dict[str, float] | None = None,
) -> dict:
    if per_set is None:
        per_set = {n: auroc(scores["ID"], s) for n, s in scores.items() if n != "ID"}
    means = {
        c: sum(v for n, v in per_set.items() if kinds[n] == c)
        / max(1, sum(kinds[n] == c for n in per_set))
        for c in ("OOD", "AD", "NS")
    }
    means["all"] = sum(means.values()) / 3  # the mean of the class means, as in every table
    return {"variant": name, "sets": per_set, "means": means, "seconds": round(seconds, 1)}


def config_for(args: argparse.Namespace) -> RunConfig:
    common = {"split": "validation", "seed": args.seed, "progress": False}
    if args.cache_dir:
        common["cache_dir"] = args.cache_dir
    if args.data == "mnist":  # the suites the MNIST defaults were chosen on (full size)
        return RunConfig(
            dataset="mnist", data_root=args.data_root, arch=args.arch, train=True, **common
        )
    return RunConfig(
        dataset="folder",
        fast=True,
        train_dir=args.train_dir,
        test_dir=args.test_dir,
        arch=args.arch,
        model_path=args.model,
        ood=args.ood,
        n_ood=args.n_ood,
        **common,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", choices=["cifar", "mnist"])
    parser.add_argument("--train-dir")
    parser.add_argument("--test-dir")
    parser.add_argument("--model", help="weights of --arch (cifar)")
    parser.add_argument(
        "--arch",
        default=None,
        help="module:function of the network (default: resnet20_cifar; mnist: lenet)",
    )
    parser.add_argument("--data-root", help="torchvision data folder (mnist)")
    parser.add_argument("--name", default=None, help="results file suffix")
    parser.add_argument(
        "--ood",
        nargs="*",
        default=None,
        help="OOD sets (cifar; default: the run's own); a folder of images is one more set, "
        "e.g. the held-out classes' training images for an open-set model",
    )
    parser.add_argument("--n-ood", type=int, default=None, help="images per OOD set (cifar)")
    parser.add_argument("--n-fit", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument(
        "--shrinkage",
        type=float,
        nargs="*",
        default=[0.01, 0.1, 0.3, 1.0],
        help="more shrinkages of the covariance to try (the rows above use 0.001)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "results")
    args = parser.parse_args(argv)
    name = args.name or args.data
    if args.arch is None:
        cifar = args.data == "cifar"
        args.arch = f"uniad_plugin.models:{'resnet20_cifar' if cifar else 'lenet'}"
    suite = prepare_suite(config_for(args))
    model = suite.model
    sets_x = {"ID": suite.splits.test.tensors[0]}
    sets_x |= {a.name: a.x for a in suite.anomalies if len(a.x)}
    kinds = {a.name: a.kind for a in suite.anomalies if len(a.x)}
    train = suite.splits.train
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed))
    pick = order[: args.n_fit]
    xs, ys = zip(*(train[i] for i in pick.tolist()))
    x_fit, y_fit = torch.stack(xs), torch.as_tensor(ys).long()
    # the detector's hold-out: 10% of each class
    gen = torch.Generator().manual_seed(args.seed)
    held_mask = torch.zeros(len(y_fit), dtype=torch.bool)
    for c in y_fit.unique():
        idx = torch.nonzero(y_fit == c).flatten()
        held_mask[idx[torch.randperm(len(idx), generator=gen)[: max(1, len(idx) // 10)]]] = True
    rows = []
    model.eval()
    layers = default_layers(model, x_fit[:2])
    for pooling in ("avg", "grid"):
        taps = LayerTaps(model, layers, reduce=lambda t, mode=pooling: pool(t, mode))
        t = time.time()
        f_all, lg_all = extract(taps, x_fit)
        fit = ([f[~held_mask] for f in f_all], y_fit[~held_mask], lg_all[~held_mask])
        held = ([f[held_mask] for f in f_all], lg_all[held_mask])
        sets = {n: extract(taps, x) for n, x in sets_x.items()}
        print(f"{pooling}: layers {layers}, extraction {time.time() - t:.0f} s", flush=True)
        for norm in ("whitened", "diag", "raw"):
            for softmax in (True, False):
                for rivals in (3, 0):
                    if norm != "whitened" and not (softmax and rivals):
                        continue
                    t = time.time()
                    scores = variant_scores(
                        fit,
                        held,
                        sets,
                        layers,
                        norm=norm.replace("whitened", "full"),
                        softmax=softmax,
                        rivals=rivals,
                    )
                    label = (
                        f"{norm}, {pooling}, "
                        f"{'with' if softmax else 'no'} softmax layers, rivals={rivals}"
                    )
                    rows.append(summary(label, scores, kinds, time.time() - t))
                    print(f"{label}: {rows[-1]['means']}", flush=True)
        if pooling == "avg":
            for i, layer in enumerate(layers):  # each layer on its own, no rival contrast
                alone = _layer_alone(fit, held, sets, i)
                norm = "raw" if layer == "softmax" else "full"
                scores = variant_scores(*alone, [layer], norm=norm, softmax=True, rivals=0)
                rows.append(summary(f"only {layer}, whitened, avg", scores, kinds, 0.0))
            pen = max(i for i, n in enumerate(layers) if n not in SOFTMAX)
            unit = _layer_alone(fit, held, sets, pen, transform=_unit)
            scores = variant_scores(*unit, ["direction"], norm="full", softmax=True, rivals=0)
            label = f"only {layers[pen]}'s direction, whitened, avg"
            rows.append(summary(label, scores, kinds, 0.0))
            scores = variant_scores(
                fit, held, sets, layers, norm="full", softmax=True, rivals=3, direction=True
            )
            label = "whitened, avg, with softmax layers, rivals=3, + penultimate direction"
            rows.append(summary(label, scores, kinds, 0.0))
            print(f"{label}: {rows[-1]['means']}", flush=True)
        for shrinkage in args.shrinkage:
            scores = variant_scores(
                fit, held, sets, layers, norm="full", softmax=True, rivals=3, shrinkage=shrinkage
            )
            label = f"whitened, {pooling}, with softmax layers, rivals=3, shrinkage={shrinkage:g}"
            rows.append(summary(label, scores, kinds, 0.0))
            print(f"{label}: {rows[-1]['means']}", flush=True)
    loader = DataLoader(Subset(train, pick.tolist()), batch_size=500)
    for entry in build_detectors(list(REFERENCES), model, sets_x["ID"][:4]):
        t = time.time()
        entry.detector.fit(loader)
        with torch.no_grad():
            scores = {
                n: torch.cat([entry.detector(c) for c in x.split(500)]) for n, x in sets_x.items()
            }
        rows.append(summary(f"[built-in] {entry.name}", scores, kinds, time.time() - t))
        print(f"{rows[-1]['variant']}: {rows[-1]['means']}", flush=True)
    earlier = _earlier_rows(args.out / f"sphere_geometry_{name}.json", rows)
    first_builtin = next(i for i, r in enumerate(rows) if r["variant"].startswith("[built-in]"))
    rows[first_builtin:first_builtin] = earlier
    write(args, name, rows, kinds, {n: len(x) for n, x in sets_x.items()}, argv)


def _earlier_rows(path: Path, rows: list[dict]) -> list[dict]:
    """The rows of an earlier results file that this script no longer produces (those of the
    trained encoders, from commit 79c995c), kept beside the new rows of the same sets."""
    if not path.is_file():
        return []
    produced = {r["variant"] for r in rows}
    earlier = json.loads(path.read_text())["rows"]
    return [r for r in earlier if "commit 79c995c" in r["variant"] and r["variant"] not in produced]


def render(path: Path) -> None:
    """Rewrite the table of a results JSON (the class means recomputed from its sets)."""
    data = json.loads(path.read_text())
    kinds = data["meta"]["kinds"]
    rows = [summary(r["variant"], {}, kinds, r["seconds"], per_set=r["sets"]) for r in data["rows"]]
    command = data["meta"]["command"]
    args = argparse.Namespace(out=path.parent, n_fit=data["meta"].get("n_fit", 5000))
    write(
        args,
        path.stem.removeprefix("sphere_geometry_"),
        rows,
        kinds,
        data["meta"]["sets"],
        shlex.split(command)[2:],
    )


def write(args, name, rows, kinds, sizes, argv) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python experiments/sphere_geometry.py " + shlex.join(argv or sys.argv[1:])
    meta = {"command": command, "sets": sizes, "kinds": kinds, "n_fit": args.n_fit}
    (args.out / f"sphere_geometry_{name}.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=1)
    )
    names = list(kinds)
    lines = [
        f"# Sphere geometry of UniformDetector, validation split ({name})",
        "",
        f"AUROC, {sizes['ID']} ID validation inputs against each set; spheres and built-ins "
        f"fitted on {args.n_fit} training inputs (10% of each class held out to standardise "
        "the layer scores).",
        "",
        "| variant | OOD | AD | NS | mean |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        m = r["means"]
        lines.append(
            f"| {r['variant']} | {m['OOD']:.3f} | {m['AD']:.3f} | {m['NS']:.3f} | {m['all']:.3f} |"
        )
    lines += ["", "| variant | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for r in rows:
        lines.append(
            f"| {r['variant']} | " + " | ".join(f"{r['sets'][n]:.3f}" for n in names) + " |"
        )
    lines += ["", "Produced by:", "", f"    {command}", ""]
    if any("commit 79c995c" in r["variant"] for r in rows):
        lines += [
            "The rows `trained encoders (commit 79c995c)` come from the same command at that "
            "commit, where the detector still trained an encoder per class; the script now "
            "reproduces the other rows.",
            "",
        ]
    (args.out / f"sphere_geometry_{name}.md").write_text("\n".join(lines))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--render"]:
        render(Path(sys.argv[2]))
    else:
        main()
