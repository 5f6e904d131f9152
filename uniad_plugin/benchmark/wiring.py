"""Detectors wired to a classifier by name.

:class:`ModelParts` finds what the built-in pytorch-ood detectors need from a classifier (its
logits, penultimate features, head, consecutive blocks) with one probe forward pass;
:func:`build_detectors` builds detectors by name from a declarative table of the built-in
detectors plus the detectors registered in the ``pytorch_ood.detectors`` entry-point group. A
detector that cannot run on the model is *skipped*, one whose constructor raises is *failed*;
either way its :class:`DetectorEntry` says why.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from pytorch_ood.api import Detector
from torch import Tensor, nn

from uniad_plugin._utils import eval_mode, model_device
from uniad_plugin.benchmark._common import ConfigError, one_line
from uniad_plugin.nn.taps import INPUT_SUFFIX, OUTPUTS, LayerTaps, default_layers

__all__ = [
    "DEFAULT_DETECTORS",
    "SANITY_DETECTORS",
    "DetectorEntry",
    "CpuFeatures",
    "ModelParts",
    "PenultimateEncoder",
    "available_detectors",
    "named_stage_blocks",
    "NOT_WIRED",
    "FeatureMapEncoder",
    "PooledHead",
    "feature_map_layer",
    "build_detectors",
    "check_detector_names",
    "is_builtin",
    "is_sanity",
    "with_cpu_features",
]

#: detectors of the ``uniad`` command when none are chosen (those that cannot run on the
#: model are skipped with the reason shown)
DEFAULT_DETECTORS: tuple[str, ...] = (
    "UniformDetector",
    "MaxSoftmax",
    "EnergyBased",
    "ODIN",
    "Mahalanobis",
    "MultiMahalanobis",
    "KNN",
    "ViM",
)


class PenultimateEncoder(nn.Module):
    """The features a classifier feeds into its last ``nn.Linear`` (its penultimate layer).

    Uses :class:`~uniad_plugin.nn.taps.LayerTaps`, so it works for any model whose head is an
    ``nn.Linear`` that runs in ``forward``, not only for ``nn.Sequential``. Feature maps are
    average-pooled to ``(B, D)``.

    :param model: the classifier
    :param layer: tapped layer, e.g. ``"fc:input"``
    """

    def __init__(self, model: nn.Module, layer: str) -> None:
        super().__init__()
        self.model = model
        self.layer = layer
        self.taps = LayerTaps(model, [layer])

    def forward(self, x: Tensor) -> Tensor:
        return self.taps(x)[1][0]

    def with_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Penultimate features and logits from one forward pass."""
        logits, (z,) = self.taps(x)
        return z, logits


class FeatureMapEncoder(nn.Module):
    """The feature maps ``(B, C, H, W)`` whose spatial mean is a classifier's penultimate
    features, for the built-ins that reshape feature maps (``ASH``, ``SCALE``, ``RankFeat``).

    :param model: the classifier
    :param layer: the module whose output the features are averaged from
    """

    def __init__(self, model: nn.Module, layer: str) -> None:
        super().__init__()
        self.model = model
        self.layer = layer
        self.taps = LayerTaps(model, [layer], reduce=None)

    def forward(self, x: Tensor) -> Tensor:
        return self.taps(x)[1][0].contiguous()  # SCALE and ASH view the maps as (B, -1)


class PooledHead(nn.Module):
    """``head(mean over space of the feature maps)``: the rest of the classifier after a
    :class:`FeatureMapEncoder`."""

    def __init__(self, head: nn.Linear) -> None:
        super().__init__()
        self.head = head

    def forward(self, fmap: Tensor) -> Tensor:
        return self.head(fmap.mean(dim=(2, 3)))


def feature_map_layer(model: nn.Module, example: Tensor, head: nn.Linear) -> str | None:
    """The last module whose output is a feature map ``(B, C, H, W)`` whose spatial mean, put
    through ``head``, gives the model's logits on ``example`` (maps larger than 1 x 1 first, so
    that the global pooling's own output is taken only where the maps are 1 x 1); ``None`` if
    there is none (the features are not a global average of feature maps)."""
    outputs: list[tuple[str, Tensor]] = []
    hooks = []
    for name, module in model.named_modules():
        if not name:
            continue

        def hook(_m: nn.Module, _i: Any, out: Any, name: str = name) -> None:
            if isinstance(out, Tensor) and out.dim() == 4:
                outputs.append((name, out))

        hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad(), eval_mode(model):
            logits = model(example)
    finally:
        for h in hooks:
            h.remove()
    logits = logits[0] if isinstance(logits, (tuple, list)) else logits
    outputs.sort(key=lambda item: item[1].shape[2] * item[1].shape[3] > 1)  # stable
    for name, out in reversed(outputs):
        if out.shape[1] != head.in_features:
            continue
        with torch.no_grad():
            again = head(out.mean(dim=(2, 3)))
        if again.shape == logits.shape and torch.allclose(again, logits, rtol=1e-4, atol=1e-4):
            return name
    return None


class _As4d(nn.Module):
    """``(B, D)`` -> ``(B, D, 1, 1)`` so that MultiMahalanobis can average over space."""

    def forward(self, x: Tensor) -> Tensor:
        return x[:, :, None, None] if x.dim() == 2 else x


@dataclass
class ModelParts:
    """What the built-in detectors need from a classifier, found by one probe forward pass.

    :param model: the classifier
    :param num_classes: number of classes (width of the logits)
    :param layers: :func:`~uniad_plugin.nn.taps.default_layers` of the model
    :param head: the last ``nn.Linear`` that runs (``None`` if there is none)
    :param encoder: penultimate features (input of ``head``), ``None`` without a head
    :param blocks: consecutive blocks split at the stage boundaries (``nn.Sequential`` only)
    :param split: ``(backbone, head)`` halves of an ``nn.Sequential`` split before its last
        ``nn.Linear`` (``None`` otherwise)
    :param feature_dim: width of the penultimate features
    :param feature_maps: the feature maps averaged into the penultimate features
        (:class:`FeatureMapEncoder`), ``None`` if the features are not such an average
    :param notes: why a part is missing, by part (``"features"``, ``"sequential"``)
    """

    model: nn.Module
    num_classes: int
    layers: list[str]
    head: nn.Linear | None = None
    encoder: PenultimateEncoder | None = None
    blocks: list[nn.Module] | None = None
    split: tuple[nn.Module, nn.Module] | None = None
    feature_dim: int | None = None
    feature_maps: FeatureMapEncoder | None = None
    notes: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_model(cls, model: nn.Module, example: Tensor) -> ModelParts:
        """Analyse ``model`` with a probe batch ``example`` (a few inputs)."""
        with torch.no_grad():
            logits = model(example)
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        layers = default_layers(model, example)
        modules = dict(model.named_modules())
        head_layer = next((n for n in layers if n.endswith(INPUT_SUFFIX)), None)
        head = encoder = None
        feature_dim = None
        notes: dict[str, str] = {}
        if head_layer is not None:
            head_name = head_layer[: -len(INPUT_SUFFIX)]
            candidate = modules[head_name]
            if isinstance(candidate, nn.Linear):
                head = candidate
                encoder = PenultimateEncoder(model, head_layer)
                feature_dim = head.in_features
        if head is None:
            notes["features"] = "the model has no nn.Linear head whose input is the features"
        fmap = None
        if head is not None:
            fmap_layer = feature_map_layer(model, example, head)
            if fmap_layer is not None:
                fmap = FeatureMapEncoder(model, fmap_layer)
            else:
                notes["feature_maps"] = (
                    "the penultimate features are not the spatial mean of feature maps"
                )
        blocks, split = _sequential_parts(model, layers, head_layer if head is not None else None)
        if not isinstance(model, nn.Sequential):
            blocks, why = named_stage_blocks(model, example)
            if blocks is None:
                notes["sequential"] = f"needs consecutive layers: {why}"
        return cls(
            model=model,
            num_classes=int(logits.shape[1]),
            layers=layers,
            head=head,
            encoder=encoder,
            blocks=blocks,
            split=split,
            feature_dim=feature_dim,
            feature_maps=fmap,
            notes=notes,
        )


def _sequential_parts(
    model: nn.Module, layers: Sequence[str], head_layer: str | None
) -> tuple[list[nn.Module] | None, tuple[nn.Module, nn.Module] | None]:
    """Consecutive blocks of an ``nn.Sequential`` split at the stage boundaries of ``layers``,
    and its ``(backbone, head)`` halves split before ``head_layer`` (``None`` where impossible).
    """
    if not isinstance(model, nn.Sequential):
        return None, None
    blocks = split = None
    top = [n for n, _ in model.named_children()]
    ends: list[int] = []
    for layer in layers:
        if layer in OUTPUTS:
            continue
        name = layer[: -len(INPUT_SUFFIX)] if layer.endswith(INPUT_SUFFIX) else layer
        idx = top.index(name.split(".")[0])
        ends.append(idx if layer.endswith(INPUT_SUFFIX) else idx + 1)
    ends = sorted(set(e for e in ends if e > 0))
    if ends:
        starts = [0, *ends[:-1]]
        blocks = [
            nn.Sequential(*list(model.children())[s:e]) for s, e in zip(starts, ends, strict=True)
        ]
        blocks[-1] = nn.Sequential(*blocks[-1], _As4d())
    if head_layer is not None:
        name = head_layer[: -len(INPUT_SUFFIX)]
        if name in top:
            h = top.index(name)
            split = (model[:h], model[h:])
    return blocks, split


#: names of the stage modules of a network (torchvision's ResNets: layer1..layer4)
_STAGE_NAME = re.compile(r"^(layer|stage|block)(\d+)$")


class _Normalise(nn.Module):
    """The normalisation of a :class:`~uniad_plugin.models.Normalized` wrapper, as a block."""

    def __init__(self, wrapper: nn.Module) -> None:
        super().__init__()
        self.register_buffer("mean", wrapper.mean.detach().clone(), persistent=False)
        self.register_buffer("std", wrapper.std.detach().clone(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def named_stage_blocks(
    model: nn.Module, example: Tensor
) -> tuple[list[nn.Module] | None, str | None]:
    """Consecutive blocks of a network with named stages, for ``MultiMahalanobis``.

    The stages are the direct children named ``layer1``, ``layer2``, ... (or ``stage1``...,
    ``block1``...), as in torchvision's ResNets and :class:`~uniad_plugin.models.SmallResNet`;
    the children registered before the first stage (the stem) go into the first block, and a
    :class:`~uniad_plugin.models.Normalized` wrapper's normalisation in front of it. The split
    is checked on ``example``: the blocks applied one after the other must give the stages'
    outputs of the model's own forward pass, so a model whose ``forward`` does more between
    the stages is refused, not silently mis-wired.

    :return: ``(blocks, None)``, or ``(None, reason)`` where the model has no such stages
    """
    from uniad_plugin.models import Normalized

    prefix: list[nn.Module] = []
    net = model
    if isinstance(model, Normalized):
        prefix, net = [_Normalise(model)], model.model
    children = list(net.named_children())
    idx = [i for i, (name, _) in enumerate(children) if _STAGE_NAME.match(name)]
    if len(idx) < 2:
        return None, "found neither nn.Sequential nor named stages (layer1, layer2, ...)"
    if idx != list(range(idx[0], idx[0] + len(idx))):
        return None, "the named stages are not consecutive children of the model"
    stages = [children[i][1] for i in idx]
    stem = [m for _, m in children[: idx[0]]]
    blocks: list[nn.Module] = [nn.Sequential(*prefix, *stem, stages[0]), *stages[1:]]
    seen: list[Tensor] = []
    hooks = [s.register_forward_hook(lambda _m, _i, out: seen.append(out)) for s in stages]
    try:
        with torch.no_grad(), eval_mode(model):
            model(example)
            for hook in hooks:
                hook.remove()
            h = example
            for block, out in zip(blocks, seen, strict=True):
                h = block(h)
                same = isinstance(out, Tensor) and h.shape == out.shape
                if not (same and torch.allclose(h, out, rtol=1e-4, atol=1e-5)):
                    return None, "its forward does more between the named stages than apply them"
    except Exception as e:  # noqa: BLE001 - a model that cannot be split this way is skipped
        return None, f"its named stages cannot be applied one after the other ({one_line(e)})"
    finally:
        for hook in hooks:
            hook.remove()
    return blocks, None


def _need(parts: ModelParts, what: str) -> str | None:
    """Reason why ``parts`` lacks ``what`` ("features", "bias", "sequential", "split",
    "feature_maps")."""
    if what in ("features", "bias", "split") and parts.encoder is None:
        return "needs penultimate features: " + parts.notes.get("features", "none found")
    if what == "bias" and parts.head is not None and parts.head.bias is None:
        return "needs the bias of the last nn.Linear, which has none"
    if what == "sequential" and parts.blocks is None:
        return "MultiMahalanobis " + parts.notes.get("sequential", "found no layer boundaries")
    if what == "split" and parts.split is None:
        return "needs the model split before its last nn.Linear; only nn.Sequential is split"
    if what == "feature_maps" and parts.feature_maps is None:
        why = parts.notes.get("feature_maps") or parts.notes.get("features", "none found")
        return "needs feature maps before a global average pooling: " + why
    return None


def _builtin(name: str) -> type:
    import pytorch_ood.detector as d

    return getattr(d, name)


class CpuFeatures:
    """Mixin for a built-in whose ``fit_features`` / ``predict_features`` hand the features to
    NumPy (scikit-learn) without moving them to the CPU first.

    Features and labels go to the CPU before the wrapped method runs; scores come back on the
    device of the features given, so the detector works on ``--device cuda`` like the others.
    Of the built-ins in the wiring table only ``KNN`` needs it (its ``fit_features`` calls
    ``.numpy()`` on the features as given); ``ReAct`` and ``OpenMax`` move their inputs to the
    CPU themselves, the others compute in torch on the features' device.
    """

    def fit_features(self, z: Tensor, labels: Tensor, *args: Any, **kwargs: Any) -> Any:
        return super().fit_features(_on_cpu(z), _on_cpu(labels), *args, **kwargs)

    def predict_features(self, z: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        device = z.device
        return super().predict_features(_on_cpu(z), *args, **kwargs).to(device)


def _on_cpu(t: Tensor) -> Tensor:
    return t.detach().cpu() if isinstance(t, Tensor) else t


@functools.cache
def with_cpu_features(cls: type) -> type:
    """``cls`` with :class:`CpuFeatures` in front: same name, features on the CPU."""
    if not (hasattr(cls, "fit_features") and hasattr(cls, "predict_features")):
        raise TypeError(
            f"expected a detector class with fit_features and predict_features, got {cls!r}"
        )
    return type(cls.__name__, (CpuFeatures, cls), {"__module__": __name__})


def is_builtin(det: Detector) -> bool:
    """Whether ``det`` is a pytorch-ood built-in (also behind :class:`CpuFeatures`)."""
    return isinstance(det, CpuFeatures) or type(det).__module__.startswith("pytorch_ood.")


def _knn(p: ModelParts, kw: dict) -> Detector:
    return with_cpu_features(_builtin("KNN"))(p.encoder, **{"k": 50, **kw})


def _vim(p: ModelParts, kw: dict) -> Detector:
    d = max(1, (p.feature_dim or 2) // 2)
    return _builtin("ViM")(p.encoder, **{"d": d, "w": p.head.weight, "b": p.head.bias, **kw})


def _maps(name: str, **defaults: Any) -> Callable[[ModelParts, dict], Detector]:
    """A built-in on the feature maps (backbone) and the pooled head."""

    def factory(p: ModelParts, kw: dict) -> Detector:
        return _builtin(name)(p.feature_maps, PooledHead(p.head), **{**defaults, **kw})

    return factory


def _features_head(name: str, **defaults: Any) -> Callable[[ModelParts, dict], Detector]:
    """A built-in on the penultimate features (encoder or backbone) and the linear head."""

    def factory(p: ModelParts, kw: dict) -> Detector:
        return _builtin(name)(p.encoder, p.head, **{**defaults, **kw})

    return factory


def _dice(p: ModelParts, kw: dict) -> Detector:
    return _builtin("DICE")(p.encoder, w=p.head.weight, b=p.head.bias, **{"p": 0.9, **kw})


#: built-in pytorch-ood detectors the benchmark can wire to a classifier:
#: name -> (requirement, factory(parts, kwargs), one-line description)
_BUILTINS: dict[str, tuple[str | None, Callable[[ModelParts, dict], Detector], str]] = {
    "MaxSoftmax": (None, lambda p, kw: _builtin("MaxSoftmax")(p.model, **kw), "logits"),
    "EnergyBased": (None, lambda p, kw: _builtin("EnergyBased")(p.model, **kw), "logits"),
    "MaxLogit": (None, lambda p, kw: _builtin("MaxLogit")(p.model, **kw), "logits"),
    "Entropy": (None, lambda p, kw: _builtin("Entropy")(p.model, **kw), "logits"),
    "GEN": (None, lambda p, kw: _builtin("GEN")(p.model, **kw), "logits"),
    "KLMatching": (None, lambda p, kw: _builtin("KLMatching")(p.model, **kw), "logits, fitted"),
    "OpenMax": (None, lambda p, kw: _builtin("OpenMax")(p.model, **kw), "logits, fitted"),
    "ODIN": (None, lambda p, kw: _builtin("ODIN")(p.model, **kw), "input gradients"),
    "Mahalanobis": (
        "features",
        lambda p, kw: _builtin("Mahalanobis")(p.encoder, **kw),
        "penultimate features, fitted",
    ),
    "RMD": ("features", lambda p, kw: _builtin("RMD")(p.encoder, **kw), "penultimate, fitted"),
    "KNN": ("features", _knn, "penultimate features, fitted (k=50)"),
    "ViM": ("bias", _vim, "penultimate features + head, fitted (d = D/2)"),
    "fDBD": (
        "features",
        lambda p, kw: _builtin("fDBD")(p.encoder, p.head, **kw),
        "penultimate features + head, fitted",
    ),
    "NCI": (
        "features",
        lambda p, kw: _builtin("NCI")(p.encoder, p.head, **kw),
        "penultimate features + head, fitted",
    ),
    "MahalanobisODIN": (
        "features",
        lambda p, kw: _builtin("MahalanobisODIN")(p.encoder, **kw),
        "penultimate features + input gradients, fitted",
    ),
    "MultiMahalanobis": (
        "sequential",
        lambda p, kw: _builtin("MultiMahalanobis")(p.blocks, **kw),
        "every stage, fitted (nn.Sequential, or named stages layer1, layer2, ...)",
    ),
    "ReAct": ("features", _features_head("ReAct"), "clipped penultimate features, fitted"),
    "VRA": ("features", _features_head("VRA"), "rectified penultimate features, fitted"),
    "SHE": ("features", _features_head("SHE"), "stored class patterns of the features, fitted"),
    "NNGuide": ("features", _features_head("NNGuide"), "guided nearest neighbours, fitted"),
    "PNML": ("features", _features_head("PNML"), "penultimate features + head, fitted"),
    "GMM": ("features", lambda p, kw: _builtin("GMM")(p.encoder, **kw), "class GMMs, fitted"),
    "DICE": ("bias", _dice, "sparsified head (p = 0.9), fitted"),
    "ASH": ("feature_maps", _maps("ASH"), "pruned and sharpened feature maps (ASH-S)"),
    "SCALE": ("feature_maps", _maps("SCALE"), "rescaled feature maps"),
    "RankFeat": ("feature_maps", _maps("RankFeat"), "feature maps without their rank-1 part"),
    "TemperatureScaling": (
        None,
        lambda p, kw: _builtin("TemperatureScaling")(p.model, **kw),
        "logits, temperature fitted on ID data",
    ),
}

#: pytorch-ood 0.4 detectors the benchmark does not wire, and why (listed, never dropped)
NOT_WIRED: dict[str, str] = {
    "GradNorm": "needs a parameter filter for the layer whose gradient norm it reads",
    "GradUncertainty": "needs a parameter filter for the layers whose gradients it reads",
    "Gram": "needs the feature layers and the number of poles per layer chosen for the model",
    "NACUE": "needs per-layer bins, smoothing and neuron counts chosen for the model",
    "LTS": "needs a detector of its own on the features (a second choice per model)",
    "MCD": "needs dropout layers, kept active at test time",
    "MCM": "needs the text embeddings of a vision-language model (CLIP)",
    "WeightedEBO": "needs per-class weights from data other than the ID training set",
}


def _sanity(name: str) -> Callable[[ModelParts, dict], Detector]:
    def factory(_: ModelParts, kw: dict) -> Detector:
        from uniad_plugin.benchmark.sanity import SANITY_DETECTORS

        return SANITY_DETECTORS[name](**kw)

    return factory


#: model-free sanity baselines (see :mod:`uniad_plugin.benchmark.sanity`), wired like built-ins
_SANITY: dict[str, tuple[None, Callable[[ModelParts, dict], Detector], str]] = {
    "PixelGrid": (None, _sanity("PixelGrid"), "model-free: share of pixels off the data's grid"),
    "PixelCount": (None, _sanity("PixelCount"), "model-free: number of non-zero pixels"),
    "PixelKNN": (None, _sanity("PixelKNN"), "model-free: nearest ID image on raw pixels"),
}
#: names of the sanity baselines that every run of the command adds
SANITY_DETECTORS: tuple[str, ...] = tuple(_SANITY)
_WIRED = {**_BUILTINS, **_SANITY}


def _registered() -> dict[str, Any]:
    from uniad_plugin import _bridge

    return dict(_bridge.registered_detectors())


def available_detectors() -> dict[str, str]:
    """Every detector name the benchmark accepts, mapped to a short description.

    Built-in pytorch-ood detectors come first, then the model-free sanity baselines
    (``Pixel*``, marked ``sanity``), then the detectors registered in the
    ``pytorch_ood.detectors`` entry-point group (marked ``plugin``).
    """
    names = {name: f"pytorch-ood; {desc}" for name, (_, _, desc) in _BUILTINS.items()}
    names.update({name: f"sanity; {desc}" for name, (_, _, desc) in _SANITY.items()})
    for name, ep in sorted(_registered().items()):
        names.setdefault(name, f"plugin ({ep.value})")
    return names


def _canonical(name: str, known: Iterable[str]) -> str | None:
    known = list(known)
    if name in known:
        return name
    lower = {k.lower(): k for k in known}
    return lower.get(name.lower())


@dataclass
class DetectorEntry:
    """A named detector in a benchmark run, or the reason why there is none.

    :param name: name shown in the results
    :param detector: the detector (``None`` if it was skipped or could not be built)
    :param status: ``"ok"``, ``"skipped"`` (cannot run on this model) or ``"failed"`` (raised)
    :param reason: why it was skipped or failed
    """

    name: str
    detector: Detector | None = None
    status: str = "ok"
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok" and self.detector is not None

    def fail(self, stage: str, error: BaseException) -> None:
        """Mark the entry as failed at ``stage`` ("build", "fit", "predict") with ``error``."""
        self.status = "failed"
        self.reason = f"{stage} failed: {one_line(error)}"


def build_detectors(
    names: Sequence[str],
    model: nn.Module,
    example: Tensor,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    detector_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[DetectorEntry]:
    """Build detectors by name, wired to ``model``.

    Built-in pytorch-ood detectors take the classifier (logits detectors, ODIN), its
    penultimate features (:class:`PenultimateEncoder`: Mahalanobis, KNN, ViM, ...) or, for an
    ``nn.Sequential``, its consecutive blocks (MultiMahalanobis). Registered plugin detectors
    are constructed as ``Cls(model)`` (with ``seed=seed`` if their constructor takes a seed).
    Names are matched case-insensitively.

    :param names: detector names, see :func:`available_detectors`
    :param model: the classifier, in eval mode
    :param example: a few model inputs for one probe forward pass
    :param seed: seed for detectors that take one (and for the global generator while building)
    :param device: device of the detectors
    :param detector_kwargs: extra constructor keyword arguments per detector name
    :return: one entry per name; a detector that cannot run on the model is ``"skipped"``, one
        whose constructor raises is ``"failed"``, both with the reason
    :raises ConfigError: if a name is unknown or given twice (before anything is built)
    """
    registered = _registered()
    canonical = check_detector_names(names)
    kwargs_by_name = {k: dict(v) for k, v in (detector_kwargs or {}).items()}
    model.eval()
    parts = ModelParts.from_model(model, example.to(model_device(model)))
    entries: list[DetectorEntry] = []
    for name in canonical:
        kw = kwargs_by_name.get(name, {})
        entry = DetectorEntry(name)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                if name in _WIRED:
                    requirement, factory, _ = _WIRED[name]
                    reason = _need(parts, requirement) if requirement else None
                    if reason is not None:
                        entries.append(DetectorEntry(name, None, "skipped", reason))
                        continue
                    detector = factory(parts, kw)
                else:
                    cls = registered[name].load()
                    params = inspect.signature(cls).parameters
                    if "seed" in params and "seed" not in kw:
                        kw = {**kw, "seed": seed}
                    detector = cls(model, **kw)
                entry.detector = detector.to(device)
        except Exception as e:  # noqa: BLE001 - shown in the results
            entry.fail("build", e)
        entries.append(entry)
    return entries


def as_entries(
    detectors: Detector
    | DetectorEntry
    | Sequence[Detector | DetectorEntry]
    | Mapping[str, Detector],
) -> list[DetectorEntry]:
    """Detectors, entries or a mapping name -> detector as entries with distinct names
    (a repeated name gets ``#2``, ``#3``, ...).

    :raises TypeError: on anything else
    :raises ValueError: if there is no detector
    """
    if isinstance(detectors, (Detector, DetectorEntry)):
        detectors = [detectors]
    if isinstance(detectors, Mapping):
        items: list[Any] = [DetectorEntry(str(k), v) for k, v in detectors.items()]
    elif isinstance(detectors, Sequence) and not isinstance(detectors, str):
        items = list(detectors)
    else:
        raise TypeError(
            "expected a Detector, a DetectorEntry, a sequence of them or a mapping name -> "
            f"Detector, got {type(detectors).__name__}"
        )
    if not items:
        raise ValueError("expected at least one detector, got none")
    entries: list[DetectorEntry] = []
    seen: dict[str, int] = {}
    for item in items:
        if isinstance(item, DetectorEntry):
            entry = item
        elif isinstance(item, Detector):
            entry = DetectorEntry(type(item).__name__, item)
        else:
            raise TypeError(f"expected Detector or DetectorEntry items, got {type(item).__name__}")
        if not isinstance(entry.detector, (Detector, type(None))):
            raise TypeError(
                f"expected entry {entry.name!r} to hold a Detector, got "
                f"{type(entry.detector).__name__}"
            )
        count = seen.get(entry.name, 0)
        seen[entry.name] = count + 1
        if count:
            entry = DetectorEntry(
                f"{entry.name}#{count + 1}", entry.detector, entry.status, entry.reason
            )
        entries.append(entry)
    return entries


def check_detector_names(names: Sequence[str]) -> list[str]:
    """Canonical detector names (case-insensitive match).

    :raises ConfigError: if a name is unknown or repeated
    """
    known = list(available_detectors())
    out: list[str] = []
    for name in names:
        c = _canonical(name, known)
        if c is None:
            raise ConfigError(
                f"unknown detector {name!r}; choose from {', '.join(known)} "
                "(see available_detectors())"
            )
        if c in out:
            raise ConfigError(f"detector {c!r} was given twice")
        out.append(c)
    return out


def is_sanity(name: str) -> bool:
    """Whether ``name`` is a model-free sanity baseline (its name starts with ``Pixel``)."""
    return name.split("#")[0] in _SANITY
