"""UniformDetector's defaults, chosen on the validation split.

Candidates for the defaults, each given by explicit keyword arguments (the previous
defaults pinned, so that the table does not change meaning when the
package's defaults do), fitted per detector seed on the MNIST
training images and scored on the sets of ``uniad --dataset mnist --split validation`` (never
the reported sets), for the LeNet or the ResNet the benchmark trains:

- the previous defaults (Fisher's combination, grid pooling) and the three ways to
  change its fusion and pooling: the sum of z-scores, the grid's cells with their standard
  deviations (``pooling="gridstd"``), and both;
- on top of both: encoders of 128 hidden units, or the input image as one more layer;
- the sphere at test time: the predicted class's (as everywhere else) against the nearest of
  all the classes' spheres in each layer (:class:`NearestSphereDetector`), both without rival
  contrasts, which are defined by the predicted class.

The row whose arguments are the package's defaults is marked ``(the default)``.

    python benchmarks/uniform_defaults.py --data-root ../shared/data --arch lenet \\
        --detector-seeds 0 1 2

``--rows`` fits a subset of the candidates (by index). Writes
``benchmarks/results/uniform_defaults_<arch>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mnist_setup import HERE  # noqa: E402
from uniform_ablation import _over_seeds, _row  # noqa: E402
from uniform_fusion import (  # noqa: E402
    ARCHS,
    add_gaps,
    closing_lines,
    reference_rows,
    summary_table,
    validation_suite,
)
from uniform_worst_set import _predict  # noqa: E402

from uniad_plugin.detectors.uniform import UniformDetector  # noqa: E402
from uniad_plugin.nn.svdd import layer_scores  # noqa: E402


class NearestSphereDetector(UniformDetector):
    """UniformDetector that scores each layer under the nearest of all the classes' spheres,
    :math:`\\min_k d^2_{lk}/R^2_{lk}`, instead of the predicted class's: no classifier decision
    picks the sphere. Fit it with ``rivals=0``: the rival contrasts are defined by the
    predicted class."""

    def _layer_scores(self, zs: list[Tensor], classes: Tensor) -> Tensor:
        K, n = self.num_classes, len(zs[0])
        device = zs[0].device
        rows = torch.arange(n, device=device).repeat_interleave(K)
        k = torch.arange(K, device=device).repeat(n)
        scores = layer_scores(self.spheres, [z.float() for z in zs], k, self.score, rows=rows)
        return scores.view(n, K, len(self.spheres)).amin(dim=1)


def candidates(first: str, layers: list[str]) -> list[tuple[str, dict, type]]:
    """(label, keyword arguments, detector class) of every candidate; ``first``: the model's
    first module (its input is the input image), ``layers``: the default layers."""
    # the previous defaults that the candidates vary or could, pinned
    base = {"nu": 0.1, "hidden": (64,), "rep_dim": 32, "epochs": 30, "rivals": 3}
    base |= {"whiten": "full", "score": "ratio", "holdout": 0.1, "layers": list(layers)}
    both = {**base, "fusion": "zsum", "pooling": "gridstd"}
    ud, nearest = UniformDetector, NearestSphereDetector
    return [
        ("Fisher, grid (the fifth round)", {**base, "fusion": "fisher", "pooling": "grid"}, ud),
        ("sum of z-scores, grid", {**base, "fusion": "zsum", "pooling": "grid"}, ud),
        ("Fisher, gridstd", {**base, "fusion": "fisher", "pooling": "gridstd"}, ud),
        ("sum of z-scores, gridstd", both, ud),
        ("sum of z-scores, gridstd, 128 hidden units", {**both, "hidden": (128,)}, ud),
        (
            f"sum of z-scores, gridstd, the input image as a layer ({first}:input)",
            {**both, "layers": [f"{first}:input", *layers]},
            ud,
        ),
        (
            "sum of z-scores, gridstd, no contrasts: the predicted class's sphere",
            {**both, "rivals": 0},
            ud,
        ),
        (
            "sum of z-scores, gridstd, no contrasts: the nearest class's sphere",
            {**both, "rivals": 0},
            nearest,
        ),
    ]


def _fit(model, loader: DataLoader, seed: int, kwargs: dict, cls: type):
    t = time.perf_counter()
    det = cls(model, seed=seed, **kwargs).fit(loader)
    return det, time.perf_counter() - t


def _is_default(kwargs: dict, cls: type, reference: UniformDetector) -> bool:
    """Whether ``cls(model, **kwargs)`` is the package's default detector (``reference``,
    its layers resolved)."""
    return cls is UniformDetector and all(
        (list(v) == reference.layers if k == "layers" else getattr(reference, k) == v)
        for k, v in kwargs.items()
    )


def main(argv: list[str] | None = None) -> None:
    t_start = time.perf_counter()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--arch", choices=sorted(ARCHS), default="lenet")
    ap.add_argument("--seed", type=int, default=0, help="seed of the model and the sets")
    ap.add_argument("--detector-seeds", type=int, nargs="+", default=None)
    ap.add_argument("--rows", type=int, nargs="+", default=None, help="candidates to fit")
    ap.add_argument("--cache-dir", default=None, help="cache of the models and adversarials")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    suite, sets, kinds = validation_suite(args.data_root, args.arch, args.seed, args.cache_dir)
    model, splits = suite.model.eval(), suite.splits
    loader = DataLoader(splits.train, batch_size=1000)
    seeds = args.detector_seeds or [args.seed]
    reference = UniformDetector(model)
    reference.extract(splits.train.tensors[0][:2])  # picks the default layers
    first = next(n for n, m in model.named_modules() if not list(m.children()))
    every = candidates(first, reference.layers)
    groups = []
    for i in args.rows if args.rows is not None else range(len(every)):
        label, kwargs, cls = every[i]
        if _is_default(kwargs, cls, reference):
            label += " (the default)"
        rows = []
        for seed in seeds:
            det, seconds = _fit(model, loader, seed, kwargs, cls)
            rows.append(_row(label, {n: _predict(det, x) for n, x in sets.items()}, kinds, seconds))
            print(seed, label, round(rows[-1]["mean"], 4), rows[-1]["min_set"], flush=True)
        groups.append(rows)
    rows = [_over_seeds(g, kinds) for g in groups]
    for r, g in zip(rows, groups):
        r["seed_min"] = [x["min"] for x in g]
    rows += reference_rows(model, reference, splits, sets, kinds, loader, args.seed)
    best = add_gaps(rows, kinds)
    cmd = "python benchmarks/uniform_defaults.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    meta = {
        "command": cmd.strip(),
        "arch": ARCHS[args.arch],
        "layers": reference.layers,
        "detector_seeds": seeds,
        "wall_s": time.perf_counter() - t_start,
        "notes": list(suite.notes),
    }
    out = Path(args.out or HERE / "results" / f"uniform_defaults_{args.arch}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(
        json.dumps({**meta, "rows": rows, "best": best}, indent=1, default=str)
    )
    out.with_suffix(".md").write_text(_markdown(meta, rows, kinds, best))
    print(out.with_suffix(".md").read_text())


def _markdown(meta: dict, rows: list[dict], kinds: dict, best: dict) -> str:
    seeds = meta["detector_seeds"]
    lines = [
        f"# UniformDetector's defaults, MNIST validation split ({meta['arch']})",
        "",
        f"Command: `{meta['command']}` ({meta['wall_s']:.0f} s). Validation sets only. Default "
        f"layers: {', '.join(meta['layers'])}. Detector seeds {seeds}"
        + (
            ": means over seeds (AUROCs) and the classes' mean ± sample std; `min set` is the "
            "worst of the seed means, `worst set per seed` each seed's own."
            if len(seeds) > 1
            else "."
        )
        + " `worst gap`: the row's AUROC minus the best built-in's, the worst over all sets.",
        "",
    ]
    lines += summary_table(rows)
    if len(seeds) > 1:
        lines += ["", "| variant | worst set per seed |", "|---|---|"]
        lines += [
            f"| {r['variant']} | " + ", ".join(f"{v:.3f}" for v in r["seed_min"]) + " |"
            for r in rows
            if "seed_min" in r
        ]
    ad = [n for n in kinds if kinds[n] == "AD"]
    lines += closing_lines(rows, ad, best, meta["notes"], "Adversarial sets")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
