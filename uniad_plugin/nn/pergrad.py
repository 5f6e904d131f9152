"""Per-sample parameter gradients, batched with :mod:`torch.func`.

For a model :math:`f_\\theta`, inputs :math:`x_1, \\ldots, x_B` and a per-sample loss
:math:`\\ell`, :func:`per_sample_grads` returns :math:`\\nabla_\\theta \\ell(f_\\theta(x_i), t_i)`
for every sample :math:`i` at once: ``functional_call`` turns the module into a function of its
parameters, ``grad`` differentiates it and ``vmap`` maps it over the batch, so there is no Python
loop over samples. Each sample is seen by the model as a batch of one, so that its gradient does
not depend on the other samples of the batch.

* The model is never modified: parameters are passed to ``functional_call`` as detached
  tensors, so ``requires_grad``, ``.grad`` and the weights stay untouched.
* Buffers (e.g. BatchNorm running statistics) are passed through ``functional_call`` as
  constants. The model must not update buffers in the forward pass, i.e. BatchNorm layers must
  be in eval mode; :func:`per_sample_grads` raises a ``ValueError`` otherwise. Dropout must also
  be off for deterministic gradients; put the model in eval mode (e.g. with
  :func:`uniad_plugin._utils.eval_mode`).
* ``params`` restricts the differentiation to some parameter tensors by name; the others are
  constants, so the backward pass stops early when only the last layers are selected.
* ``state`` evaluates the gradient at other weights than the model's own, e.g. at a saved
  checkpoint (a ``state_dict``), without loading them into the model.

:func:`per_sample_grad_features` processes the batch in chunks and reduces each chunk at once,
either to per-parameter-tensor squared :math:`\\ell_2` norms ``(B, P)`` (:func:`grad_sq_norms`)
or to the flattened raw gradient ``(B, sum |theta|)`` (:func:`flatten_grads`), so that memory is
bounded by ``chunk_size * |theta|`` whatever the batch size.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Literal, overload

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from uniad_plugin._utils import first_output

LossFn = Callable[[Tensor, Tensor | None], Tensor]

__all__ = [
    "LossFn",
    "check_param_shapes",
    "default_gradient_params",
    "cross_entropy_loss",
    "flatten_grads",
    "grad_sq_norms",
    "last_layer_params",
    "per_sample_grad_features",
    "per_sample_grads",
    "resolve_params",
]


def cross_entropy_loss(output: Tensor, target: Tensor | None) -> Tensor:
    """Default per-sample loss: cross-entropy of logits ``(1, C)`` with a class ``target``.

    :raises ValueError: if ``target`` is ``None``
    """
    if target is None:
        raise ValueError("expected a target for the cross-entropy loss, got None")
    return nn.functional.cross_entropy(output, target)


def resolve_params(model: nn.Module, params: Sequence[str] | None = None) -> list[str]:
    """Validate parameter names of ``model`` and return them in the model's order.

    :param params: names as in ``model.named_parameters()``; ``None`` selects all
    :raises ValueError: for unknown names, duplicates or an empty selection
    """
    names = [n for n, _ in model.named_parameters()]
    if params is None:
        if not names:
            raise ValueError("expected a model with parameters, got one without any")
        return names
    if isinstance(params, str):
        raise TypeError(f"expected a sequence of parameter names, got the string {params!r}")
    wanted = list(params)
    unknown = [p for p in wanted if p not in names]
    if unknown:
        raise ValueError(
            f"expected names of model parameters, got unknown {unknown}; known: {names}"
        )
    if len(set(wanted)) != len(wanted):
        raise ValueError(f"expected distinct parameter names, got {wanted}")
    if not wanted:
        raise ValueError("expected at least one parameter name, got an empty selection")
    chosen = set(wanted)
    return [n for n in names if n in chosen]


def last_layer_params(model: nn.Module, n_layers: int = 2) -> list[str]:
    """Names of the parameter tensors of the last ``n_layers`` parametrised modules.

    A parametrised module is one that owns parameters directly (``recurse=False``), e.g. a
    ``Linear``, ``Conv2d`` or ``BatchNorm2d``; "last" follows registration order, which is the
    order of the forward pass for ``nn.Sequential`` and most classifiers.

    :raises ValueError: if ``n_layers < 1`` or the model has no parameters
    """
    if n_layers < 1:
        raise ValueError(f"expected n_layers >= 1, got {n_layers}")
    # names as model.named_parameters() gives them (a tied parameter under its first name only)
    first_name = {id(p): n for n, p in reversed(list(model.named_parameters()))}
    seen: set[int] = set()
    layers = []
    for _, module in model.named_modules():
        own = [p for _, p in module.named_parameters(recurse=False) if id(p) not in seen]
        seen.update(id(p) for p in own)
        if own:
            layers.append([first_name[id(p)] for p in own])
    if not layers:
        raise ValueError("expected a model with parameters, got one without any")
    return resolve_params(model, [n for names in layers[-n_layers:] for n in names])


def default_gradient_params(model: nn.Module, max_param_size: int = 2**12) -> list[str]:
    """R2AD2's default parameter selection: the last two parametrised layers.

    Parameter tensors with more than ``max_param_size`` elements are skipped, except those of
    the last layer, so that the raw gradient stays small enough for the LSTM alarm network
    (e.g. for LeNet: the bias of the penultimate ``Linear`` and the whole last ``Linear``).

    :raises ValueError: if the model has no parameters
    """
    last = set(last_layer_params(model, 1))
    return [
        n
        for n in last_layer_params(model, 2)
        if n in last or model.get_parameter(n).numel() <= max_param_size
    ]


def check_param_shapes(model: nn.Module, names: Sequence[str], shapes: Sequence, who: str):
    """Refuse a state fitted for parameters ``names`` of ``shapes`` that ``model`` lacks."""
    own = dict(model.named_parameters())
    missing = [n for n in names if n not in own]
    if missing:
        raise ValueError(
            f"{who}: the state was fitted for a model with parameters {list(names)}; this model "
            f"has no {missing}"
        )
    got = [list(own[n].shape) for n in names]
    if got != [list(s) for s in shapes]:
        raise ValueError(
            f"{who}: the state was fitted for a model with parameter shapes "
            f"{[list(s) for s in shapes]}, this model has {got}"
        )


def _check_no_train_mode_norm(model: nn.Module) -> None:
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.training and m.track_running_stats:
            raise ValueError(
                f"expected normalisation layers in eval mode (per-sample gradients cannot update "
                f"running statistics), got {name or 'the model'} ({type(m).__name__}) in "
                "training mode; call model.eval() or use eval_mode(model)"
            )


@overload
def per_sample_grads(
    model: nn.Module,
    x: Tensor,
    target: Tensor | None = ...,
    loss_fn: LossFn | None = ...,
    params: Sequence[str] | None = ...,
    chunk_size: int | None = ...,
    state: Mapping[str, Tensor] | None = ...,
    with_outputs: Literal[False] = ...,
) -> dict[str, Tensor]: ...
@overload
def per_sample_grads(
    model: nn.Module,
    x: Tensor,
    target: Tensor | None = ...,
    loss_fn: LossFn | None = ...,
    params: Sequence[str] | None = ...,
    chunk_size: int | None = ...,
    state: Mapping[str, Tensor] | None = ...,
    *,
    with_outputs: Literal[True],
) -> tuple[dict[str, Tensor], Tensor]: ...
@overload
def per_sample_grads(
    model: nn.Module,
    x: Tensor,
    target: Tensor | None = ...,
    loss_fn: LossFn | None = ...,
    params: Sequence[str] | None = ...,
    chunk_size: int | None = ...,
    state: Mapping[str, Tensor] | None = ...,
    with_outputs: bool = ...,
) -> dict[str, Tensor] | tuple[dict[str, Tensor], Tensor]: ...
def per_sample_grads(
    model: nn.Module,
    x: Tensor,
    target: Tensor | None = None,
    loss_fn: LossFn | None = None,
    params: Sequence[str] | None = None,
    chunk_size: int | None = None,
    state: Mapping[str, Tensor] | None = None,
    with_outputs: bool = False,
) -> dict[str, Tensor] | tuple[dict[str, Tensor], Tensor]:
    """Gradient of the loss of every sample w.r.t. the selected parameters, batched.

    :param model: the network; not modified, BatchNorm layers must be in eval mode
    :param x: inputs ``(B, ...)``
    :param target: per-sample targets ``(B, ...)`` or ``None`` (then ``loss_fn`` gets ``None``)
    :param loss_fn: ``loss_fn(output, target) -> scalar`` for ONE sample: ``output`` is the
        model output with a batch axis of one, ``target`` the sample's target with a batch axis
        of one (or ``None``). Default: :func:`cross_entropy_loss`
    :param params: names of the parameters to differentiate (``None``: all)
    :param chunk_size: samples per vectorised chunk (``vmap``'s ``chunk_size``); ``None``: all
    :param state: tensors that replace the model's parameters and buffers of the same name
        (e.g. a checkpoint's ``state_dict``); the model's own are used for the rest
    :param with_outputs: also return the model outputs ``(B, ...)`` of the same forward pass
    :return: ``{name: gradient of shape (B, *param.shape)}``, detached, in model order (and the
        outputs if ``with_outputs``)
    :raises ValueError: for unknown parameter names, a target of the wrong length or
        BatchNorm layers in training mode
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"expected x to be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 1:
        raise ValueError(f"expected x with a batch axis, got shape {tuple(x.shape)}")
    if target is not None and (not isinstance(target, Tensor) or len(target) != len(x)):
        got = len(target) if isinstance(target, Tensor) and target.dim() else target
        raise ValueError(f"expected a target tensor with {len(x)} rows, got {got!r}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"expected chunk_size >= 1 or None, got {chunk_size}")
    _check_no_train_mode_norm(model)
    names = resolve_params(model, params)
    loss_fn = loss_fn or cross_entropy_loss
    state = dict(state or {})
    own: dict[str, Tensor] = dict(model.named_parameters())
    own.update(dict(model.named_buffers()))
    tensors = {n: state.get(n, t).detach() for n, t in own.items()}
    selected = {n: tensors.pop(n) for n in names}
    if len(x) == 0:
        empty = {n: p.new_zeros((0, *p.shape)) for n, p in selected.items()}
        if not with_outputs:
            return empty
        with torch.no_grad():
            out = first_output(functional_call(model, {**tensors, **selected}, (x,)))
        return empty, out

    def sample_loss(p: dict[str, Tensor], xi: Tensor, ti: Tensor | None) -> tuple[Tensor, Tensor]:
        out = first_output(functional_call(model, {**tensors, **p}, (xi.unsqueeze(0),)))
        loss = loss_fn(out, None if ti is None else ti.unsqueeze(0))
        if loss.numel() != 1:
            raise ValueError(
                f"expected loss_fn to return a scalar per sample, got shape {tuple(loss.shape)}"
            )
        return loss.reshape(()), out.squeeze(0).detach()

    in_dims = (None, 0, None if target is None else 0)
    with torch.enable_grad():
        grads, outs = vmap(grad(sample_loss, has_aux=True), in_dims=in_dims, chunk_size=chunk_size)(
            selected, x, target
        )
    grads = {n: grads[n].detach() for n in names}
    return (grads, outs.detach()) if with_outputs else grads


def grad_sq_norms(grads: Mapping[str, Tensor]) -> Tensor:
    """Squared :math:`\\ell_2` norm of each parameter tensor's gradient, per sample.

    :param grads: ``{name: (B, *shape)}`` as returned by :func:`per_sample_grads`
    :return: ``(B, P)`` with one column per parameter tensor, in the mapping's order
    """
    if not grads:
        raise ValueError("expected at least one gradient tensor, got none")
    return torch.stack([g.reshape(g.shape[0], -1).pow(2).sum(1) for g in grads.values()], dim=1)


def flatten_grads(grads: Mapping[str, Tensor]) -> Tensor:
    """Concatenate the flattened gradients of all parameter tensors, per sample.

    :param grads: ``{name: (B, *shape)}`` as returned by :func:`per_sample_grads`
    :return: ``(B, sum |theta|)``, parameter tensors in the mapping's order
    """
    if not grads:
        raise ValueError("expected at least one gradient tensor, got none")
    return torch.cat([g.reshape(g.shape[0], -1) for g in grads.values()], dim=1)


_REDUCERS: dict[str, Callable[[Mapping[str, Tensor]], Tensor]] = {
    "sq_norm": grad_sq_norms,
    "flat": flatten_grads,
}


@overload
def per_sample_grad_features(
    model: nn.Module,
    x: Tensor,
    target: Tensor | None = ...,
    loss_fn: LossFn | None = ...,
    params: Sequence[str] | None = ...,
    reduce: str = ...,
    chunk_size: int | None = ...,
    state: Mapping[str, Tensor] | None = ...,
    with_outputs: Literal[False] = ...,
) -> Tensor: ...
@overload
def per_sample_grad_features(
    model: nn.Module,
    x: Tensor,
    target: Tensor | None = ...,
    loss_fn: LossFn | None = ...,
    params: Sequence[str] | None = ...,
    reduce: str = ...,
    chunk_size: int | None = ...,
    state: Mapping[str, Tensor] | None = ...,
    *,
    with_outputs: Literal[True],
) -> tuple[Tensor, Tensor]: ...
@overload
def per_sample_grad_features(
    model: nn.Module,
    x: Tensor,
    target: Tensor | None = ...,
    loss_fn: LossFn | None = ...,
    params: Sequence[str] | None = ...,
    reduce: str = ...,
    chunk_size: int | None = ...,
    state: Mapping[str, Tensor] | None = ...,
    with_outputs: bool = ...,
) -> Tensor | tuple[Tensor, Tensor]: ...
def per_sample_grad_features(
    model: nn.Module,
    x: Tensor,
    target: Tensor | None = None,
    loss_fn: LossFn | None = None,
    params: Sequence[str] | None = None,
    reduce: str = "sq_norm",
    chunk_size: int | None = 256,
    state: Mapping[str, Tensor] | None = None,
    with_outputs: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Per-sample gradients reduced chunk by chunk to a ``(B, F)`` matrix.

    Only one chunk's full gradients are in memory at a time (``chunk_size * |theta|`` values).

    :param reduce: ``"sq_norm"`` (:func:`grad_sq_norms`, ``F = P``) or ``"flat"``
        (:func:`flatten_grads`, ``F = sum |theta|``)
    :param chunk_size: samples per chunk; ``None``: the whole batch at once
    :return: features ``(B, F)`` (and the model outputs ``(B, ...)`` if ``with_outputs``);
        other parameters as in :func:`per_sample_grads`
    """
    if reduce not in _REDUCERS:
        raise ValueError(f"expected reduce 'sq_norm' or 'flat', got {reduce!r}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"expected chunk_size >= 1 or None, got {chunk_size}")
    reducer = _REDUCERS[reduce]
    x_chunks: list[Tensor]
    t_chunks: list[Tensor | None]
    if chunk_size is None or len(x) <= chunk_size:
        x_chunks, t_chunks = [x], [target]
    else:
        x_chunks = list(x.split(chunk_size))
        t_chunks = [None] * len(x_chunks) if target is None else list(target.split(chunk_size))
    feats, outs = [], []
    for xc, tc in zip(x_chunks, t_chunks):
        g, out = per_sample_grads(model, xc, tc, loss_fn, params, None, state, with_outputs=True)
        feats.append(reducer(g))
        outs.append(out)
    f = torch.cat(feats)
    return (f, torch.cat(outs)) if with_outputs else f
