"""Adversarial sets (kind ``"AD"``) crafted with foolbox 3, filtered for success, cached on disk.

Protocol (the one of the LID and Mahalanobis papers): attack only the ID inputs the classifier
gets right, and keep only the *successful* adversarials, i.e. those that are

- misclassified: the model's prediction on the adversarial differs from the source label;
- within the budget: :math:`\\|x' - x\\|_p \\le \\varepsilon` in the attack's norm (foolbox
  projects the output of minimisation attacks such as DeepFool and C&W onto the
  :math:`\\varepsilon`-ball, and the projected input must still fool the model);
- real outputs: finite, inside ``bounds``, and not foolbox C&W's failure marker (C&W returns an
  all-zero input where it found no adversarial; projecting that onto the
  :math:`\\varepsilon`-ball can still fool the model by accident, so such samples are dropped).

The norm of ``eps`` depends on the attack (see :data:`ATTACKS`): :math:`L_\\infty` for
``fgsm`` and ``pgd_linf``, :math:`L_2` (over the whole image) for ``pgd_l2``, ``deepfool``
(foolbox's ``L2DeepFoolAttack``; DeepFool minimises the perturbation, which is then held to the
:math:`L_2` budget like C&W's) and ``cw_l2``.

Defaults that differ from foolbox's (override any of them with ``attack_params``): PGD takes
steps of :math:`2.5 \\varepsilon / \\mathrm{steps}` (Madry et al.'s rule; foolbox's
``rel_stepsize`` defaults are smaller and left PGD weaker than FGSM on the digits CNN); C&W runs
5 binary-search steps of 100 Adam steps with step size 0.05 from ``initial_const=0.01``
(foolbox: 9 x 10,000 steps of 0.01 from 0.001, far too slow for a benchmark).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from uniad_plugin.anomalies.base import AnomalySet, _check_bounds, _check_n, collect

__all__ = ["ATTACKS", "AttackSpec", "AdversarialSet", "make_adversarial"]

#: bump when the generation or the cache layout changes, so old cache files are not reused
_CACHE_FORMAT = 1


@dataclass(frozen=True)
class AttackSpec:
    """How one named attack maps onto foolbox 3.

    :param foolbox_name: class name in :mod:`foolbox.attacks`
    :param norm: norm of the budget ``eps``: ``"linf"`` or ``"l2"``
    :param defaults: keyword arguments of the foolbox attack; every key may be overridden
        through ``make_adversarial(..., attack_params=...)``
    :param description: one line for docs and error messages
    """

    foolbox_name: str
    norm: str
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def build(self, params: dict[str, Any]) -> Any:
        """The foolbox attack object with ``params`` (already merged with the defaults)."""
        with warnings.catch_warnings():  # foolbox imports scipy.ndimage.filters (deprecated)
            warnings.simplefilter("ignore", DeprecationWarning)
            import foolbox

        return getattr(foolbox.attacks, self.foolbox_name)(**params)


#: the attacks :func:`make_adversarial` knows, by name
ATTACKS: dict[str, AttackSpec] = {
    "fgsm": AttackSpec(
        "FGSM",
        "linf",
        {"random_start": False},
        "fast gradient sign method, one step of size eps (L-inf)",
    ),
    "pgd_linf": AttackSpec(
        "LinfPGD",
        "linf",
        {"steps": 40, "rel_stepsize": 2.5 / 40, "random_start": True},
        "projected gradient descent with random start, step 2.5 eps / steps, L-inf budget eps",
    ),
    "pgd_l2": AttackSpec(
        "L2PGD",
        "l2",
        {"steps": 50, "rel_stepsize": 2.5 / 50, "random_start": True},
        "projected gradient descent with random start, step 2.5 eps / steps, L2 budget eps",
    ),
    "deepfool": AttackSpec(
        "L2DeepFoolAttack",
        "l2",
        {"steps": 50, "candidates": 10, "overshoot": 0.02},
        "DeepFool (L2 variant); the minimal perturbation is projected onto the L2 ball eps",
    ),
    "cw_l2": AttackSpec(
        "L2CarliniWagnerAttack",
        "l2",
        {
            "steps": 100,
            "binary_search_steps": 5,
            "stepsize": 0.05,
            "confidence": 0.0,
            "initial_const": 1e-2,
            "abort_early": True,
        },
        "Carlini-Wagner L2 (100 Adam steps x 5 binary-search steps by default), "
        "projected onto the L2 ball eps",
    ),
}


class AdversarialSet(AnomalySet):
    """Successful adversarial examples (kind ``"AD"``), all labelled ``-1``.

    :param x: adversarial images of shape :math:`(N, C, H, W)`
    :param name: short name, ``f"{attack}@{eps:g}"``
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
        """Fraction of the attacked (correctly classified) inputs that gave a kept adversarial."""
        return float(self.info.get("success_rate", 0.0))


# ----------------------------------------------------------------------------- hashing / cache


def _hash_tensor(h: Any, t: Tensor) -> None:
    t = t.detach().cpu().contiguous().reshape(-1)
    h.update(f"{t.dtype}|{t.numel()}|".encode())
    if t.numel():
        h.update(t.view(torch.uint8).numpy().tobytes())


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
            _hash_tensor(h, value)
        else:  # pragma: no cover - exotic extra state
            h.update(repr(value).encode())
    h.update(str(tuple(x.shape)).encode())
    _hash_tensor(h, x)
    _hash_tensor(h, y)
    return h.hexdigest()


def _foolbox_version() -> str:
    try:
        return version("foolbox")
    except PackageNotFoundError:  # pragma: no cover
        return "unknown"


def _save_atomic(obj: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _from_record(record: dict[str, Any]) -> AdversarialSet:
    info = record["info"]
    return AdversarialSet(
        record["x"],
        name=f"{info['attack']}@{info['eps']:g}",
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


def _run_attack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    spec: AttackSpec,
    params: dict[str, Any],
    eps: float,
    bounds: tuple[float, float],
    batch_size: int,
    device: torch.device,
    progress: bool,
    desc: str,
) -> dict[str, Tensor]:
    """Attack the (correctly classified) inputs ``x`` with labels ``y`` batch by batch.

    The model must already be in eval mode on ``device``; the caller seeds the RNG.

    :return: ``x`` (adversarial, clipped to the eps-ball), ``keep`` (bool mask of successful
        ones), ``pred`` (the model's prediction on each adversarial)
    """
    from tqdm.auto import tqdm

    with warnings.catch_warnings():  # foolbox imports scipy.ndimage.filters (deprecated)
        warnings.simplefilter("ignore", DeprecationWarning)
        import foolbox

    fmodel = foolbox.PyTorchModel(model, bounds=bounds, device=device)
    attack = spec.build(params)
    lo, hi = bounds
    tol = 1e-5 * max(1.0, eps)
    outs: dict[str, list[Tensor]] = {"x": [], "keep": [], "pred": []}
    with tqdm(total=len(x), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size].to(device)
            yb = y[i : i + batch_size].to(device)
            raw, clipped, _ = attack(fmodel, xb, yb, epsilons=eps)
            raw, clipped = raw.detach(), clipped.detach()
            with torch.no_grad():
                pred = model(clipped).argmax(1)
            delta = (clipped - xb).flatten(1)
            size = delta.abs().amax(1) if spec.norm == "linf" else delta.norm(dim=1)
            flat = clipped.flatten(1)
            # foolbox's C&W returns an all-zero input where it failed (a real input is never
            # all zero unless its source is)
            failed = (raw.flatten(1) == 0).all(1) & (xb.flatten(1) != 0).any(1)
            keep = (
                (pred != yb)
                & torch.isfinite(flat).all(1)
                & (flat >= lo - 1e-6).all(1)
                & (flat <= hi + 1e-6).all(1)
                & (size <= eps + tol)
                & ~failed
            )
            outs["x"].append(clipped.clamp(lo, hi).cpu())
            outs["keep"].append(keep.cpu())
            outs["pred"].append(pred.cpu())
            bar.update(len(xb))
    return {k: torch.cat(v) for k, v in outs.items()}


def _validate_params(attack: str, spec: AttackSpec, attack_params: Any) -> dict[str, Any]:
    if attack_params is None:
        return dict(spec.defaults)
    if not isinstance(attack_params, dict):
        raise TypeError(f"expected attack_params to be a dict, got {type(attack_params).__name__}")
    unknown = sorted(set(attack_params) - set(spec.defaults))
    if unknown:
        raise ValueError(
            f"unknown attack_params {unknown} for attack {attack!r}; expected keys among "
            f"{sorted(spec.defaults)}"
        )
    params = {**spec.defaults, **attack_params}
    try:
        json.dumps(params)
    except (TypeError, ValueError):
        raise TypeError(
            f"expected JSON-serialisable attack_params, got {attack_params!r}"
        ) from None
    return params


def make_adversarial(
    model: nn.Module,
    data: Dataset | DataLoader,
    attack: str,
    eps: float,
    *,
    bounds: tuple[float, float] = (0.0, 1.0),
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    max_samples: int | None = None,
    attack_params: dict[str, Any] | None = None,
) -> AdversarialSet:
    """Craft adversarial examples against ``model`` and keep the successful ones.

    Only the inputs of ``data`` the model classifies correctly are attacked (the first
    ``max_samples`` of them, in data order); of those, only successful adversarials are kept
    (misclassified, within ``eps``, finite, in ``bounds``, not C&W's all-zero failure output).
    The model is put in eval mode for the attack and left as it was found (per-module training
    flags, device, ``requires_grad``); foolbox differentiates with respect to the input only.

    The random start of PGD draws from torch's global generator: the attack runs inside
    :func:`torch.random.fork_rng` seeded with ``seed``, so results are reproducible and the
    caller's RNG state is untouched.

    With ``cache_dir``, the result is stored in ``cache_dir/<sha256>.pt``, the hash covering
    the model's class, structure and ``state_dict``, the data (images and labels, in order),
    the attack, ``eps``, the attack parameters, ``seed``, ``bounds``, ``batch_size``,
    ``max_samples``, the device type and foolbox's version; a second call with the same inputs
    loads the file instead of attacking (``torch.load(weights_only=True)``).

    :param model: the classifier (logits out), inputs in ``bounds``
    :param data: ID samples ``(x, y)``, a dataset or a loader (the "attack" split, disjoint
        from the scored ID test split). It is read once, in order, into memory
    :param attack: a name in :data:`ATTACKS`: ``"fgsm"``, ``"pgd_linf"``, ``"pgd_l2"``,
        ``"deepfool"``, ``"cw_l2"``
    :param eps: perturbation budget (``> 0``), :math:`L_\\infty` for ``fgsm``/``pgd_linf``,
        :math:`L_2` for ``pgd_l2``/``deepfool``/``cw_l2``
    :param bounds: value range of the model's inputs
    :param batch_size: inputs attacked per foolbox call
    :param device: where the model runs during the attack
    :param seed: seeds torch's RNG during the attack
    :param cache_dir: directory of the disk cache (``None``: no caching)
    :param progress: show a tqdm progress bar
    :param max_samples: attack at most this many correctly classified inputs
    :param attack_params: overrides of the foolbox attack's keyword arguments (keys of
        ``ATTACKS[attack].defaults``, e.g. ``{"steps": 20}`` for ``cw_l2``)
    :return: the successful adversarials; ``info`` holds ``attack``, ``eps``, ``n_attacked``,
        ``n_success``, ``success_rate``, ``mean_linf``, ``mean_l2`` (over kept ones, ``None``
        if none), ``source_labels``, ``adv_pred`` (lists) and ``params``, ``seed``, ``bounds``,
        ``n_input``, ``n_correct``, ``clean_accuracy``
    :raises ValueError: on an unknown ``attack`` (the message lists :data:`ATTACKS`),
        ``eps <= 0``, bad ``bounds``/``batch_size``/``max_samples``, unknown ``attack_params``
        keys, or data outside ``bounds``
    :raises TypeError: if ``model`` is not an :class:`torch.nn.Module` or ``data`` not a
        dataset/loader of ``(x, y)``
    """
    if attack not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r}; expected one of {sorted(ATTACKS)}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"expected eps > 0 (a float), got {eps!r}")
    if not eps < float("inf"):
        raise ValueError(f"expected a finite eps, got {eps!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected model to be a torch.nn.Module, got {type(model).__name__}")
    eps = float(eps)
    lo, hi = _check_bounds(bounds)
    _check_n(batch_size, "batch_size")
    if max_samples is not None:
        _check_n(max_samples, "max_samples")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"expected seed to be an int, got {type(seed).__name__}")
    spec = ATTACKS[attack]
    params = _validate_params(attack, spec, attack_params)
    device = torch.device(device)

    x, y = collect(data, batch_size=batch_size, what="data")
    if x.min() < lo or x.max() > hi:
        raise ValueError(
            f"expected data within bounds {(lo, hi)}, got values in "
            f"[{x.min().item():.4g}, {x.max().item():.4g}]"
        )

    path = None
    if cache_dir is not None:
        meta = {
            "format": _CACHE_FORMAT,
            "foolbox": _foolbox_version(),
            "attack": attack,
            "eps": eps,
            "params": params,
            "seed": seed,
            "bounds": [lo, hi],
            "batch_size": batch_size,
            "max_samples": max_samples,
            "device": device.type,
        }
        path = Path(cache_dir) / f"{_cache_key(model, x, y, meta)}.pt"
        if path.is_file():
            return _from_record(torch.load(path, weights_only=True))

    modes = {m: m.training for m in model.modules()}
    first = next(iter(model.parameters()), None)
    home = first.device if first is not None else None
    try:
        model.eval().to(device)
        pred_clean = _predict(model, x, batch_size, device)
        correct = torch.nonzero(pred_clean == y).flatten()
        idx = correct if max_samples is None else correct[:max_samples]
        src, src_y = x[idx], y[idx]
        fork_devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(seed)
            if len(src):
                out = _run_attack(
                    model,
                    src,
                    src_y,
                    spec=spec,
                    params=params,
                    eps=eps,
                    bounds=(lo, hi),
                    batch_size=batch_size,
                    device=device,
                    progress=progress,
                    desc=f"{attack}@{eps:g}",
                )
            else:
                out = {
                    "x": src.clone(),
                    "keep": torch.zeros(0, dtype=torch.bool),
                    "pred": torch.zeros(0, dtype=torch.long),
                }
    finally:
        for m, mode in modes.items():
            m.training = mode
        if home is not None and home != device:
            model.to(home)

    keep = out["keep"]
    adv, clean = out["x"][keep].contiguous(), src[keep].contiguous()
    labels, adv_pred = src_y[keep], out["pred"][keep]
    n_attacked, n_success = len(src), int(keep.sum())
    delta = (adv - clean).flatten(1)
    info = {
        "attack": attack,
        "eps": eps,
        "norm": spec.norm,
        "n_input": len(x),
        "n_correct": len(correct),
        "clean_accuracy": len(correct) / len(x),
        "n_attacked": n_attacked,
        "n_success": n_success,
        "success_rate": n_success / n_attacked if n_attacked else 0.0,
        "mean_linf": delta.abs().amax(1).mean().item() if n_success else None,
        "mean_l2": delta.norm(dim=1).mean().item() if n_success else None,
        "source_labels": labels.tolist(),
        "adv_pred": adv_pred.tolist(),
        "params": params,
        "seed": seed,
        "bounds": [lo, hi],
    }
    record = {
        "format": _CACHE_FORMAT,
        "x": adv,
        "clean": clean,
        "source_labels": labels,
        "adv_pred": adv_pred,
        "info": info,
    }
    if path is not None:
        _save_atomic(record, path)
    return _from_record(record)
