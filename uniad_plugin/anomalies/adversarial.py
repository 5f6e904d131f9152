"""Adversarial sets (kind ``"AD"``) crafted with foolbox 3, filtered for success, cached on disk.

Protocol (the one of the LID and Mahalanobis papers): attack only the ID inputs the classifier
gets right, and keep only the *successful* adversarials, i.e. those that are

- misclassified: the model's prediction on the adversarial differs from the source label;
- within the budget: :math:`\\|x' - x\\|_p \\le \\varepsilon` in the attack's norm (foolbox
  projects the output of minimisation attacks such as DeepFool and C&W onto the
  :math:`\\varepsilon`-ball, and the projected input must still fool the model);
- real outputs: finite, inside ``bounds``, and not foolbox C&W's failure marker (C&W returns an
  all-zero input where it found no adversarial; projecting that onto the
  :math:`\\varepsilon`-ball can still fool the model by accident, so such samples are dropped);
- still misclassified on the value grid: foolbox attacks in continuous values; the output is
  then rounded onto the ID data's grid (``levels``, default 255: values ``k / 255``, like 8-bit
  images), the model is run again on the rounded inputs, and only those still misclassified
  (and within the budget, measured after rounding) are kept. Rounding goes to the nearest grid
  value, except where that would leave the budget: for :math:`L_\\infty` each value is held to
  the grid values within :math:`\\varepsilon` of the source, for :math:`L_2` a sample whose
  nearest rounding leaves the ball is rounded towards its source instead. ``info`` reports
  the success rate before rounding (``success_rate_continuous``) and after
  (``success_rate``). ``levels=None`` keeps continuous values (an explicit opt-in; the name
  then ends in ``" (continuous)"``): counting off-grid pixels detects such a set.

The norm of ``eps`` depends on the attack (see :data:`ATTACKS`): :math:`L_\\infty` for
``fgsm``, ``pgd_linf`` and ``pgd_linf_obj``, :math:`L_2` (over the whole image) for ``pgd_l2``,
``pgd_l2_obj``, ``deepfool``
(foolbox's ``L2DeepFoolAttack``; DeepFool minimises the perturbation, which is then held to the
:math:`L_2` budget like C&W's) and ``cw_l2``.

The attacks and their defaults (which differ from foolbox's) are in :mod:`.attacks`.

Object-confined attacks (``pgd_linf_obj``, ``pgd_l2_obj``, :mod:`.confined`): PGD that
perturbs only the source's non-background pixels (those not at ``bounds[0]``): the background
stays bit-identical to the source and no object pixel becomes background, so the number of
non-zero pixels of an MNIST adversarial equals its source's and a pixel count cannot see it.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from uniad_plugin._utils import atomic_save, eval_mode, hash_tensor, model_device
from uniad_plugin.anomalies.attacks import ATTACKS, AttackSpec, budget_label
from uniad_plugin.anomalies.base import (
    DEFAULT_LEVELS,
    AnomalySet,
    _check_bounds,
    _check_levels,
    _check_n,
    _size,
    collect,
    grid_name,
    round_adversarial,
)

__all__ = [
    "ATTACKS",
    "AttackSpec",
    "AdversarialOptions",
    "AdversarialSet",
    "SINGLE_PROCESS",
    "WorkSharing",
    "make_adversarial",
]

#: bump when the generation or the cache layout changes, so old cache files are not reused
#: (2: rounding onto the value grid, grid in the key, object-confined attacks; 3: each batch
#: of the attack seeded on its own, see :func:`batch_seed`)
_CACHE_FORMAT = 3


def batch_seed(seed: int, batch: int) -> int:
    """The seed of the attack's ``batch``-th batch: ``seed + 1,000,003 * batch``.

    Seeding each batch on its own makes a set independent of how the batches are shared out:
    a distributed run (each process attacks a block of batches) crafts the same set as a
    single process with the same seed.
    """
    return seed + 1_000_003 * batch


class WorkSharing(Protocol):
    """How the processes of a run share the work of an attack: the seam through which
    :func:`make_adversarial` runs on several processes without knowing how they talk.

    :data:`SINGLE_PROCESS` (the default) is one process doing all the work; the module
    :mod:`uniad_plugin.distributed` is the sharing of the processes of a ``torch.distributed``
    group (each function below is one of its own), and the benchmark passes it.
    """

    def shard_bounds(self, n: int) -> tuple[int, int]:
        """``(start, stop)`` of this process's contiguous share of ``n`` items (the shares
        are in process order and cover ``0..n`` exactly once)."""
        ...

    def gather_tree(self, value: Any) -> Any:
        """Every process's tensors of ``value`` (a dict of tensors) concatenated along dim 0,
        in process order."""
        ...

    def broadcast_object(self, obj: Any) -> Any:
        """The first process's ``obj`` on every process."""
        ...

    def all_true(self, flag: bool) -> bool:
        """Whether ``flag`` holds on every process."""
        ...

    def is_local_main(self) -> bool:
        """Whether this process writes the cache of its machine."""
        ...


class _SingleProcess:
    """:class:`WorkSharing` of one process, which does all the work alone."""

    @staticmethod
    def shard_bounds(n: int) -> tuple[int, int]:
        return 0, n

    @staticmethod
    def gather_tree(value: Any) -> Any:
        return value

    @staticmethod
    def broadcast_object(obj: Any) -> Any:
        return obj

    @staticmethod
    def all_true(flag: bool) -> bool:
        return bool(flag)

    @staticmethod
    def is_local_main() -> bool:
        return True

    def __repr__(self) -> str:
        return "SINGLE_PROCESS"


#: one process does all the work of an attack (the default :class:`WorkSharing`)
SINGLE_PROCESS: WorkSharing = _SingleProcess()


class AdversarialSet(AnomalySet):
    """Successful adversarial examples (kind ``"AD"``), all labelled ``-1``.

    :param x: adversarial images of shape :math:`(N, C, H, W)`
    :param name: short name, ``f"{attack}@{budget_label(eps)}"`` (``pgd_linf@8/255``, ``pgd_l2@0.5``)
    :param info: details (see :func:`make_adversarial`)
    :param source_labels: true label of the clean input each adversarial was made from
    :param adv_pred: the model's prediction on each adversarial
    :param clean: the clean source inputs, same shape as ``x`` (optional)
    """

    def __init__(
        self,
        x: Tensor,
        name: str,
        info: dict[str, Any],
        source_labels: Tensor,
        adv_pred: Tensor | None = None,
        clean: Tensor | None = None,
    ):
        super().__init__(x, "AD", name, info)
        for what, t in (("source_labels", source_labels), ("adv_pred", adv_pred)):
            if t is not None and tuple(t.shape) != (len(x),):
                raise ValueError(f"expected {what} of shape ({len(x)},), got {tuple(t.shape)}")
        if clean is not None and clean.shape != x.shape:
            raise ValueError(f"expected clean of shape {tuple(x.shape)}, got {tuple(clean.shape)}")
        #: true labels of the sources
        self.source_labels: Tensor = source_labels.detach().cpu().long()
        #: the model's predictions on the adversarials (all differ from ``source_labels``)
        self.adv_pred: Tensor | None = None if adv_pred is None else adv_pred.detach().cpu().long()
        #: the clean inputs the adversarials were made from
        self.clean: Tensor | None = None if clean is None else clean.detach().cpu()

    @property
    def success_rate(self) -> float:
        """Fraction of the attacked (correctly classified) inputs that gave a kept adversarial
        (after rounding onto the grid)."""
        return float(self.info.get("success_rate", 0.0))


@dataclass(frozen=True)
class AdversarialOptions:
    """The keyword options of :func:`make_adversarial`, as one object.

    :param bounds: value range of the model's inputs
    :param levels: value grid of the ID data: adversarials are rounded to values
        ``k / levels`` and re-checked (default 255, 8-bit images; 16 for scikit-learn's
        digits); ``None`` keeps them continuous (the name gets ``" (continuous)"``)
    :param batch_size: inputs attacked per foolbox call
    :param device: where the model runs during the attack
    :param seed: seeds torch's RNG during the attack
    :param cache_dir: directory of the disk cache (``None``: no caching)
    :param progress: show a tqdm progress bar
    :param max_samples: attack at most this many correctly classified inputs
    :param attack_params: overrides of the foolbox attack's keyword arguments (keys of
        ``ATTACKS[attack].defaults``, e.g. ``{"steps": 20}`` for ``cw_l2``)
    """

    bounds: tuple[float, float] = (0.0, 1.0)
    levels: int | None = DEFAULT_LEVELS
    batch_size: int = 128
    device: str | torch.device = "cpu"
    seed: int = 0
    cache_dir: str | os.PathLike[str] | None = None
    progress: bool = True
    max_samples: int | None = None
    attack_params: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "bounds", _check_bounds(self.bounds))
        object.__setattr__(self, "levels", _check_levels(self.levels))
        object.__setattr__(self, "device", torch.device(self.device))
        _check_n(self.batch_size, "batch_size")
        if self.max_samples is not None:
            _check_n(self.max_samples, "max_samples")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise TypeError(f"expected seed to be an int, got {type(self.seed).__name__}")


# ----------------------------------------------------------------------------- hashing / cache


def _cache_key(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    meta: dict[str, Any],
) -> str:
    """sha256 over the model (class, structure, weights and buffers), the data and ``meta``."""
    h = hashlib.sha256()
    h.update(json.dumps(meta, sort_keys=True).encode())
    h.update(f"{type(model).__module__}.{type(model).__qualname__}|{model!r}".encode())
    for key, value in sorted(model.state_dict().items()):
        h.update(key.encode())
        if isinstance(value, Tensor):
            h.update(str(tuple(value.shape)).encode())
            hash_tensor(h, value)
        else:  # pragma: no cover - exotic extra state
            h.update(repr(value).encode())
    h.update(str(tuple(x.shape)).encode())
    hash_tensor(h, x)
    hash_tensor(h, y)
    return h.hexdigest()


def _foolbox_version() -> str:
    try:
        return version("foolbox")
    except PackageNotFoundError:  # pragma: no cover
        return "unknown"


def _from_record(record: dict[str, Any]) -> AdversarialSet:
    info = record["info"]
    return AdversarialSet(
        record["x"],
        name=grid_name(f"{info['attack']}@{budget_label(info['eps'])}", info["grid_levels"]),
        info=info,
        source_labels=record["source_labels"],
        adv_pred=record["adv_pred"],
        clean=record["clean"],
    )


# ----------------------------------------------------------------------------- generation


@torch.no_grad()
def _predict(model: nn.Module, x: Tensor, batch_size: int, device: torch.device) -> Tensor:
    return torch.cat(
        [
            model(x[i : i + batch_size].to(device)).argmax(1).cpu()
            for i in range(0, len(x), batch_size)
        ]
    )


def _check_batch(
    adv: Tensor, raw: Tensor, xb: Tensor, yb: Tensor, pred: Tensor, eps: float, norm: str, opts
) -> Tensor:
    """Which adversarials of a batch are kept: misclassified, finite, in bounds, within ``eps``,
    not C&W's all-zero failure output."""
    lo, hi = opts.bounds
    flat = adv.flatten(1)
    # foolbox's C&W returns an all-zero input where it failed (a real input is never all zero
    # unless its source is)
    failed = (raw.flatten(1) == 0).all(1) & (xb.flatten(1) != 0).any(1)
    return (
        (pred != yb)
        & torch.isfinite(flat).all(1)
        & (flat >= lo - 1e-6).all(1)
        & (flat <= hi + 1e-6).all(1)
        & (_size(adv - xb, norm) <= eps + 1e-5 * max(1.0, eps))
        & ~failed
    )


def _run_attack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    spec: AttackSpec,
    params: dict[str, Any],
    eps: float,
    opts: AdversarialOptions,
    desc: str,
    sharing: WorkSharing = SINGLE_PROCESS,
) -> dict[str, Tensor]:
    """Attack the (correctly classified) inputs ``x`` with labels ``y`` batch by batch, round
    the adversarials onto the grid and re-check them.

    The model must already be in eval mode on ``opts.device``; batch ``b`` is seeded with
    :func:`batch_seed` (the caller forks the RNG). With several processes (``sharing``) each
    attacks a contiguous block of batches and the blocks are gathered, so every process returns
    the whole result.

    :return: ``x`` (adversarial, clipped to the eps-ball, rounded onto the grid),
        ``keep_continuous`` (successful before rounding), ``keep`` (successful before AND after
        rounding), ``pred`` (the model's prediction on each rounded adversarial)
    """
    from tqdm.auto import tqdm

    with warnings.catch_warnings():  # foolbox imports scipy.ndimage.filters (deprecated)
        warnings.simplefilter("ignore", DeprecationWarning)
        import foolbox

    device = opts.device
    fmodel = foolbox.PyTorchModel(model, bounds=opts.bounds, device=device)
    attack = spec.build(params)
    outs: dict[str, list[Tensor]] = {"x": [], "keep_continuous": [], "keep": [], "pred": []}
    n_batches = -(-len(x) // opts.batch_size)
    first, last = sharing.shard_bounds(n_batches)  # this process's block (all of them for one)
    mine = range(first * opts.batch_size, min(last * opts.batch_size, len(x)))
    bar = tqdm(total=len(mine), desc=desc, unit="img", disable=not opts.progress, leave=False)
    with bar:
        for b in range(first, last):
            xb = x[b * opts.batch_size : (b + 1) * opts.batch_size].to(device)
            yb = y[b * opts.batch_size : (b + 1) * opts.batch_size].to(device)
            torch.manual_seed(batch_seed(opts.seed, b))
            raw, clipped, _ = attack(fmodel, xb, yb, epsilons=eps)
            raw, clipped = raw.detach(), clipped.detach()
            with torch.no_grad():
                pred = model(clipped).argmax(1)
                keep_cont = _check_batch(clipped, raw, xb, yb, pred, eps, spec.norm, opts)
                adv = round_adversarial(
                    clipped, xb, eps=eps, norm=spec.norm, levels=opts.levels, bounds=opts.bounds
                )
                pred = model(adv).argmax(1)
                keep = keep_cont & _check_batch(adv, raw, xb, yb, pred, eps, spec.norm, opts)
            outs["x"].append(adv.cpu())
            outs["keep_continuous"].append(keep_cont.cpu())
            outs["keep"].append(keep.cpu())
            outs["pred"].append(pred.cpu())
            bar.update(len(xb))
    empty = {
        "x": x[:0].cpu(),
        "keep_continuous": torch.zeros(0, dtype=torch.bool),
        "keep": torch.zeros(0, dtype=torch.bool),
        "pred": torch.zeros(0, dtype=torch.long),
    }
    mine_out = {k: torch.cat(v) if v else empty[k] for k, v in outs.items()}
    return sharing.gather_tree(mine_out)  # every process's block, in batch order


def _validate_params(
    attack: str, spec: AttackSpec, attack_params: Any, levels: int | None
) -> dict[str, Any]:
    if attack_params is None:
        attack_params = {}
    if not isinstance(attack_params, dict):
        raise TypeError(f"expected attack_params to be a dict, got {type(attack_params).__name__}")
    unknown = sorted(set(attack_params) - set(spec.defaults))
    if unknown:
        raise ValueError(
            f"unknown attack_params {unknown} for attack {attack!r}; expected keys among "
            f"{sorted(spec.defaults)}"
        )
    params = {**spec.defaults, **attack_params}
    if "floor_step" in params and params["floor_step"] is None:  # one grid step
        params["floor_step"] = 1.0 / (levels or DEFAULT_LEVELS)
    try:
        json.dumps(params)
    except (TypeError, ValueError):
        raise TypeError(
            f"expected JSON-serialisable attack_params, got {attack_params!r}"
        ) from None
    return params


def _options(options: Any, kwargs: dict[str, Any]) -> AdversarialOptions:
    if options is not None and not isinstance(options, AdversarialOptions):
        raise TypeError(
            f"expected options to be an AdversarialOptions, got {type(options).__name__}"
        )
    names = set(AdversarialOptions.__dataclass_fields__)
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise TypeError(f"expected keyword arguments among {sorted(names)}, got unknown {unknown}")
    base = {} if options is None else {k: getattr(options, k) for k in names}
    return AdversarialOptions(**(base | kwargs))


def _check_eps(eps: Any) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"expected eps > 0 (a float), got {eps!r}")
    if not eps < float("inf"):
        raise ValueError(f"expected a finite eps, got {eps!r}")
    return float(eps)


def _attack_correct(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    spec: AttackSpec,
    params: dict[str, Any],
    eps: float,
    opts: AdversarialOptions,
    desc: str,
    sharing: WorkSharing = SINGLE_PROCESS,
) -> dict[str, Tensor]:
    """Attack the correctly classified inputs of ``x`` (the first ``max_samples``), seeded.

    The model is put in eval mode on ``opts.device`` and left as it was found.
    :return: the output of :func:`_run_attack` plus ``src``, ``src_y`` and ``n_correct``
    """
    device = opts.device
    home = model_device(model, default=device)
    try:
        with eval_mode(model):
            model.to(device)
            # one process's predictions, so that every process attacks the same sources
            pred_clean = sharing.broadcast_object(_predict(model, x, opts.batch_size, device))
            correct = torch.nonzero(pred_clean == y).flatten()
            idx = correct if opts.max_samples is None else correct[: opts.max_samples]
            src, src_y = x[idx], y[idx]
            fork_devices = [device] if device.type == "cuda" else []
            with torch.random.fork_rng(devices=fork_devices):
                if len(src):
                    out = _run_attack(
                        model,
                        src,
                        src_y,
                        spec=spec,
                        params=params,
                        eps=eps,
                        opts=opts,
                        desc=desc,
                        sharing=sharing,
                    )
                else:
                    empty = torch.zeros(0, dtype=torch.bool)
                    out = {"x": src.clone(), "keep_continuous": empty, "keep": empty}
                    out["pred"] = torch.zeros(0, dtype=torch.long)
    finally:
        if home != device:
            model.to(home)
    return out | {"src": src, "src_y": src_y, "n_correct": torch.tensor(len(correct))}


def _record(
    out: dict[str, Tensor], n_input: int, attack: str, eps: float, spec: AttackSpec, params, opts
) -> dict[str, Any]:
    """The cache record (tensors and ``info``) of the kept adversarials."""
    keep, src = out["keep"], out["src"]
    adv, clean = out["x"][keep].contiguous(), src[keep].contiguous()
    labels, adv_pred = out["src_y"][keep], out["pred"][keep]
    n_attacked, n_success = len(src), int(keep.sum())
    n_cont, n_correct = int(out["keep_continuous"].sum()), int(out["n_correct"])
    delta = (adv - clean).flatten(1)
    info = {
        "attack": attack,
        "eps": eps,
        "norm": spec.norm,
        "grid_levels": opts.levels,
        "n_input": n_input,
        "n_correct": n_correct,
        "clean_accuracy": n_correct / n_input,
        "n_attacked": n_attacked,
        "n_success_continuous": n_cont,
        "success_rate_continuous": n_cont / n_attacked if n_attacked else 0.0,
        "n_success": n_success,
        "success_rate": n_success / n_attacked if n_attacked else 0.0,
        "mean_linf": delta.abs().amax(1).mean().item() if n_success else None,
        "mean_l2": delta.norm(dim=1).mean().item() if n_success else None,
        "source_labels": labels.tolist(),
        "adv_pred": adv_pred.tolist(),
        "params": params,
        "seed": opts.seed,
        "bounds": list(opts.bounds),
    }
    return {
        "format": _CACHE_FORMAT,
        "x": adv,
        "clean": clean,
        "source_labels": labels,
        "adv_pred": adv_pred,
        "info": info,
    }


def make_adversarial(
    model: nn.Module,
    data: Dataset | DataLoader,
    attack: str,
    eps: float,
    *,
    options: AdversarialOptions | None = None,
    sharing: WorkSharing | None = None,
    **kwargs: Any,
) -> AdversarialSet:
    """Craft adversarial examples against ``model``, round them onto the data's value grid and
    keep the successful ones.

    Only the inputs of ``data`` the model classifies correctly are attacked (the first
    ``max_samples`` of them, in data order). foolbox attacks in continuous values; each output
    is rounded onto the grid ``k / levels`` (see the module docstring) and the model is run
    again: only adversarials successful before rounding (misclassified, within ``eps``,
    finite, in ``bounds``, not C&W's all-zero failure output) AND after it (misclassified,
    within ``eps``) are kept. The model is put in eval mode for the attack and left as it was
    found (per-module training flags, device, ``requires_grad``); foolbox differentiates with
    respect to the input only.

    The random start of PGD draws from torch's global generator: the attack runs inside
    :func:`torch.random.fork_rng`, each batch seeded from ``seed`` (:func:`batch_seed`), so
    results are reproducible, the caller's RNG state is untouched, and several processes
    that share the work (``sharing``: each attacks a block of batches) craft the same set as
    a single process.

    With ``cache_dir``, the result is stored in ``cache_dir/<sha256>.pt``, the hash covering
    the model's class, structure and ``state_dict``, the data (images and labels, in order),
    the attack, ``eps``, the attack parameters, ``seed``, ``bounds``, ``levels``,
    ``batch_size``, ``max_samples``, the device type, the cache format and foolbox's version;
    a second call with the same inputs loads the file instead of attacking
    (``torch.load(weights_only=True)``).

    :param model: the classifier (logits out), inputs in ``bounds``
    :param data: ID samples ``(x, y)``, a dataset or a loader (the "attack" split, disjoint
        from the scored ID test split). It is read once, in order, into memory
    :param attack: a name in :data:`ATTACKS`: ``"fgsm"``, ``"pgd_linf"``, ``"pgd_l2"``,
        ``"pgd_linf_obj"``, ``"pgd_l2_obj"``, ``"deepfool"``, ``"cw_l2"``
    :param eps: perturbation budget (``> 0``) in the attack's norm
        (``ATTACKS[attack].norm``): :math:`L_\\infty` for ``fgsm``/``pgd_linf``/
        ``pgd_linf_obj``, :math:`L_2` for ``pgd_l2``/``pgd_l2_obj``/``deepfool``/``cw_l2``
    :param options: the keyword options as one :class:`AdversarialOptions`
    :param sharing: how several processes share the work (see :class:`WorkSharing`): the
        sources are those the first process's predictions pick, each process attacks a
        block of batches, every process returns the whole set and one process per machine
        writes the cache; pass :mod:`uniad_plugin.distributed` in a ``torch.distributed``
        run. ``None`` (default): :data:`SINGLE_PROCESS`, this process does all the work. Not
        part of the cache key (the set does not depend on it)
    :param kwargs: any field of :class:`AdversarialOptions` (``bounds``, ``levels``,
        ``batch_size``, ``device``, ``seed``, ``cache_dir``, ``progress``, ``max_samples``,
        ``attack_params``), overriding ``options``
    :return: the successful adversarials (on the grid), named ``f"{attack}@{budget_label(eps)}"`` (``pgd_linf@8/255``, ``pgd_l2@0.5``) (plus
        ``" (continuous)"`` for ``levels=None``); ``info`` holds ``attack``, ``eps``,
        ``norm``, ``grid_levels``, ``n_attacked``, ``n_success_continuous``,
        ``success_rate_continuous`` (before rounding), ``n_success``, ``success_rate`` (after
        rounding), ``mean_linf``, ``mean_l2`` (over kept ones, after rounding, ``None`` if
        none), ``source_labels``, ``adv_pred`` (lists) and ``params``, ``seed``, ``bounds``,
        ``n_input``, ``n_correct``, ``clean_accuracy``
    :raises ValueError: on an unknown ``attack`` (the message lists :data:`ATTACKS`),
        ``eps <= 0``, bad ``bounds``/``levels``/``batch_size``/``max_samples``, unknown
        ``attack_params`` keys, or data outside ``bounds``
    :raises TypeError: if ``model`` is not an :class:`torch.nn.Module`, ``data`` not a
        dataset/loader of ``(x, y)``, or on an unknown keyword argument
    """
    if attack not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r}; expected one of {sorted(ATTACKS)}")
    eps = _check_eps(eps)
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected model to be a torch.nn.Module, got {type(model).__name__}")
    opts = _options(options, kwargs)
    sharing = SINGLE_PROCESS if sharing is None else sharing
    spec = ATTACKS[attack]
    params = _validate_params(attack, spec, opts.attack_params, opts.levels)
    lo, hi = opts.bounds

    x, y = collect(data, batch_size=opts.batch_size, what="data")
    if x.min() < lo or x.max() > hi:
        raise ValueError(
            f"expected data within bounds {(lo, hi)}, got values in "
            f"[{x.min().item():.4g}, {x.max().item():.4g}]"
        )

    path = None
    if opts.cache_dir is not None:
        meta = {"format": _CACHE_FORMAT, "foolbox": _foolbox_version(), "attack": attack}
        meta |= {"eps": eps, "params": params, "device": opts.device.type}
        meta |= {k: v for k, v in asdict(opts).items() if k not in ("device", "cache_dir")}
        meta |= {"progress": None, "bounds": [lo, hi]}
        path = Path(opts.cache_dir) / f"{_cache_key(model, x, y, meta)}.pt"
        # every process loads, or every process attacks its share (the cache may be local)
        if sharing.all_true(path.is_file()):
            return _from_record(torch.load(path, weights_only=True))

    desc = f"{attack}@{budget_label(eps)}"
    out = _attack_correct(model, x, y, spec, params, eps, opts, desc, sharing)
    record = _record(out, len(x), attack, eps, spec, params, opts)
    if path is not None and sharing.is_local_main():  # one writer per machine
        atomic_save(record, path)
    return _from_record(record)
