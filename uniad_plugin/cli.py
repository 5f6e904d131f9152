"""The ``uniad`` command: fit detectors on ID data, evaluate them against OOD, AD and NS inputs.

A thin layer of :mod:`argparse` over the benchmark's engine: :func:`config_from_args` maps the
arguments onto one :class:`~uniad_plugin.benchmark.config.RunConfig` (scikit-learn's digits,
offline, by default; ``--dataset mnist``) and :func:`~uniad_plugin.benchmark.run.run` runs it.
Bad arguments exit with status 2 and a one-line message on stderr: the parser's own errors, the
command's usage errors and the library's :class:`~uniad_plugin.benchmark.ConfigError`.

Examples::

    uniad                                   # digits, default detectors, all anomaly sets
    uniad --list-detectors
    uniad --detectors UniformDetector Mahalanobis --attacks pgd_linf@0.1,0.2 --noise gaussian
    uniad --dataset mnist --data-root ../shared/data --out results/mnist
    uniad --model my_cnn.pt --arch my_package.models:build_cnn
    uniad --dataset folder --train-dir imgs/train --test-dir imgs/test --arch my.py:build --train
    uniad --dataset cifar10 --data-root ../shared/data --arch torchvision:resnet18 --train
    uniad --dataset cifar100 --data-root data --ood openood_near openood_far
    uniad --dataset imagenet200 --data-root data --model r18.pt --arch torchvision:resnet18
    uniad --dataset folder --train-dir imgs/train --test-dir imgs/test --image-size 32
    torchrun --standalone --nproc_per_node 2 -m uniad_plugin.cli --out results/two
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from uniad_plugin.benchmark import RunConfig

EPILOG = """\
attacks: fgsm, pgd_linf, pgd_linf_obj (L-inf budgets) and pgd_l2, pgd_l2_obj, deepfool, cw_l2
  (L2 budgets); the *_obj attacks change only the object's own (non-background) pixels. Give
  budgets as NAME@EPS1,EPS2 (e.g. pgd_linf@0.05,0.1) or set the defaults with --eps-linf /
  --eps-l2. Adversarials are rounded onto the data's value grid and kept only if still
  successful (--continuous keeps them, and every generated set, off the grid).
noise sets: gaussian, uniform, salt_pepper, noisy_id.
OOD sets: letters, photos (offline); mnist (padded, for 32x32 models), fashion_mnist, kmnist,
  emnist_letters, cifar10, svhn, textures (from --data-root, or with --download; the
  validation split reads their training images, and textures, which has none, is refused
  there); for --dataset cifar10, cifar100,
  imagenet200 and imagenet, OpenOOD v1.5's sets through pytorch-ood: openood (all),
  openood_near, openood_far, or openood:NAME (e.g. openood:tinyimagenet). They are read from
  OpenOOD's image lists (DIR/benchmark_imglist/ or pytorch-ood's cache) and image folders
  (DIR/<set>/...); the tables add a 'near-OOD mean' and a 'far-OOD mean' line. By default the
  CIFAR and ImageNet runs add them when their files are there (a note says which are missing);
  named with --ood, missing files stop the run. An empty list (e.g. '--attacks') means none.
  --ood DIR (a path: with a '/', or starting with '.' or '~'; or folder:DIR) makes a folder of
  your images an OOD set, named after the folder: image files in it or in its subfolders
  (ImageFolder layout), read as the ID images are (RGB or gray, resized and center-cropped to
  the ID size, 8-bit, on the ID data's value grid). --ood replaces the default OOD sets: add
  their names to keep them (e.g. --ood letters photos ./my_ood). --near-ood NAME... names
  the OOD sets that are near-OOD (e.g. the held-out classes of an open-set split: --ood letters
  photos ./cifar4_near --near-ood cifar4_near); the other OOD sets are far-OOD, and the tables
  and the leaderboard report the two apart.

output: --out DIR gets results.json, results.csv, table.txt, table.md (every metric),
  notes.md, leaderboard.md (the detectors ranked by their overall AUROC, near- and far-OOD
  apart, the model-free baselines last; printed after the table, by --metric, unless
  --quiet) and plots/.
  python -m uniad_plugin.benchmark.leaderboard DIR/results.json [--near-ood NAME...]
  [--metric M] renders the leaderboard of a finished run again, without rerunning it.

your own model: --arch MODULE:FUNCTION (or path/to/file.py:FUNCTION) names a function,
  that returns the nn.Module, called with num_classes=<the data set's classes> if it takes a
  num_classes parameter, else without arguments; modules are found in the current
  directory and beside the file, as python -m and python file.py find them. --arch
  torchvision:NAME builds torchvision.models.NAME(weights=None, num_classes=<the data set's
  classes>). With --arch give one of: --model PATH, its weights; --pretrained, if the function
  returns a trained model; or --train, to train it on the ID training data (a user's
  architecture is never trained unless asked). --model PATH holds a state_dict
  (torch.save(model.state_dict(), PATH)) or a checkpoint dict with one under state_dict,
  model_state_dict, model or net (other entries, e.g. epoch, best_prec1, are ignored); keys
  saved through DataParallel (module.) and the inner network's weights of a Normalized model
  are placed onto the model's keys. It is read with torch.load(weights_only=True), which runs
  no code from the file. Without --arch, the data set's reference model
  (uniad_plugin.models:digits_cnn, :lenet, :resnet_cifar or :imagenet_resnet18) is trained
  and cached, or --model loads weights into it. The model must map images in [0, 1] of the
  data set's shape (1x8x8 digits, 1x28x28 MNIST, 3x32x32 CIFAR-10/100, 3x224x224 ImageNet,
  3xSxS folder) to logits of its classes; put a model trained on normalised inputs behind
  uniad_plugin.models.Normalized(model, mean, std). The accuracy on the ID test images is
  printed above the tables, with a warning when it is below 1.5 times chance.

ImageNet: --dataset imagenet200 reads OpenOOD's ImageNet-200 image lists (200 classes) with
  images in DIR/imagenet_1k/ (train/<wnid>/..., val/ILSVRC2012_val_*.JPEG); --dataset
  imagenet reads DIR/imagenet/train and DIR/imagenet/val (one folder per class). Images are
  resized to 256 and center-cropped to 224 (--image-size S: S/0.875, then S). Bring your own
  trained classifier (--model, --arch): training one here is only for small copies.

your own images (--dataset folder): --train-dir and --test-dir are ImageFolder trees
  (DIR/<class>/<image>); images are read as RGB, resized and center-cropped to --image-size
  (default 32) and put on the 8-bit grid; the test folder is split into ID test images (1/2),
  attack sources (1/4) and held-out images (1/4).

cache: trained reference models and adversarial sets are cached in --cache-dir (default
  $UNIAD_CACHE or ~/.cache/uniad-plugin); a second run reuses them.
"""


class UsageError(Exception):
    """Bad arguments of the ``uniad`` command: exit status 2, one line on stderr."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        raise UsageError(f"{message} (see 'uniad --help')")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``uniad`` command."""
    p = _Parser(
        prog="uniad",
        description=textwrap.fill(
            "Fit detectors on in-distribution training data and report how each separates the "
            "ID test set from OOD, adversarial (AD) and noise (NS) inputs: per set, per class "
            "(mean and worst set) and overall (AUROC, AUPR-IN, AUPR-OUT, FPR95TPR, and the "
            "detection rate at 5% FPR with the threshold chosen on held-out ID data), beside "
            "model-free sanity rows (PixelGrid, PixelCount, PixelKNN). Without data arguments, "
            "runs the embedded offline benchmark on scikit-learn's digits.",
            width=92,
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="store_true", help="print the version and exit")
    p.add_argument("--list-detectors", action="store_true", help="list the detector names and exit")
    _data_arguments(p)
    _selection_arguments(p)
    _size_arguments(p)
    _run_arguments(p)
    return p


def _data_arguments(p: argparse.ArgumentParser) -> None:
    """The data and model arguments."""
    data = p.add_argument_group("data and model")
    data.add_argument(
        "--dataset",
        choices=("digits", "mnist", "cifar10", "cifar100", "imagenet200", "imagenet", "folder"),
        default="digits",
        help="ID data: scikit-learn's digits (offline, default), MNIST, CIFAR-10, CIFAR-100, "
        "OpenOOD's ImageNet-200 or ImageNet-1K (need --data-root) or your ImageFolder trees "
        "(need --train-dir and --test-dir)",
    )
    data.add_argument("--data-root", metavar="DIR", help="folder of torchvision data sets")
    data.add_argument("--train-dir", metavar="DIR", help="ImageFolder tree of training images")
    data.add_argument("--test-dir", metavar="DIR", help="ImageFolder tree of test images")
    data.add_argument(
        "--image-size",
        type=_positive_int,
        metavar="S",
        help="images resized and cropped to SxS (--dataset folder: default 32; imagenet200, "
        "imagenet: default 224)",
    )
    data.add_argument(
        "--download",
        action="store_true",
        help="let torchvision and pytorch-ood download missing data sets (OpenOOD: needs gdown)",
    )
    data.add_argument(
        "--model",
        metavar="PATH",
        help="weights of your own classifier: a state_dict or a checkpoint dict (see below)",
    )
    data.add_argument(
        "--arch",
        metavar="MODULE:FUNCTION",
        help="function that builds the model architecture, or torchvision:NAME (default: the "
        "reference model, trained here); needs --model, --pretrained or --train",
    )
    data.add_argument(
        "--pretrained",
        action="store_true",
        help="the --arch function returns a trained model (loads its own weights): use it as it is",
    )
    data.add_argument(
        "--train",
        action="store_true",
        help="train the --arch architecture on the ID training data (cached)",
    )
    data.add_argument(
        "--epochs",
        type=_positive_int,
        metavar="N",
        help="training epochs of the reference model (or of --arch with --train)",
    )


def _selection_arguments(p: argparse.ArgumentParser) -> None:
    """What to evaluate: detectors, attacks, sets, split, grid."""
    sel = p.add_argument_group("what to evaluate")
    sel.add_argument(
        "--detectors", nargs="*", metavar="NAME", help="detector names (see --list-detectors)"
    )
    sel.add_argument("--attacks", nargs="*", metavar="SPEC", help="attacks, NAME or NAME@EPS1,EPS2")
    sel.add_argument(
        "--eps-linf",
        nargs="+",
        type=_positive_float,
        metavar="EPS",
        help="default L-inf budgets (fgsm, pgd_linf)",
    )
    sel.add_argument(
        "--eps-l2",
        nargs="+",
        type=_positive_float,
        metavar="EPS",
        help="default L2 budgets (pgd_l2, deepfool, cw_l2)",
    )
    sel.add_argument("--noise", nargs="*", metavar="NAME", help="noise sets")
    sel.add_argument(
        "--ood",
        nargs="*",
        metavar="NAME|DIR",
        help="OOD sets: names, or folders of your own images (each a set named after its folder)",
    )
    sel.add_argument(
        "--near-ood",
        nargs="+",
        metavar="NAME",
        help="the OOD sets of the run that are near-OOD (e.g. the held-out classes of an "
        "open-set split); the other OOD sets are far-OOD, reported apart in the tables and the "
        "leaderboard",
    )
    sel.add_argument(
        "--split",
        choices=("report", "validation"),
        default="report",
        help="report (default) or validation: anomaly sets that share nothing with the reported "
        "ones (other seeds, fonts, photos, budgets, MNIST test images), for tuning",
    )
    sel.add_argument(
        "--continuous",
        action="store_true",
        help="generate anomaly sets off the data's value grid (labelled '(continuous)'); "
        "a pixel counter separates them",
    )
    sel.add_argument(
        "--no-sanity",
        action="store_true",
        help="leave out the model-free baselines PixelGrid, PixelCount, PixelKNN",
    )


def _size_arguments(p: argparse.ArgumentParser) -> None:
    """Sizes of the sets and of the fit."""
    size = p.add_argument_group("sizes")
    size.add_argument(
        "--n-test",
        type=_positive_int,
        metavar="N",
        help="ID test images (the data sets read from --data-root)",
    )
    size.add_argument(
        "--n-attack", type=_positive_int, metavar="N", help="attacked sources per attack and budget"
    )
    size.add_argument("--n-noise", type=_positive_int, metavar="N", help="images per noise set")
    size.add_argument("--n-ood", type=_positive_int, metavar="N", help="images per OOD set")
    size.add_argument(
        "--n-fit",
        type=_positive_int,
        metavar="N",
        help="training samples the detectors are fitted on (default: all)",
    )
    size.add_argument("--fast", action="store_true", help="small sizes (for tests and a look)")


def _run_arguments(p: argparse.ArgumentParser) -> None:
    """Device, seed, output, cache, plots, metric."""
    run = p.add_argument_group("run")
    run.add_argument("--device", default="cpu", help="cpu (default) or cuda[:i]")
    run.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    run.add_argument(
        "--out",
        metavar="DIR",
        default="uniad-results",
        help="output folder for results and plots (default: ./uniad-results)",
    )
    run.add_argument("--cache-dir", metavar="DIR", help="cache of models and adversarials")
    run.add_argument("--no-plots", action="store_true", help="do not draw PNG plots")
    run.add_argument(
        "--metric",
        default="AUROC",
        choices=("AUROC", "AUPR-IN", "AUPR-OUT", "FPR95TPR", "DR@5%FPR"),
        help="metric of the printed table (all are saved)",
    )
    run.add_argument(
        "--quiet", action="store_true", help="no progress bars and no printed leaderboard"
    )
    par = p.add_argument_group(
        "several processes (under torchrun: torchrun --nproc_per_node N -m uniad_plugin.cli ...)"
    )
    par.add_argument(
        "--dist-backend",
        choices=("gloo", "nccl"),
        default=None,
        help="backend of torch.distributed (default: nccl with --device cuda, else gloo)",
    )
    par.add_argument(
        "--dist-timeout",
        type=_positive_float,
        default=1800.0,
        metavar="SECONDS",
        help="timeout of every collective: a process that fails ends the others by then; a "
        "download or the reference model's training by one process must end within it "
        "(default 1800)",
    )


def _list_detectors() -> str:
    from uniad_plugin.benchmark import DEFAULT_DETECTORS, available_detectors

    names = available_detectors()
    width = max(len(n) for n in names)
    lines = ["detectors (* = run by default; names are case-insensitive):"]
    for name, desc in names.items():
        mark = "*" if name in DEFAULT_DETECTORS else " "
        lines.append(f" {mark} {name.ljust(width)}  {desc}")
    return "\n".join(lines)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The :class:`~uniad_plugin.benchmark.config.RunConfig` of parsed ``uniad`` arguments.

    :raises UsageError: on arguments that do not go together (the command exits with status 2)
    """
    from uniad_plugin.benchmark import RunConfig

    _check_data_args(args)
    _check_model_args(args)
    eps = {}
    if args.eps_linf:
        eps["linf"] = tuple(args.eps_linf)
    if args.eps_l2:
        eps["l2"] = tuple(args.eps_l2)
    return RunConfig(
        dataset=args.dataset,
        fast=args.fast,
        detectors=args.detectors,
        attacks=args.attacks,
        eps=eps or None,
        noise=args.noise,
        ood=args.ood,
        n_test=args.n_test,
        n_noise=args.n_noise,
        n_ood=args.n_ood,
        n_attack=args.n_attack,
        n_fit=args.n_fit,
        model_path=args.model,
        arch=args.arch,
        train=args.train,
        pretrained=args.pretrained,
        epochs=args.epochs,
        data_root=args.data_root,
        download=args.download,
        seed=args.seed,
        device=args.device,
        cache_dir=args.cache_dir,
        out_dir=args.out,
        plots=not args.no_plots,
        progress=not args.quiet,
        sanity=not args.no_sanity,
        continuous=args.continuous,
        split=args.split,
        train_dir=args.train_dir,
        test_dir=args.test_dir,
        image_size=args.image_size,
        near_ood=args.near_ood,
    )


#: data sets read from --data-root, and what --data-root must hold
_ROOT_LAYOUT = {
    "mnist": "MNIST/raw",
    "cifar10": "cifar-10-batches-py",
    "cifar100": "cifar-100-python",
    "imagenet200": "imagenet_1k and OpenOOD's benchmark_imglist/imagenet200",
    "imagenet": "imagenet/train and imagenet/val",
}


def _check_data_args(args: argparse.Namespace) -> None:
    """:raises UsageError: on data arguments that do not go with ``--dataset``"""
    name = args.dataset
    if name in _ROOT_LAYOUT and args.data_root is None:
        raise UsageError(
            f"--dataset {name} needs --data-root DIR (a folder with {_ROOT_LAYOUT[name]} inside)"
        )
    if name not in _ROOT_LAYOUT and args.n_test is not None:
        raise UsageError(
            "--n-test applies to --dataset mnist, cifar10, cifar100, imagenet200 and imagenet "
            "only (the others have a fixed split)"
        )
    if name == "folder" and (args.train_dir is None or args.test_dir is None):
        raise UsageError("--dataset folder needs --train-dir DIR and --test-dir DIR")
    if name != "folder" and (args.train_dir is not None or args.test_dir is not None):
        raise UsageError("--train-dir and --test-dir apply to --dataset folder only")


def _check_model_args(args: argparse.Namespace) -> None:
    """:raises UsageError: unless the model comes from one place (a user's --arch is never
    trained unless asked)"""
    given = [
        flag
        for flag, on in (
            ("--model", args.model is not None),
            ("--pretrained", args.pretrained),
            ("--train", args.train),
        )
        if on
    ]
    if len(given) > 1:
        raise UsageError(f"{' and '.join(given)} exclude each other: give one")
    if args.arch is None and (args.pretrained or args.train):
        raise UsageError(
            f"{given[0]} applies to --arch only (the reference model is trained anyway)"
        )
    if args.arch is not None and not given:
        raise UsageError(
            f"--arch {args.arch} is your own architecture: pass --model WEIGHTS (its trained "
            "weights), --pretrained (the function returns a trained model) or --train (train "
            "it on the ID training data)"
        )


def _run(args: argparse.Namespace) -> int:
    from uniad_plugin.benchmark import accuracy_lines, results_to_table, run

    if args.version:
        from uniad_plugin import __version__

        print(f"uniad-plugin {__version__}")
        return 0
    if args.list_detectors:
        print(_list_detectors())
        return 0
    config = config_from_args(args)
    from uniad_plugin import distributed

    config.resolve()  # bad arguments end every process with one line, before any collective
    try:
        joined = distributed.init_from_env(config.device, args.dist_backend, args.dist_timeout)
    except ValueError as err:
        raise UsageError(str(err)) from None
    result = run(config, echo=lambda text: print(_as_options(text), file=sys.stderr, flush=True))
    main_rank = distributed.is_main()
    if joined:  # on an error the process just ends: torchrun stops the others
        import torch.distributed

        torch.distributed.destroy_process_group()
    if not main_rank:  # rank 0 prints and writes
        return 0
    table = result.table if args.metric == "AUROC" else results_to_table(result.rows, args.metric)
    head = accuracy_lines(result.meta)  # above the table: a model at chance explains a table
    print("".join(f"{line}\n" for line in head) + ("\n" if head else "") + table, end="")
    if not args.quiet:  # the detectors ranked, after the table
        from uniad_plugin.benchmark.leaderboard import leaderboard

        print("\n" + leaderboard(result.rows, result.meta, metric=args.metric, fmt="text"), end="")
    for note in result.meta.get("notes", []):
        print(f"note: {_as_options(note)}")
    if result.files:
        n_plots = len(result.files.get("roc", [])) + len(result.files.get("histograms", []))
        n_plots += "heatmap" in result.files
        print(
            f"results: {result.files['json']}, {result.files['csv']}"
            + (f"; {n_plots} plots in {result.files['json'].parent / 'plots'}" if n_plots else "")
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``uniad`` console script.

    :param argv: arguments (default: ``sys.argv[1:]``)
    :return: exit status: 0 on success, 2 on bad arguments (one-line message on stderr)
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return _run(args)
    except SystemExit as e:  # --help
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    except UsageError as e:
        print(f"uniad: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        from uniad_plugin.benchmark import ConfigError

        if isinstance(e, ConfigError):
            print(f"uniad: error: {_as_options(' '.join(str(e).split()))}", file=sys.stderr)
            return 2
        _report_rank(e)
        raise


#: the library's arguments in its messages -> the command's options that set them
_OPTIONS = {
    "root=DIR": "--data-root DIR",
    "data_root=DIR": "--data-root DIR",
    "download=True": "--download",
    "fast=True": "--fast",
    "device='cpu'": "--device cpu",
    "device='cuda'": "--device cuda",
    "available_detectors()": "'uniad --list-detectors'",
}
#: arguments named before their value (``arch='x:f'``) -> the option (``--arch 'x:f'``)
_VALUED = {"arch=": "--arch", "near_ood=": "--near-ood", "ood=": "--ood"}


def _as_options(message: str) -> str:
    """A library message with the arguments it names spelt as this command's options (the
    library speaks of its functions' arguments; the command's user gives options)."""
    message = re.sub(
        r"(?<![\w.])(?:" + "|".join(map(re.escape, _OPTIONS)) + r")(?![\w(])",
        lambda m: _OPTIONS[m.group()],
        message,
    )
    # a value right after the argument ("arch='x:f'") gets a space after the option
    return re.sub(
        r"(?<![\w.])(" + "|".join(map(re.escape, _VALUED)) + r")(?=(['\"\w]?))",
        lambda m: _VALUED[m.group(1)] + (" " if m.group(2) else ""),
        message,
    )


def _report_rank(error: BaseException) -> None:
    """In a distributed run, say which process failed (torchrun then ends the others)."""
    from uniad_plugin import distributed

    if distributed.launched_distributed():
        rank, size = os.environ.get("RANK", "?"), os.environ.get("WORLD_SIZE", "?")
        print(
            f"uniad: error on rank {rank} of {size}: {type(error).__name__}: {error}",
            file=sys.stderr,
        )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
