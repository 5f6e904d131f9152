"""UniformDetector's layer scores: the current class layout beside the previous one.

Side by side in one run, interleaved, medians reported: the raw layer scores (the spheres of
every layer under the predicted class, and the rival contrasts) of the MNIST test images, from
activations extracted once, with

- ``current``: the detector's own ``_layer_scores`` (one
  :class:`~uniad_plugin.nn.grouping.ClassGroups` layout per pass, the predicted class and the rivals of the contrasted layers in one pass,
  rows gathered with ``index_select``);
- ``previous``: the layout before it, kept here as the reference (every layer under the
  predicted class in one pass, then the rivals in a second pass over the activations repeated
  once per rival; each pass concatenates the layers, scatters the rows into a zero-padded
  tensor and gathers the scores back);

and the model's forward pass for scale. It also checks that both give the same scores.

    python benchmarks/scoring_layout.py --data-root ../shared/data [--arch resnet]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mnist_setup import CACHE, HERE  # noqa: E402

from uniad_plugin.benchmark import trained_model  # noqa: E402
from uniad_plugin.data import mnist_dataset  # noqa: E402
from uniad_plugin.detectors.uniform import UniformDetector  # noqa: E402
from uniad_plugin.models import lenet, resnet_mnist  # noqa: E402
from uniad_plugin.nn.rivals import as_ranked  # noqa: E402

ARCHS = {"lenet": lenet, "resnet": resnet_mnist}


def previous_layer_scores(spheres, zs: list[Tensor], k: Tensor) -> Tensor:
    """The grouped scorer of the previous layout (ratio scores, fitted spheres)."""
    n = len(k)
    order = torch.argsort(k, stable=True)
    present, counts = torch.unique_consecutive(k[order], return_counts=True)
    group = torch.repeat_interleave(torch.arange(len(present), device=k.device), counts)
    pos = torch.arange(n, device=k.device) - (torch.cumsum(counts, 0) - counts)[group]
    dims = [z.shape[1] for z in zs]
    z_all = torch.cat(zs, dim=1)[order]
    grouped = z_all.new_zeros(len(present), int(counts.max()), z_all.shape[1])
    grouped[group, pos] = z_all
    every = len(present) == spheres[0].n_classes

    def rows(t: Tensor) -> Tensor:
        return t if every else t[present]

    scores = []
    for sphere, g in zip(spheres, grouped.split(dims, dim=2)):
        if not sphere.has_encoder:
            h = g
        else:
            w0, b0 = sphere.folded_input_layer()
            h = torch.baddbmm(-rows(b0).unsqueeze(1), g, rows(w0))
        for w in sphere.weights[1:]:
            h = torch.bmm(nn.functional.leaky_relu(h), rows(w))
        d2 = (h - rows(sphere.center).unsqueeze(1)).pow(2).sum(dim=2)
        scores.append(d2 / rows(sphere.radius2).unsqueeze(1).clamp_min(1e-12))
    sorted_scores = torch.stack(scores, dim=2)[group, pos]
    out = torch.empty_like(sorted_scores)
    out[order] = sorted_scores
    return out


def previous_raw(det: UniformDetector, zs: list[Tensor], logits: Tensor) -> Tensor:
    """``_layer_scores`` with the previous layout (score ``"ratio"``)."""
    K = det.num_classes
    ranked = as_ranked(logits, K, det._rivals_in_effect(K))
    zs = [z.float() for z in zs]
    raw = previous_layer_scores(det.spheres, zs, ranked[:, 0])
    idx = det._contrast_layers()
    if ranked.shape[1] < 2 or not idx:
        return raw
    reps = ranked.shape[1] - 1
    flat = [zs[i].repeat_interleave(reps, dim=0) for i in idx]
    spheres = [det.spheres[i] for i in idx]
    ratio = previous_layer_scores(spheres, flat, ranked[:, 1:].reshape(-1))
    rivals_log = ratio.view(len(logits), reps, len(idx)).clamp_min(1e-12).log()
    contrast = raw[:, idx].clamp_min(1e-12).log() - rivals_log.min(dim=1).values
    return torch.cat([raw, contrast], dim=1)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--arch", choices=sorted(ARCHS), default="lenet")
    ap.add_argument("--cache-dir", default=str(CACHE), help="cache of the trained model")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    out = Path(args.out or HERE / "results" / f"scoring_layout_{args.arch}.md")

    train = mnist_dataset(args.data_root, train=True)
    test = mnist_dataset(args.data_root, train=False)
    factory = ARCHS[args.arch]
    model, _ = trained_model(
        factory.__name__, factory, train, epochs=3, seed=0, batch_size=128, cache_dir=args.cache_dir
    )
    for p in model.parameters():
        p.requires_grad_(False)
    det = UniformDetector(model, seed=0).fit(DataLoader(train, batch_size=args.batch_size))
    batches = list(test.tensors[0].split(args.batch_size))
    with torch.no_grad():
        extracted = [det.extract(b) for b in batches]
        current = torch.cat([det._layer_scores(f, lg) for f, lg in extracted])
        previous = torch.cat([previous_raw(det, f, lg) for f, lg in extracted])
        fns = {
            "forward pass (model only)": lambda: [model(b) for b in batches],
            "layer scores, previous layout": lambda: [
                previous_raw(det, f, lg) for f, lg in extracted
            ],
            "layer scores, current layout": lambda: [
                det._layer_scores(f, lg) for f, lg in extracted
            ],
        }
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(args.rounds):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["forward pass (model only)"]
    diff = (current - previous).abs().max().item()
    cmd = "python benchmarks/scoring_layout.py " + " ".join(argv or sys.argv[1:])
    lines = [
        f"# UniformDetector's layer scores: class layouts side by side ({factory.__name__}, CPU)",
        "",
        f"Produced by `{cmd.strip()}` with {torch.get_num_threads()} torch threads.",
        f"{len(test):,} MNIST test images in batches of {args.batch_size}, activations "
        f"extracted once; median of {args.rounds} interleaved rounds. Layers "
        f"{det.layers}, rivals {det.rivals}.",
        "",
        "| what | s | x forward pass |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {t:.3f} | {t / base:.2f} |" for name, t in med.items()]
    lines += [
        "",
        f"Largest difference between the two layouts' scores: {diff:.3g} "
        f"({'bitwise equal' if torch.equal(current, previous) else 'float rounding'}).",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
