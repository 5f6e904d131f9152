"""Train the reference CIFAR-10 classifiers of the CIFAR-10 evaluation on the JPEG images.

Three networks, each seeded and resumable (a checkpoint after every epoch; run the same
command again to go on where it stopped):

* ``resnet20``: :func:`uniad_plugin.models.resnet20_cifar` on the ten classes;
* ``vgg``: :func:`uniad_plugin.models.vgg_cifar` on the ten classes;
* ``resnet20_open``: ResNet-20 on the first six classes only (airplane, automobile, bird, cat,
  deer, dog), for OpenOOD's open-set protocol: the other four classes' test images are its
  near-OOD set.

Recipe (the usual one for CIFAR): SGD with Nesterov momentum 0.9, batch 128, weight decay
5e-4, a one-cycle schedule peaking at learning rate 0.1 (linear warm-up over the first 15% of
the steps, cosine decay to zero), random crops of the 4-pixel zero-padded image and horizontal
flips. Inputs are the decoded 8-bit images scaled to [0, 1], no normalisation (the networks
start with BatchNorm after the first convolution). Validation: the accuracy on the 10,000 test
images (for ``resnet20_open``, the 6,000 of its classes) at the end.

The images are read once from an ``ImageFolder`` layout (``ROOT/train/<class>/*.jpg``,
``ROOT/test/<class>/*.jpg``, the classes in sorted order) and cached as one uint8 tensor file
under ``--work``. The final weights go to ``--out`` as ``<name>.pt`` (a plain ``state_dict``)
with their SHA-256 and the test accuracy in ``<name>.json``; ``--report`` writes the table of
every trained network (``benchmarks/results/cifar10_reference.md``) from those files.

Usage (from the project root, after extracting ``../shared/data/CIFAR-10-jpeg`` as its README
says)::

    python benchmarks/train_cifar_reference.py --root /tmp/cifar10 --nets resnet20 vgg \\
        resnet20_open --epochs 30 --threads 2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from uniad_plugin.models import resnet20_cifar, vgg_cifar  # noqa: E402

#: the classes of the open-set model (CIFAR-10's first six in sorted order)
OPEN_CLASSES = 6

NETS = {
    "resnet20": (resnet20_cifar, 10),
    "vgg": (vgg_cifar, 10),
    "resnet20_open": (resnet20_cifar, OPEN_CLASSES),
}


def read_split(root: Path, split: str, work: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of ``root/split`` as a uint8 tensor ``(N, 3, H, W)`` and their labels,
    decoded once and cached under ``work`` (keyed by the folder and its files)."""
    classes = sorted(p.name for p in (root / split).iterdir() if p.is_dir())
    files = {name: sorted((root / split / name).iterdir()) for name in classes}
    key = hashlib.sha256(
        f"{(root / split).resolve()}|{[(n, len(f)) for n, f in files.items()]}".encode()
    ).hexdigest()[:12]
    cache = work / f"images_{split}_{key}_uint8.pt"
    if cache.is_file():
        data = torch.load(cache, weights_only=True)
        return data["x"], data["y"]
    from torchvision.io import ImageReadMode, decode_image

    xs, ys = [], []
    for label, name in enumerate(classes):
        for path in files[name]:
            xs.append(decode_image(str(path), mode=ImageReadMode.RGB))
            ys.append(label)
    x, y = torch.stack(xs), torch.tensor(ys)
    work.mkdir(parents=True, exist_ok=True)
    torch.save({"x": x, "y": y, "classes": classes}, cache)
    return x, y


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random 32x32 crops of the 4-pixel zero-padded batch and random horizontal flips, as one
    batched gather (no loop over samples)."""
    n, _, h, w = x.shape
    padded = nn.functional.pad(x, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (n,), generator=gen)
    dx = torch.randint(0, 9, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    cols = torch.arange(w)
    cols = (
        torch.where(flip[:, None], cols.flip(0), cols)[:, None, None, :] + dx[:, None, None, None]
    )
    rows = (torch.arange(h)[None, :] + dy[:, None])[:, None, :, None]
    b = torch.arange(n)[:, None, None, None]
    c = torch.arange(x.shape[1])[None, :, None, None]
    return padded[b, c, rows, cols]


def one_cycle(step: int, total: int, peak: float) -> float:
    warm = max(1, int(0.15 * total))
    if step < warm:
        return peak * (step + 1) / warm
    return 0.5 * peak * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), 1000):
        correct += int((model(x[i : i + 1000].float() / 255).argmax(1) == y[i : i + 1000]).sum())
    return correct / len(x)


def train(name: str, args: argparse.Namespace, data: dict) -> dict:
    factory, num_classes = NETS[name]
    x_train, y_train, x_test, y_test = data["train"] + data["test"]
    keep, keep_test = y_train < num_classes, y_test < num_classes
    x_train, y_train = x_train[keep], y_train[keep]
    x_test, y_test = x_test[keep_test], y_test[keep_test]
    torch.manual_seed(args.seed)
    model = factory(num_classes).to(memory_format=torch.channels_last)  # faster on CPUs
    opt = torch.optim.SGD(
        model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    steps_per_epoch = len(x_train) // args.batch_size
    total = steps_per_epoch * args.epochs
    gen = torch.Generator().manual_seed(args.seed)
    start = 0
    recipe = f"seed{args.seed}-e{args.epochs}-lr{args.lr:g}-b{args.batch_size}-n{len(x_train)}"
    ckpt = args.work / f"{name}-{recipe}.ckpt"
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        start = state["epoch"]
        print(f"{name}: resuming after epoch {start}", flush=True)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(start, args.epochs):
        model.train()
        t0 = time.time()
        order = torch.randperm(len(x_train), generator=gen)
        total_loss = 0.0
        for i in range(steps_per_epoch):
            idx = order[i * args.batch_size : (i + 1) * args.batch_size]
            xb = augment(x_train[idx], gen).float().div_(255)
            xb = xb.contiguous(memory_format=torch.channels_last)
            for group in opt.param_groups:
                group["lr"] = one_cycle(epoch * steps_per_epoch + i, total, args.lr)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), y_train[idx])
            loss.backward()
            opt.step()
            total_loss += float(loss.detach())
        state = {
            "model": model.state_dict(),
            "opt": opt.state_dict(),
            "gen": gen.get_state(),
            "epoch": epoch + 1,
        }
        torch.save(state, ckpt.with_suffix(".tmp"))
        ckpt.with_suffix(".tmp").replace(ckpt)
        print(
            f"{name}: epoch {epoch + 1}/{args.epochs} loss {total_loss / steps_per_epoch:.3f} "
            f"({time.time() - t0:.0f} s)",
            flush=True,
        )
    acc = accuracy(model, x_test, y_test)
    args.out.mkdir(parents=True, exist_ok=True)
    weights = args.out / f"{name}.pt"
    model = model.to(memory_format=torch.contiguous_format)
    torch.save({k: v.contiguous().clone() for k, v in model.state_dict().items()}, weights)
    record = {
        "net": name,
        "architecture": f"uniad_plugin.models:{factory.__name__}",
        "num_classes": num_classes,
        "epochs": args.epochs,
        "seed": args.seed,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "test_accuracy": round(acc, 4),
        "test_images": len(x_test),
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "command": " ".join(["python", "benchmarks/train_cifar_reference.py", *sys.argv[1:]]),
    }
    (args.out / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"{name}: test accuracy {acc:.4f} -> {weights}", flush=True)
    return record


def write_report(out: Path, path: Path) -> str:
    """The Markdown table of the networks trained into ``out`` (from their JSON records)."""
    rows = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    lines = [
        "| network | architecture | classes | epochs | test accuracy | test images | SHA-256 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['net']}` | `{r['architecture']}` | {r['num_classes']} | {r['epochs']} | "
            f"{r['test_accuracy']:.4f} | {r['test_images']:,} | `{r['sha256'][:16]}...` |"
        )
    commands = sorted({r["command"] for r in rows})
    text = "\n".join(lines) + "\n\nProduced by:\n\n" + "".join(f"    {c}\n" for c in commands)
    path.write_text(text)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, help="folder with train/ and test/ (ImageFolder)")
    parser.add_argument("--nets", nargs="+", choices=sorted(NETS), default=["resnet20"])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--work", type=Path, default=Path("/tmp/uniad-cifar-train"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "weights")
    parser.add_argument(
        "--limit", type=int, default=None, help="use only the first N training images (smoke)"
    )
    parser.add_argument(
        "--report",
        type=Path,
        nargs="?",
        const=ROOT / "benchmarks" / "results" / "cifar10_reference.md",
        default=None,
        help="only write the table of the records in --out to this file (default: "
        "benchmarks/results/cifar10_reference.md)",
    )
    args = parser.parse_args(argv)
    if args.report is not None:
        print(write_report(args.out, args.report))
        return
    if args.root is None:
        parser.error("--root is required to train")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    x_train, y_train = read_split(args.root, "train", args.work)
    x_test, y_test = read_split(args.root, "test", args.work)
    if args.limit:
        perm = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(0))
        x_train, y_train = x_train[perm[: args.limit]], y_train[perm[: args.limit]]
    data = {"train": (x_train, y_train), "test": (x_test, y_test)}
    for name in args.nets:
        train(name, args, data)


if __name__ == "__main__":
    main()
