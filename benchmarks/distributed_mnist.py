"""Wall time of the MNIST evaluation with one process and with several (torchrun), side by side,
and a projection of an ImageNet-scale evaluation on 8 GPUs from measured per-image costs.

Each configuration runs the default MNIST evaluation (``uniad --dataset mnist``: LeNet, all
default detectors and sanity rows, 10 adversarial sets on 500 sources, OOD and noise sets) in
a fresh cache that holds only the trained model, so the attacks, the fits and the scoring are
all timed; the model is trained once beforehand (or copied from ``--model-cache``). The
configurations: one process with as many threads as cores, one process with one thread, and
``torchrun --standalone --nproc_per_node N`` with one thread per process. The AUROC tables of
the runs are compared set by set.

The projection measures, on ``--device``, the forward and forward+backward time per image of a
ResNet-18 at 224 px with 1,000 classes (random weights) and combines them with the counts of an
ImageNet evaluation (see ``project``); its assumptions are printed with it.

    python benchmarks/distributed_mnist.py --data-root ../shared/data [--nproc 2]
    python benchmarks/distributed_mnist.py --fast --out /tmp/distributed.md   # a smoke run

``--fast`` needs no data: every run is ``uniad --dataset mnist --fast`` on a tiny stand-in
written in MNIST's own file format (``mnist_setup.write_fast_mnist``, scikit-learn's digits on
28x28) with two detectors (UniformDetector, MaxSoftmax), one attack (FGSM) and one noise set,
the one-thread single-process run is left out, and the per-image costs are measured on a batch of 2 in one round; its numbers check that the
script works, nothing more.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from mnist_setup import write_fast_mnist  # noqa: E402

#: what the runs of ``--fast`` evaluate (beside ``uniad``'s own ``--fast`` sizes)
FAST_SELECTION = ["--fast", "--detectors", "UniformDetector", "MaxSoftmax", "--attacks", "fgsm"]
FAST_SELECTION += ["--ood", "--noise", "gaussian", "--no-sanity"]


def _uniad(args: list[str], nproc: int, threads: int, log: Path) -> float:
    """Run the evaluation; return its wall time in seconds."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if nproc == 1:
        cmd = [sys.executable, "-m", "uniad_plugin.cli", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd += ["--nproc_per_node", str(nproc), "-m", "uniad_plugin.cli", *args]
    t = time.perf_counter()
    with log.open("w") as f:
        done = subprocess.run(cmd, env=env, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (rc {done.returncode}); see {log}")
    return wall


def _auroc(out: Path) -> dict[tuple[str, str], float]:
    rows = json.loads((out / "results.json").read_text())["rows"]
    return {(r["Detector"], r["Class"], r["Dataset"]): r["AUROC"] for r in rows}


def _max_diff(a: dict, b: dict) -> float:
    diffs = [abs(a[k] - b[k]) for k in a if a[k] == a[k] and b.get(k) == b.get(k)]
    return max(diffs) if diffs else float("nan")


@torch.no_grad()
def _forward_s(model: torch.nn.Module, x: torch.Tensor, rounds: int) -> float:
    model(x)
    t = time.perf_counter()
    for _ in range(rounds):
        model(x)
        if x.is_cuda:
            torch.cuda.synchronize()
    return (time.perf_counter() - t) / rounds / len(x)


def _forward_backward_s(model: torch.nn.Module, x: torch.Tensor, rounds: int) -> float:
    x = x.clone().requires_grad_(True)
    model(x).logsumexp(1).sum().backward()
    t = time.perf_counter()
    for _ in range(rounds):
        model(x).logsumexp(1).sum().backward()
        if x.is_cuda:
            torch.cuda.synchronize()
    return (time.perf_counter() - t) / rounds / len(x)


def per_image_costs(device: str, batch: int, rounds: int) -> dict[str, float]:
    """Seconds per image of a ResNet-18 (224 px, 1,000 classes, random weights)."""
    import torchvision

    model = torchvision.models.resnet18(num_classes=1000).to(device).eval()
    x = torch.rand(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(device)
    return {
        "forward_s": _forward_s(model, x, rounds),
        "forward_backward_s": _forward_backward_s(model, x, rounds),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--nproc", type=int, default=2, help="processes of the torchrun run")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--model-cache", default=os.environ.get("UNIAD_CACHE"))
    ap.add_argument("--device", default="cpu", help="device of the per-image costs")
    ap.add_argument("--batch", type=int, default=32, help="batch of the per-image costs")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None)
    ap.add_argument(
        "--fast",
        action="store_true",
        help="smoke run: tiny stand-in data (no --data-root), a small selection, batch 2",
    )
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="uniad-dist-"))
    if args.fast:
        args.data_root = str(write_fast_mnist(work / "data"))
        args.batch, args.rounds = 2, 1
        args.out = args.out or str(Path(tempfile.mkdtemp(prefix="uniad-dist-out-")) / "dist.md")
    args.out = args.out or str(HERE / "results" / "distributed_mnist.md")
    base = work / "base"
    if args.model_cache and (Path(args.model_cache) / "models").is_dir():
        shutil.copytree(Path(args.model_cache) / "models", base / "models")
    common = ["--dataset", "mnist", "--data-root", str(Path(args.data_root).resolve())]
    common += ["--quiet", "--no-plots", "--seed", "0"]
    if args.fast:
        common += FAST_SELECTION
    warm = [*common, "--attacks", "--ood", "--noise", "gaussian", "--no-sanity"]
    warm += ["--detectors", "MaxSoftmax", "--n-fit", "1000"]
    _uniad(
        [*warm, "--cache-dir", str(base), "--out", str(work / "warm")],
        1,
        args.cores,
        work / "warm.log",
    )

    configs = [
        (f"1 process, {args.cores} threads", 1, args.cores),
        ("1 process, 1 thread", 1, 1),
        (f"{args.nproc} processes (torchrun), 1 thread each", args.nproc, 1),
    ]
    if args.fast:  # the single process and torchrun, the comparison the script is for
        del configs[1]
    runs = []
    for name, nproc, threads in configs:
        tag = f"p{nproc}t{threads}"
        cache = work / f"cache-{tag}"
        shutil.copytree(base / "models", cache / "models")
        out = work / tag
        wall = _uniad(
            [*common, "--cache-dir", str(cache), "--out", str(out)],
            nproc,
            threads,
            work / f"{tag}.log",
        )
        meta = json.loads((out / "results.json").read_text())["meta"]
        runs.append(
            {
                "config": name,
                "processes": nproc,
                "threads": threads,
                "wall_s": wall,
                "timings": meta["timings"],
                "auroc": _auroc(out),
            }
        )
        print(f"{name}: {wall:.1f} s {meta['timings']}", flush=True)
    ref = runs[0]
    for r in runs:
        r["max_auroc_diff"] = _max_diff(ref["auroc"], r["auroc"])
        r["speedup"] = ref["wall_s"] / r["wall_s"]

    costs = per_image_costs(args.device, args.batch, args.rounds)
    projection = project(costs, 8)
    _write(args, runs, costs, projection)
    shutil.rmtree(work, ignore_errors=True)


#: counts of an ImageNet evaluation: the MNIST profile's choices with ImageNet's training set
#: and larger evaluation sets
IMAGENET = {
    "train_images": 1_281_167,
    # forward passes per training image in the fit: the shared logits/features and
    # UniformDetector's taps each read the training data once (MultiMahalanobis, a third pass,
    # is only wired for nn.Sequential models, not for a ResNet-18)
    "fit_passes": 2,
    "attack_sources": 1_000,
    # forward+backward steps per source over the MNIST profile's 10 attack sets: FGSM 2 x 1,
    # PGD L-inf 2 x 40, PGD L2 2 x 50, DeepFool 50 (at most), C&W 3 x 50, PGD L-inf on the
    # object 40, PGD L2 on the object 50
    "attack_steps_per_source": 2 + 80 + 100 + 50 + 150 + 40 + 50,
    # scored images: 10,000 ID test + 5,000 held-out ID + 10 AD, 4 noise and 6 OOD sets of 1,000
    "scored_images": 10_000 + 5_000 + (10 + 4 + 6) * 1_000,
    # forward passes per scored image: shared logits/features 1, UniformDetector 1,
    # ODIN a forward and a forward-backward (counted as 3)
    "score_passes": 5,
}


def project(costs: dict[str, float], processes: int) -> dict[str, float]:
    """Hours of an ImageNet evaluation on one and on ``processes`` devices, each as fast as the
    measured one: the forward and backward work is split over the processes; data loading,
    communication and the detectors' own fits on the extracted activations (UniformDetector's
    spheres, covariances, KNN index) are not counted."""
    c = IMAGENET
    fit = c["train_images"] * c["fit_passes"] * costs["forward_s"]
    attack = c["attack_sources"] * c["attack_steps_per_source"] * costs["forward_backward_s"]
    score = c["scored_images"] * c["score_passes"] * costs["forward_s"]
    one = fit + attack + score
    many = one / processes
    return {
        "fit extraction": fit / 3600,
        "attacks": attack / 3600,
        "scoring": score / 3600,
        "1 process": one / 3600,
        f"{processes} processes": many / 3600,
    }


def _write(args: argparse.Namespace, runs: list[dict], costs: dict, projection: dict) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = "python benchmarks/distributed_mnist.py " + (
        "--fast" if args.fast else "--data-root ../shared/data"
    )
    if args.nproc != 2:
        cmd += f" --nproc {args.nproc}"
    if args.device != "cpu":
        cmd += f" --device {args.device}"
    lines = [
        "# The MNIST evaluation on one and on several processes",
        "",
        f"Produced from the repository root by `{cmd}` "
        f"(with `UNIAD_CACHE` holding the trained LeNet), on {args.cores} CPU cores, "
        f"torch {torch.__version__}.",
        "",
        (
            "Each run is `uniad --dataset mnist " + " ".join(FAST_SELECTION) + "` on the "
            "stand-in data of `--fast` (scikit-learn's digits in MNIST's format) in a fresh "
            "cache with only the trained model: a smoke run, not a measurement."
            if args.fast
            else "Each run is the default `uniad --dataset mnist` evaluation in a fresh cache "
            "with only the trained model: the 10 adversarial sets are crafted, every detector "
            "is fitted on the 60,000 training images and every set is scored."
        ),
        "",
        "| configuration | wall (s) | anomaly sets (s) | fit (s) | scoring (s) | speed-up | "
        "max abs AUROC difference |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        t = r["timings"]
        lines.append(
            f"| {r['config']} | {r['wall_s']:.1f} | {t['anomaly_sets_s']:.1f} | {t['fit_s']:.1f} | "
            f"{t['evaluate_s']:.1f} | {r['speedup']:.2f}x | {r['max_auroc_diff']:.4f} |"
        )
    lines += [
        "",
        "Wall time includes start-up and data loading; the speed-up and the AUROC difference are "
        "against the first row (every detector, set and summary row compared).",
        "",
        "## Projection: ImageNet on 8 devices",
        "",
        f"Per-image costs measured on `{args.device}` (ResNet-18, 224 px, 1,000 classes, random "
        f"weights, batch {args.batch}): forward {costs['forward_s'] * 1e3:.2f} ms, "
        f"forward+backward {costs['forward_backward_s'] * 1e3:.2f} ms.",
        "",
        "| part | hours |",
        "|---|---:|",
    ]
    lines += [f"| {k} | {v:.1f} |" for k, v in projection.items()]
    lines += [
        "",
        "Counts (`IMAGENET` in the script): "
        + "; ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in IMAGENET.items())
        + ". Each device is assumed as fast as the measured one; data loading, communication and "
        "the detectors' own fits on the extracted activations are not counted. Run the script with `--device cuda` on a GPU "
        "machine for that GPU's figures.",
        "",
    ]
    out.write_text("\n".join(lines))
    payload = {"runs": [{k: v for k, v in r.items() if k != "auroc"} for r in runs]}
    payload |= {"per_image_costs": costs, "projection_hours": projection, "counts": IMAGENET}
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
