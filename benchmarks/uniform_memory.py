"""Peak memory and fit time of UniformDetector as the number of ID samples grows.

The fit streams N synthetic samples through a small MLP classifier (class-conditional Gaussian
inputs of 64 dimensions, 100 classes, hidden widths 256; the default layers tap 64 + 256 + 256
+ 100 + 100 = 776 features per sample, about 3 KB). Each N runs in a fresh subprocess that
reports its peak resident memory (``resource.getrusage().ru_maxrss``), the time of the
extraction pass (:meth:`~uniad_plugin.detectors.uniform.UniformDetector.collect_fit_inputs`,
including making the synthetic batches) and the time of the spheres
(:meth:`~uniad_plugin.detectors.uniform.UniformDetector.fit_collected`). The loader makes
every batch from its index and the seed, so no run holds the data set itself.

Rows ``bounded``: ``max_fit_rows`` (``--max-fit-rows``) below every N, so the spheres are
fitted on the same number of samples whatever N: peak memory should stay flat and the pass
time grow linearly. Rows ``unbounded``: ``max_fit_rows=None`` (every sample kept, the fit
before the bound), for comparison at the smaller N.

    python benchmarks/uniform_memory.py [--sizes 50000 100000 200000 500000 1000000]
    python benchmarks/uniform_memory.py --fast --out /tmp/memory.md   # a smoke run, seconds

``--fast``: N = 2,000 and 4,000 bounded at 1,000 samples, 2,000 unbounded, 10 classes, one
repeat, written to a temporary folder unless ``--out`` is given; its numbers check that the
script works, nothing more.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DIM, HIDDEN = 64, 256


class SyntheticLoader:
    """``n`` samples in batches; batch ``i`` is made from ``seed`` and ``i`` alone."""

    def __init__(self, n: int, classes: int, batch_size: int, seed: int = 0) -> None:
        import torch

        self.n, self.classes, self.batch_size, self.seed = n, classes, batch_size, seed
        g = torch.Generator().manual_seed(seed)
        self.means = 2.0 * torch.randn(classes, DIM, generator=g)

    def __iter__(self):
        import torch

        for i, start in enumerate(range(0, self.n, self.batch_size)):
            b = min(self.batch_size, self.n - start)
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + i + 1)
            y = torch.randint(0, self.classes, (b,), generator=g)
            yield self.means[y] + torch.randn(b, DIM, generator=g), y


def model_for(classes: int, seed: int = 0):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(DIM, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, classes),
    )
    return model.eval().requires_grad_(False)


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker(args: argparse.Namespace) -> dict:
    """One fit in this process; returns its measurements."""
    import torch

    from uniad_plugin.detectors.uniform import UniformDetector
    from uniad_plugin.nn.sampling import stratified_holdout

    torch.set_num_threads(args.threads)
    model = model_for(args.classes)
    loader = SyntheticLoader(args.worker, args.classes, args.batch_size)
    bound = None if args.bound == "none" else int(args.bound)
    det = UniformDetector(model, max_fit_rows=bound, seed=0)
    x0, _ = next(iter(loader))
    det.extract(x0)  # layers chosen, kernels warmed up
    baseline = peak_mb()
    t0 = time.perf_counter()
    collected = det.collect_fit_inputs(loader)
    t1 = time.perf_counter()
    after_pass = peak_mb()
    kept = len(collected["y"])
    # the rows the fit holds out to standardise the scores (their number depends on the
    # kept samples per class only, not on the random split)
    held_out = int(
        stratified_holdout(
            collected["y"], collected["num_classes"], det.holdout, torch.Generator()
        ).sum()
    )
    det.fit_collected(collected)
    t2 = time.perf_counter()
    return {
        "n": args.worker,
        "max_fit_rows": bound,
        "kept": kept,
        "held_out": held_out,
        "features_per_sample": sum(s.in_dim for s in det.spheres_),
        "layers": det.layers_,
        "pass_s": t1 - t0,
        "spheres_s": t2 - t1,
        "baseline_mb": baseline,
        "peak_pass_mb": after_pass,
        "peak_mb": peak_mb(),
    }


def run_one(n: int, bound: str, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        str(n),
        "--bound",
        bound,
        "--classes",
        str(args.classes),
        "--batch-size",
        str(args.batch_size),
        "--threads",
        str(args.threads),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least squares ``y = a + b x`` and its R^2."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    a = my - b * mx
    ss_res = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys))
    ss_tot = sum((y - my) ** 2 for y in ys)
    return a, b, 1 - ss_res / ss_tot if ss_tot else 1.0


def report(rows: list[dict], meta: dict) -> str:
    bounded = [r for r in rows if r["max_fit_rows"] is not None]
    peaks = [r["peak_mb"] for r in bounded]
    spread = max(peaks) / min(peaks) - 1
    in_pass = [r["peak_pass_mb"] - r["baseline_mb"] for r in bounded]
    a, b, r2 = linear_fit([r["n"] for r in bounded], [r["pass_s"] for r in bounded])
    lines = [
        "# UniformDetector: peak memory and fit time against the number of ID samples",
        "",
        f"Produced by `{meta['command']}` ({meta['wall_s']:.0f} s; {meta['platform']}, "
        f"torch {meta['torch']}, {meta['threads']} torch thread(s), CPU). Each row is the "
        f"median of {meta['repeats']} fits, each in a fresh process (rounds interleaved): N "
        "synthetic samples of "
        f"{meta['classes']} classes streamed through an MLP in batches of "
        f"{meta['batch_size']}, {bounded[0]['features_per_sample']} features per sample "
        f"over the layers {bounded[0]['layers']}, spheres fitted in closed form. "
        "Peak memory is the process's peak resident set (`ru_maxrss`), the baseline that "
        "peak before the fit (Python, torch, the model); the last column is the peak above "
        "the baseline during the extraction pass alone.",
        "",
        "| max_fit_rows | N | samples kept | held out | pass s | s per 100k | spheres s "
        "| peak MB | baseline MB | peak above baseline MB | in the pass MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        bound = "None" if r["max_fit_rows"] is None else f"{r['max_fit_rows']:,}"
        lines.append(
            f"| {bound} | {r['n']:,} | {r['kept']:,} | {r['held_out']:,} | {r['pass_s']:.1f} "
            f"| {r['pass_s'] / r['n'] * 1e5:.2f} | {r['spheres_s']:.1f} | {r['peak_mb']:.0f} "
            f"| {r['baseline_mb']:.0f} | {r['peak_mb'] - r['baseline_mb']:.0f} "
            f"| {r['peak_pass_mb'] - r['baseline_mb']:.0f} |"
        )
    lines += [
        "",
        f"With `max_fit_rows={bounded[0]['max_fit_rows']:,}` the peak memory of the "
        f"{len(bounded)} bounded fits varies by {spread:.1%} from the smallest to the largest "
        f"(goal: within 10%) from N = {bounded[0]['n']:,} to {bounded[-1]['n']:,}; the "
        f"extraction pass takes {a:.2f} s + {b * 1e5:.2f} s per 100k samples (least squares, "
        f"R^2 = {r2:.4f}); the spheres are fitted on the same sample size at every N. "
        f"The pass alone peaks {min(in_pass):.0f} to {max(in_pass):.0f} MB above the baseline "
        f"(the sample of {bounded[0]['max_fit_rows']:,} samples takes "
        f"{bounded[0]['max_fit_rows'] * bounded[0]['features_per_sample'] * 4 / 2**20:.0f} "
        "MB). "
        "Without the bound (`None`), every sample's activations are kept and the spheres "
        "are fitted on all of them: memory and sphere time grow with N.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--sizes", type=int, nargs="+", default=[50_000, 100_000, 200_000, 500_000, 1_000_000]
    )
    ap.add_argument("--unbounded-sizes", type=int, nargs="*", default=[50_000, 100_000, 200_000])
    ap.add_argument("--max-fit-rows", type=int, default=20_000)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="runs per row (medians reported)")
    ap.add_argument("--out", default=None)
    ap.add_argument(
        "--fast", action="store_true", help="smoke run: small sizes, one repeat, 10 classes"
    )
    ap.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--bound", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.fast and args.worker is None:
        args.sizes, args.unbounded_sizes, args.max_fit_rows = [2000, 4000], [2000], 1000
        args.classes, args.batch_size, args.repeats = 10, 500, 1
        args.out = args.out or str(Path(tempfile.mkdtemp(prefix="uniad-memory-")) / "memory.md")
    args.out = args.out or str(HERE / "results" / "uniform_memory.md")
    if args.worker is not None:
        print(json.dumps(worker(args)))
        return

    import torch

    start = time.perf_counter()
    configs = [(n, str(args.max_fit_rows)) for n in args.sizes]
    configs += [(n, "none") for n in args.unbounded_sizes]
    runs: dict[tuple[int, str], list[dict]] = {c: [] for c in configs}
    for _ in range(args.repeats):  # interleaved rounds: a noisy machine slows all alike
        for c in configs:
            runs[c].append(run_one(*c, args))
            print(runs[c][-1], file=sys.stderr)
    rows = []
    for c in configs:
        row = dict(runs[c][0])
        for key in ("pass_s", "spheres_s", "baseline_mb", "peak_pass_mb", "peak_mb"):
            row[key] = statistics.median(r[key] for r in runs[c])
            row[key + "_all"] = [r[key] for r in runs[c]]
        rows.append(row)
    meta = {
        "command": "python benchmarks/uniform_memory.py "
        + shlex.join(sys.argv[1:] if argv is None else argv),
        "wall_s": time.perf_counter() - start,
        "platform": f"Python {platform.python_version()}",
        "torch": torch.__version__,
        "threads": args.threads,
        "classes": args.classes,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
    }
    meta["command"] = meta["command"].strip()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report(rows, meta))
    out.with_suffix(".json").write_text(json.dumps({**meta, "rows": rows}, indent=1))
    print(out.read_text())


if __name__ == "__main__":
    main()
