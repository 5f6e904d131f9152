"""Collect the activations of several layers in ONE forward pass.

A layer is named by a string:

* ``"name"``: the output of the module ``name`` (as in ``model.named_modules()``);
* ``"name:input"``: the (first positional) input of the module ``name``, e.g. ``"fc:input"``
  for the penultimate features of a classifier whose head is ``fc``;
* ``"logits"``: the model's output; ``"log_softmax"``: its log-softmax (log-probabilities);
  ``"softmax"``: its softmax (the class probabilities).

A module object may be given instead of ``"name"``. Activations are reduced by
:func:`pool` inside the hook, so that no feature map is kept longer than needed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from uniad_plugin._utils import eval_mode

LOGITS = "logits"
LOG_SOFTMAX = "log_softmax"
SOFTMAX = "softmax"
OUTPUTS = (LOGITS, LOG_SOFTMAX, SOFTMAX)
INPUT_SUFFIX = ":input"

#: module types whose outputs count as "hidden activation layers" when ``layers=None``
#: (softmax-like output normalisations are deliberately not in the list)
ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.RReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softplus,
    nn.Softsign,
    nn.Tanhshrink,
    nn.LogSigmoid,
    nn.Threshold,
    nn.GLU,
)


#: the grid sides :func:`grid_side` tries, largest first
GRID_SIDES = (4, 2, 1)
#: the most features a feature map keeps under ``"grid"`` pooling (channels x grid cells)
GRID_MAX_FEATURES = 1024


def grid_side(channels: int, height: int, width: int) -> int:
    """The side ``s`` of the ``s x s`` grid that ``"grid"`` pooling averages a
    ``(C, H, W)`` feature map over: the largest of :data:`GRID_SIDES` that fits the map
    (``s <= min(H, W)``) and keeps ``C * s * s <= GRID_MAX_FEATURES`` (1 at the least, the
    global average).

    A grid keeps where in the image a feature fired, which a global average discards; the
    bound keeps wide maps (ResNet-18's 512 channels) at the global average. UniformDetector
    uses the global average: on the validation splits grid pooling scored lower on every
    network (``experiments/sphere_geometry.py``).
    """
    for side in GRID_SIDES:
        if side <= min(height, width) and channels * side * side <= GRID_MAX_FEATURES:
            return side
    return 1


@functools.lru_cache(maxsize=64)
def _grid_matrix(h: int, w: int, side: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """The ``(h * w, side * side)`` matrix whose product with a flattened ``h x w`` map is
    ``adaptive_avg_pool2d(map, side)``, cells in row-major order: one GEMM per feature map,
    several times faster than the pooling kernel on the small maps of a classifier."""

    def weights(n: int) -> Tensor:  # (side, n): row i averages adaptive window i
        m = torch.zeros(side, n, dtype=torch.float64)
        for i in range(side):
            lo, hi = (i * n) // side, -(-((i + 1) * n) // side)
            m[i, lo:hi] = 1.0 / (hi - lo)
        return m

    # a normal tensor even when first built under inference mode: cached, it must serve the
    # gradient passes of white-box attacks too
    with torch.inference_mode(False), torch.no_grad():
        cells = torch.kron(weights(h), weights(w)).T
        return cells.to(device=device, dtype=dtype).contiguous()


def _grid_means(t: Tensor) -> Tensor:
    """``"grid"`` pooling of feature maps ``(B, C, H, W)`` -> ``(B, C s^2)``."""
    b, c, h, w = t.shape
    side = grid_side(c, h, w)
    if side == 1:
        return t.mean(dim=(2, 3))
    cells = _grid_matrix(h, w, side, t.device, t.dtype)
    return (t.reshape(b * c, h * w) @ cells).reshape(b, c * side * side)


def pool(t: Tensor, mode: str = "avg") -> Tensor:
    """Reduce an activation to a ``(B, D)`` matrix.

    ``(B, C, H, W)`` feature maps are pooled over space (``"avg"``: the mean, what
    UniformDetector uses; ``"grid"``: means over an ``s x s`` grid of regions, see
    :func:`grid_side`, measured against it in ``experiments/sphere_geometry.py``),
    ``(B, T, D)`` token sequences are averaged over tokens, ``(B, D)`` is kept and anything
    else is flattened.

    Tokens are averaged (the class token, where a model has one, counts as one token among
    them) rather than reduced to the class token: this is the counterpart of the global
    average over space for feature maps, needs no knowledge of where a model keeps its class
    token (or whether it has one), and the class token's final state is already tapped as the
    head's input by :func:`default_layers`. ``mode`` applies to feature maps only. A 3-D
    tensor is read as ``(B, T, D)``; pass ``LayerTaps(reduce=...)`` for ``(B, C, L)`` maps of
    1-D convolutions.
    """
    if t.dim() == 4:
        if mode == "avg":
            return t.mean(dim=(2, 3))
        if mode == "grid":
            return _grid_means(t)
        raise ValueError(f"expected pooling mode 'avg' or 'grid', got {mode!r}")
    if t.dim() == 3:
        return t.mean(dim=1)
    if t.dim() == 2:
        return t
    return t.reshape(t.shape[0], -1)


@dataclass(frozen=True)
class TapSpec:
    """One tapped layer: ``module_name`` is ``None`` for the model output."""

    name: str
    module_name: str | None
    take_input: bool


def resolve_layers(model: nn.Module, layers: Sequence[str | nn.Module]) -> list[TapSpec]:
    """Turn user layer names or modules into :class:`TapSpec` objects.

    :raises ValueError: if a name does not exist in ``model`` or a module is not part of it
    """
    if isinstance(layers, (str, nn.Module)):
        layers = [layers]
    if len(layers) == 0:
        raise ValueError("expected at least one layer, got an empty list")
    modules = dict(model.named_modules())
    by_id = {id(m): n for n, m in modules.items()}
    specs: list[TapSpec] = []
    for layer in layers:
        if isinstance(layer, nn.Module):
            name = by_id.get(id(layer))
            if name is None:
                raise ValueError(
                    f"expected a submodule of the model, got a {type(layer).__name__} that is "
                    "not part of it"
                )
            specs.append(TapSpec(name or "<root>", name, False))
            continue
        if not isinstance(layer, str):
            raise TypeError(f"expected layer names (str) or modules, got {type(layer).__name__}")
        if layer in OUTPUTS:
            specs.append(TapSpec(layer, None, False))
            continue
        take_input = layer.endswith(INPUT_SUFFIX)
        module_name = layer[: -len(INPUT_SUFFIX)] if take_input else layer
        if module_name not in modules or module_name == "":
            known = [n for n in modules if n]
            shown = ", ".join(repr(n) for n in known[:30]) + (" ..." if len(known) > 30 else "")
            raise ValueError(
                f"layer {layer!r} does not exist in the model; expected one of {shown} "
                f"(optionally with suffix {INPUT_SUFFIX!r}), {LOGITS!r}, {LOG_SOFTMAX!r} or {SOFTMAX!r}"
            )
        specs.append(TapSpec(layer, module_name, take_input))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"expected distinct layers, got duplicates in {names}")
    return specs


class LayerTaps:
    """Forward hooks that collect several layers during one forward pass.

    Usage::

        taps = LayerTaps(model, ["0", "3", "7:input", "logits"])
        logits, feats = taps(x)   # feats: list of (B, D_l) tensors, in the order given
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str | nn.Module],
        reduce: Callable[[Tensor], Tensor] | None = pool,
    ) -> None:
        self.model = model
        self.specs = resolve_layers(model, layers)
        self.reduce = reduce if reduce is not None else (lambda t: t)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    def __call__(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        modules = dict(self.model.named_modules())
        store: dict[int, Tensor] = {}
        handles = []

        def make_hook(idx: int, take_input: bool):
            if take_input:

                def pre_hook(_module, args):
                    if idx not in store:
                        store[idx] = self.reduce(args[0])

                return pre_hook

            def hook(_module, _args, output):
                if isinstance(output, (tuple, list)):
                    output = output[0]
                store[idx] = self.reduce(output)

            return hook

        try:
            for idx, spec in enumerate(self.specs):
                if spec.module_name is None:
                    continue
                module = modules[spec.module_name]
                if spec.take_input:
                    handles.append(module.register_forward_pre_hook(make_hook(idx, True)))
                else:
                    handles.append(module.register_forward_hook(make_hook(idx, False)))
            out = self.model(x)
        finally:
            for h in handles:
                h.remove()
        if isinstance(out, (tuple, list)):
            out = out[0]
        feats = []
        for idx, spec in enumerate(self.specs):
            if spec.name == LOG_SOFTMAX:
                feats.append(self.reduce(torch.log_softmax(out, dim=1)))
            elif spec.name == SOFTMAX:
                feats.append(self.reduce(torch.softmax(out, dim=1)))
            elif spec.module_name is None:
                feats.append(self.reduce(out))
            elif idx in store:
                feats.append(store[idx])
            else:
                raise RuntimeError(
                    f"layer {spec.name!r} was not executed in the model's forward pass; "
                    "expected every tapped module to run once per forward"
                )
        return out, feats


@dataclass(frozen=True)
class _Run:
    """One module that finished during the probe pass of :func:`default_layers`."""

    name: str
    shape: tuple[int, ...]
    own_params: bool  # parameters of its own (a convolution, a norm, a linear layer)
    any_params: bool  # parameters anywhere inside it (a block, a stage)
    parent: str  # the name of the module that holds it ("" for a child of the model)
    composite: bool  # it has submodules (a block, not a single layer)
    stacked: bool  # its parent is an nn.Sequential or nn.ModuleList


def _probe(model: nn.Module, example: Tensor) -> tuple[list[_Run], list[str]]:
    """Every named module that returns a tensor, in the order it finishes, and the names of
    the ``nn.Linear`` layers in the order they run, from one forward pass without gradients."""
    modules = dict(model.named_modules())
    names = {id(m): n for n, m in modules.items()}
    runs: list[_Run] = []
    linear_runs: list[str] = []

    def hook(module, _args, output):
        name = names.get(id(module), "")
        if name == "":
            return
        if isinstance(output, (tuple, list)):
            output = output[0]
        if isinstance(output, Tensor):
            parent = name.rpartition(".")[0]
            runs.append(
                _Run(
                    name=name,
                    shape=tuple(output.shape),
                    own_params=any(True for _ in module.parameters(recurse=False)),
                    any_params=any(True for _ in module.parameters()),
                    parent=parent,
                    composite=any(True for _ in module.children()),
                    stacked=isinstance(modules[parent], (nn.Sequential, nn.ModuleList)),
                )
            )
        if isinstance(module, nn.Linear):
            linear_runs.append(name)

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return runs, linear_runs


def _map_stages(runs: list[_Run]) -> list[str]:
    """The module that ends each spatial stage of the 4-D feature maps, shallowest first.

    Per resolution: the last module to finish among the shallowest ones (block names such as
    ``"layer3"`` rather than a ReLU deep inside the next block). Resolutions where only
    parameter-free modules run (a lone pooling step between two convolutions) are not stages
    of their own, except the last one (what the head consumes). A 1x1 resolution is a stage
    only where no larger map follows and the first module to finish at 1x1 has parameters (a
    strided convolution, as in the last stage of a ResNet on small inputs, not a global
    pooling); its candidates are modules with parameters, so the global pooling after the
    stage is not taken, and 1x1 maps elsewhere (pooled features, squeeze-and-excitation
    gates) are not stages.
    """
    maps = [r for r in runs if len(r.shape) == 4]
    if not maps:
        return []
    one = (1, 1)
    larger = [i for i, r in enumerate(maps) if r.shape[2:] != one]
    tail_start = larger[-1] + 1 if larger else 0  # the 1x1 maps after the last larger one
    final_one = tail_start < len(maps) and maps[tail_start].own_params
    computed = {r.shape[2:] for r in maps if r.own_params and r.shape[2:] != one}
    if larger:
        computed.add(maps[larger[-1]].shape[2:])
    stage_last: dict[tuple[int, ...], str] = {}
    for i, r in enumerate(maps):
        key = r.shape[2:]
        if key == one:
            if not (final_one and r.any_params and i >= tail_start):
                continue
        elif key not in computed:
            continue
        if key not in stage_last or r.name.count(".") <= stage_last[key].count("."):
            stage_last[key] = r.name
    return list(stage_last.values())


def _token_blocks(runs: list[_Run]) -> list[str]:
    """The longest stack of transformer-style blocks, in the order they run (``[]`` if none).

    A stack: at least two composite modules with parameters, children of one
    ``nn.Sequential`` or ``nn.ModuleList``, each returning a 3-D ``(B, T, D)`` token sequence
    of the same shape (e.g. ``encoder.layers.encoder_layer_0`` ... of torchvision's
    ``VisionTransformer``).
    """
    stacks: dict[tuple[str, tuple[int, ...]], list[str]] = {}
    for r in runs:
        if len(r.shape) == 3 and r.stacked and r.composite and r.any_params:
            blocks = stacks.setdefault((r.parent, r.shape), [])
            if r.name not in blocks:
                blocks.append(r.name)
    best: list[str] = []
    for blocks in stacks.values():
        if len(blocks) >= 2 and len(blocks) >= len(best):
            best = blocks
    return best


def _spread(blocks: list[str], k: int) -> list[str]:
    """``k`` of ``blocks`` evenly spaced over the depth, ending with the last block."""
    n = len(blocks)
    if n <= k:
        return list(blocks)
    return [blocks[round((i + 1) * n / k) - 1] for i in range(k)]


def default_layers(model: nn.Module, example: Tensor, max_stages: int = 4) -> list[str]:
    """Pick sensible layers of a classifier from one probe forward pass.

    Per architecture:

    * **Token models** (ViT-style; a stack of at least two blocks in one ``nn.Sequential`` or
      ``nn.ModuleList`` whose outputs are ``(B, T, D)`` token sequences of the same shape, e.g.
      ``encoder.layers.encoder_layer_0`` ... of torchvision's ``VisionTransformer``): the
      outputs of ``max_stages`` blocks evenly spaced over the depth and ending with the last
      block (all blocks if there are fewer; for 12 blocks and ``max_stages=4``: blocks 2, 5, 8
      and 11, counted from 0), so that shallow and deep blocks are both represented as the
      stages of a CNN are. Feature maps before the blocks (the patch embedding) are not taken.
      Tokens are averaged by :func:`pool`.
    * **CNNs** (4-D activations, ``nn.Sequential`` or a custom ``forward``, with or without
      BatchNorm and skip connections): for each spatial resolution at which a module with
      parameters runs (and for the last resolution), the shallowest module that finishes last
      at that resolution (e.g. ``layer1`` ... ``layer4`` of a ResNet, the final ReLU of a
      WideResNet, the last ReLU/pool of each stage of a LeNet), keeping the last
      ``max_stages`` resolutions. A 1x1 resolution counts only as the last stage, computed by
      modules with parameters (``layer4`` of a ResNet-18 on 32x32 inputs), not as the global
      pooling after it or a squeeze-and-excitation gate.
    * **MLPs** (neither of the above): the inputs of all ``nn.Linear`` layers that run.

    Then, for token models and CNNs, the input of the last ``nn.Linear`` that runs (the
    penultimate features, e.g. ``fc:input`` or ``heads.head:input``), and for every model the
    log-softmax and the softmax of the output (``"log_softmax"``: the log-probabilities, which
    unlike the logits do not carry the per-sample shift the classifier ignores; ``"softmax"``:
    the probabilities, in which an input near a decision boundary lies far from the corner
    where the ID inputs of its predicted class gather).

    :param model: the classifier, in eval mode
    :param example: a probe batch of one or a few inputs
    :param max_stages: the most stages (CNNs) or blocks (token models) to take
    :return: layer names as understood by :class:`LayerTaps`
    """
    if max_stages < 1:
        raise ValueError(f"expected max_stages >= 1, got {max_stages}")
    runs, linear_runs = _probe(model, example)
    blocks = _token_blocks(runs)
    if blocks:
        layers = _spread(blocks, max_stages)
    else:
        layers = _map_stages(runs)[-max_stages:]
    if linear_runs:
        if layers:
            layers.append(linear_runs[-1] + INPUT_SUFFIX)
        else:
            layers.extend(n + INPUT_SUFFIX for n in dict.fromkeys(linear_runs))
    layers.extend([LOG_SOFTMAX, SOFTMAX])
    return list(dict.fromkeys(layers))


def activation_taps(
    model: nn.Module, layers: Sequence[str | nn.Module] | None, example: Tensor
) -> tuple[list[str], list[int], int | None, LayerTaps]:
    """Find the layers whose flattened outputs form A3's activations, with one probe pass.

    With ``layers=None``: every module of a type in :data:`ACTIVATION_TYPES` that runs in the
    forward pass, except the one whose output is the model's output. A module object that runs
    more than once per forward pass (one ``nn.ReLU`` reused) is refused, since its activations
    would be ambiguous.

    :param model: the network (run in eval mode, without gradients)
    :param layers: layer names or modules as understood by :class:`LayerTaps`, or ``None``
    :param example: a probe batch of inputs
    :return: layer names, their flattened sizes, the number of model outputs (``None`` if
        the output is not a ``(B, C)`` matrix) and the taps (reducing by flattening)
    :raises ValueError: if a layer does not run, runs more than once, or none is found
    """
    calls: dict[str, int] = {}
    order: list[str] = []
    last_out: list[tuple[str, Tensor]] = []

    if layers is None:
        watched = {
            id(m): n for n, m in model.named_modules() if n and isinstance(m, ACTIVATION_TYPES)
        }
    else:
        specs = resolve_layers(model, layers)
        watched = {
            id(m): n
            for n, m in model.named_modules()
            if n in {s.module_name for s in specs if s.module_name}
        }

    def hook(module, _args, output):
        name = watched[id(module)]
        calls[name] = calls.get(name, 0) + 1
        if name not in order:
            order.append(name)
        if isinstance(output, (tuple, list)):
            output = output[0]
        last_out.append((name, output))

    handles = [m.register_forward_hook(hook) for m in model.modules() if id(m) in watched.keys()]
    try:
        with torch.no_grad(), eval_mode(model):
            out = model(example)
    finally:
        for h in handles:
            h.remove()
    if isinstance(out, (tuple, list)):
        out = out[0]
    reused = {n: c for n, c in calls.items() if c > 1}
    if reused:
        raise ValueError(
            "expected every tapped activation module to run once per forward pass, but "
            + ", ".join(f"{n!r} runs {c} times" for n, c in reused.items())
            + " (one module object reused); give each use its own module, or pass layers= "
            "naming modules that run once"
        )
    if layers is None:
        output_names = {
            n
            for n, o in last_out
            if isinstance(o, Tensor) and o.data_ptr() == out.data_ptr() and o.numel() == out.numel()
        }
        layer_names = [n for n in order if n not in output_names]
        if not layer_names:
            types = ", ".join(sorted({t.__name__ for t in ACTIVATION_TYPES[:6]}))
            raise ValueError(
                "expected the model to contain hidden activation modules (e.g. "
                f"{types}, ...) that run in forward, found none; activations applied "
                "functionally cannot be hooked, pass layers= with module names instead"
            )
    else:
        specs = resolve_layers(model, layers)
        missing = [s.name for s in specs if s.module_name and s.module_name not in calls]
        if missing:
            raise ValueError(
                f"expected every layer in layers= to run in the forward pass, {missing} did not"
            )
        layer_names = [s.name for s in specs]
    taps = LayerTaps(model, layer_names, reduce=lambda t: t.flatten(1))
    with torch.no_grad(), eval_mode(model):
        _, feats = taps(example)
    n_out = int(out.shape[1]) if isinstance(out, Tensor) and out.dim() == 2 else None
    return layer_names, [int(f.shape[1]) for f in feats], n_out, taps
