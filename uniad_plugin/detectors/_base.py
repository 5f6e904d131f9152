"""What every detector of this package shares, written once.

:class:`UniadDetector` is the mixin all four detectors put in front of pytorch-ood's
:class:`~pytorch_ood.api.Detector` bases. It provides

* model checks (:meth:`~UniadDetector._require_model`), the target device and dtype, and
  :func:`~uniad_plugin._utils.eval_mode`;
* batch iteration over a loader (:meth:`~UniadDetector._iter_batches`): checked ``(x, y)``
  batches cast to the model's dtype;
* input and label checks (:func:`check_inputs`, :func:`check_labels`, :func:`split_known`,
  :func:`check_classes`, :func:`check_label_range`);
* one versioned state-dict layout (:meth:`~UniadDetector._pack_state`,
  :meth:`~UniadDetector._unpack_state`): a format version, the detector's class name, its
  hyperparameters and its fitted state;
* hyperparameters declared once per detector (:attr:`~UniadDetector.hyperparameters`, a
  mapping from name to a check) and validated where they take effect: in ``__init__`` and
  again at the start of every fit, so that values set with pytorch-ood's
  :meth:`~pytorch_ood.api.Detector.set_hyperparameters` (as :class:`~pytorch_ood.utils.GridSearch`
  does) are checked too, and derived values are recomputed.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pytorch_ood.api import (
    DetectorInfo,
    ModelNotSetException,
    Paper,
    RequiresFittingException,
    Task,
)
from torch import Tensor, nn

from uniad_plugin._utils import eval_mode, first_output, model_dtype

__all__ = [
    "STATE_FORMAT_VERSION",
    "UniadDetector",
    "check_classes",
    "check_inputs",
    "check_label_range",
    "check_labels",
    "choice",
    "classification_info",
    "eval_mode",
    "first_output",
    "flag",
    "hp",
    "integer",
    "known_rows",
    "model_outputs",
    "positive_ints",
    "real",
    "split_known",
]

#: version of the state-dict layout written by :meth:`UniadDetector._pack_state`; states of
#: any other version are refused
STATE_FORMAT_VERSION = 2

#: a hyperparameter check: ``check(name, value)`` returns the (normalised) value or raises a
#: ``ValueError``/``TypeError`` whose message names the parameter
Check = Callable[[str, Any], Any]


# ------------------------------------------------------------------ hyperparameter checks
def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def integer(minimum: int | None = 1, optional: bool = False) -> Check:
    """An integer ``>= minimum`` (integral floats are accepted), or ``None`` if ``optional``."""
    what = (
        "an int"
        + (f" >= {minimum}" if minimum is not None else "")
        + (" or None" if optional else "")
    )

    def check(name: str, value: Any) -> int | None:
        if value is None and optional:
            return None
        if not _is_number(value) or not math.isfinite(value) or int(value) != value:
            raise TypeError(f"expected {name} to be {what}, got {value!r}")
        if minimum is not None and value < minimum:
            raise ValueError(f"expected {name} to be {what}, got {value!r}")
        return int(value)

    return check


def real(
    low: float = 0.0,
    high: float = float("inf"),
    *,
    low_open: bool = True,
    high_open: bool = True,
    optional: bool = False,
) -> Check:
    """A number in the interval from ``low`` to ``high`` (open or closed ends)."""
    interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"

    def check(name: str, value: Any) -> float | None:
        if value is None and optional:
            return None
        none = " or None" if optional else ""
        if not _is_number(value):
            raise TypeError(f"expected {name} to be a number in {interval}{none}, got {value!r}")
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        if not (above and below):
            raise ValueError(f"expected {name} in {interval}{none}, got {value!r}")
        return float(value)

    return check


def choice(*options: Any) -> Check:
    """One of ``options``."""

    def check(name: str, value: Any) -> Any:
        if not any(value is o or (type(value) is type(o) and value == o) for o in options):
            raise ValueError(f"expected {name} to be one of {list(options)}, got {value!r}")
        return value

    return check


def flag() -> Check:
    """A bool (numpy bools too)."""

    def check(name: str, value: Any) -> bool:
        if not isinstance(value, bool) and type(value).__name__ != "bool_":
            raise TypeError(f"expected {name} to be a bool, got {value!r}")
        return bool(value)

    return check


def positive_ints(min_len: int = 1, optional: bool = False) -> Check:
    """A sequence of at least ``min_len`` positive ints, returned as a tuple."""

    def check(name: str, value: Any) -> tuple[int, ...] | None:
        if value is None and optional:
            return None
        if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
            raise TypeError(f"expected {name} to be a sequence of positive ints, got {value!r}")
        out = tuple(value)
        if len(out) < min_len or not all(
            _is_number(v) and math.isfinite(v) and int(v) == v >= 1 for v in out
        ):
            raise ValueError(
                f"expected {name} to be at least {min_len} positive ints, got {list(out)}"
            )
        return tuple(int(v) for v in out)

    return check


def names(optional: bool = False) -> Check:
    """A sequence of strings (possibly empty), returned as a tuple."""

    def check(name: str, value: Any) -> tuple[str, ...] | None:
        if value is None and optional:
            return None
        if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
            raise TypeError(f"expected {name} to be a sequence of names, got {value!r}")
        out = tuple(value)
        if not all(isinstance(v, str) for v in out):
            raise TypeError(f"expected {name} to be a sequence of names, got {list(out)}")
        return out

    return check


#: the hyperparameter checks as one namespace, for the detectors' ``hyperparameters`` tables
hp = SimpleNamespace(
    choice=choice, flag=flag, integer=integer, names=names, positive_ints=positive_ints, real=real
)


# ------------------------------------------------------------------ input and label checks
def check_inputs(
    x: object,
    input_shape: tuple[int, ...] | None,
    what: str = "x",
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Validate a batch of model inputs and return it.

    Floating point inputs of another precision are cast to ``dtype`` (the model's), if given.

    :raises TypeError: if ``x`` is not a floating point tensor
    :raises ValueError: on a wrong shape (compared with ``input_shape``, the per-sample shape
        seen at fit time) or on NaN/inf values
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"expected {what} to be a torch.Tensor, got {type(x).__name__}")
    if not torch.is_floating_point(x):
        raise TypeError(
            f"expected {what} to be a floating point tensor (the model's input), got dtype "
            f"{x.dtype}; convert e.g. uint8 images with x.float() / 255"
        )
    if input_shape is not None and tuple(x.shape[1:]) != tuple(input_shape):
        raise ValueError(
            f"expected {what} of shape (B, {', '.join(map(str, input_shape))}) as seen at fit "
            f"time, got {tuple(x.shape)}"
        )
    # a NaN or inf anywhere makes the sum non-finite: one cheap reduction in the common case,
    # the element-wise check only when the sum is not finite (it may also just overflow)
    if x.numel() and not torch.isfinite(x.sum()) and not torch.isfinite(x).all():
        raise ValueError(f"expected finite values in {what}, got NaN or inf")
    if dtype is not None and x.dtype != dtype:
        x = x.to(dtype)
    return x


def check_labels(y: object, batch_size: int) -> Tensor:
    """Validate a batch of class labels of length ``batch_size`` and return them as int64.

    Integer labels of any dtype are taken as they are; floating point labels are taken when
    every value is a whole number (pytorch-ood's own tests fit on ``torch.zeros(n)``), so
    ``1.0`` is class 1 and ``-1.0`` a known anomaly, while ``0.5`` or NaN is refused.

    :raises ValueError: for labels that are not a 1-d tensor of ``batch_size`` whole numbers
    """
    if not isinstance(y, Tensor):
        y = torch.as_tensor(y)
    if y.dtype == torch.bool or y.is_complex() or y.dim() != 1:
        raise ValueError(
            f"expected integer class labels of shape ({batch_size},), got dtype {y.dtype} and "
            f"shape {tuple(y.shape)}"
        )
    if len(y) != batch_size:
        raise ValueError(f"expected {batch_size} labels for {batch_size} inputs, got {len(y)}")
    if y.dtype.is_floating_point:
        whole = torch.isfinite(y) & (y == torch.round(y))
        if not bool(whole.all()):
            bad = y[~whole][0].item()
            raise ValueError(
                f"expected class labels that are whole numbers (integer or integral float "
                f"tensors), got {bad!r} in a {y.dtype} tensor"
            )
    return y.long()


def known_rows(y: Tensor, use_known: bool | None, who: str) -> Tensor:
    """The rows of ``y`` a detector fits on, by the rule every detector here shares.

    Labels ``>= 0`` are in-distribution classes and always used. Labels ``< 0`` mark known
    anomalies: a detector built with ``known_anomalies=True`` (the semi-supervised option of
    A3, ConfoundingGradients and R2AD2) trains on them; otherwise (the default, and always for
    a detector without the option, ``use_known=None``) they are dropped with a warning, as
    pytorch-ood's built-in detectors fit on ID rows only.

    :return: a boolean mask of the rows to keep
    """
    keep = y >= 0
    if use_known:
        return torch.ones_like(keep)
    if not bool(keep.all()):
        hint = (
            ""
            if use_known is None
            else " (pass known_anomalies=True to train on them as known anomalies)"
        )
        warnings.warn(
            f"{who} is fitted on in-distribution data only; ignoring {int((~keep).sum())} "
            f"samples with labels < 0{hint}",
            stacklevel=3,
        )
    return keep


def check_label_range(y: Tensor, num_classes: int, who: str) -> None:
    """Require class labels below the model's ``num_classes`` outputs (negatives allowed)."""
    if len(y) and int(y.max()) >= num_classes:
        raise ValueError(
            f"{who}: expected class labels in [0, {num_classes}) to match the model's "
            f"{num_classes} outputs (labels < 0 mark known anomalies), got label {int(y.max())}"
        )


def split_known(
    x_list: list[Tensor], y: Tensor, who: str, use_known: bool | None = None
) -> tuple[list[Tensor], Tensor]:
    """The rows of ``x_list`` and ``y`` that :func:`known_rows` keeps."""
    keep = known_rows(y, use_known, who)
    if not bool(keep.all()):
        x_list = [t[keep.to(t.device)] for t in x_list]
        y = y[keep]
    return x_list, y


def check_classes(y: Tensor, num_classes: int, who: str) -> None:
    """Require labels in ``[0, num_classes)`` with every class present."""
    if len(y) == 0:
        raise ValueError(f"{who}: expected in-distribution samples with labels >= 0, got none")
    if int(y.max()) >= num_classes:
        raise ValueError(
            f"{who}: expected class labels in [0, {num_classes}) to match the model's "
            f"{num_classes} outputs, got label {int(y.max())}"
        )
    counts = torch.bincount(y, minlength=num_classes)
    if (counts == 0).any():
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(
            f"{who}: expected training samples for every class 0..{num_classes - 1}, "
            f"got none for class(es) {missing}"
        )


def model_outputs(model: nn.Module, x: Tensor) -> int:
    """Number of outputs (classes) of ``model`` for a probe batch ``x``."""
    with torch.no_grad(), eval_mode(model):
        out = first_output(model(x[:1]))
    if not isinstance(out, Tensor) or out.dim() != 2:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"expected the model to return logits of shape (B, classes), got {got}")
    return int(out.shape[1])


# ------------------------------------------------------------------ metadata
def classification_info(paper: Paper) -> DetectorInfo:
    """The ``info`` of a detector of this package: ``paper``, classification, AI-coded."""
    return DetectorInfo(paper=paper, tasks={Task.CLASSIFICATION}, ai_coded=True)


# ------------------------------------------------------------------ the mixin
class UniadDetector:
    """Mixin for the detectors of this package, in front of pytorch-ood's ``Detector`` bases."""

    #: every hyperparameter (constructor argument stored under its own name) and its check;
    #: ``hyperparameter_space`` (what GridSearch may tune) is a subset
    hyperparameters: ClassVar[Mapping[str, Check]] = {}

    #: the attribute that holds the fitted state (``None`` before fitting)
    fitted_attribute: ClassVar[str] = ""

    model: nn.Module | None

    if TYPE_CHECKING:
        # what the mixin reads from the detector (its representation and structured scores)
        # and from pytorch-ood's Detector behind it (the device of the detector's own state);
        # declared for the type checker only, so that nothing here shadows them at run time

        @property
        def device(self) -> torch.device | None: ...

        def extract(self, x: Tensor) -> tuple[Any, ...]: ...

        def predict_structured(self, *args: Any, **kwargs: Any) -> Tensor: ...

    # -- hyperparameters -----------------------------------------------------------------------
    def _check_hyperparameters(self) -> None:
        """Validate and normalise every declared hyperparameter, then :meth:`_derive`.

        Called by ``__init__`` and at the start of every fit, so that values set later (e.g.
        with ``set_hyperparameters``) are checked where they take effect.

        :raises ValueError: for an invalid value (the message names the parameter)
        :raises TypeError: for a value of the wrong type (the message names the parameter)
        """
        for name, check in self.hyperparameters.items():
            setattr(self, name, check(name, getattr(self, name)))
        self._derive()

    def _init_hyperparameters(self, values: Mapping[str, Any]) -> None:
        """Store every declared hyperparameter from ``values`` (the constructor's ``locals()``)
        and check them all."""
        for name in self.hyperparameters:
            setattr(self, name, values[name])
        self._check_hyperparameters()

    def _derive(self) -> None:
        """Check relations between hyperparameters and compute derived values (override)."""

    def set_hyperparameters(self, **params: Any) -> Any:
        """Set hyperparameters by name, as pytorch-ood's ``set_hyperparameters`` does, for every
        declared hyperparameter (:attr:`hyperparameters`), not only the few that
        ``hyperparameter_space`` offers :class:`~pytorch_ood.utils.GridSearch`. The values
        are checked at the next fit, where they take effect.

        :raises ValueError: for a name that is not a hyperparameter of the detector
        :return: self
        """
        known = set(self.hyperparameters) | set(getattr(self, "hyperparameter_space", {}))
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(
                f"expected hyperparameters of {type(self).__name__} ({', '.join(sorted(known))}), "
                f"got {', '.join(unknown)}"
            )
        for name, value in params.items():
            setattr(self, name, value)
        return self

    def all_hyperparameters(self) -> dict[str, Any]:
        """Every declared hyperparameter and its current value."""
        return {name: getattr(self, name) for name in self.hyperparameters}

    # -- model, fitted state, device, dtype -----------------------------------------------------
    def _set_model(self, model: Any, required: bool = False, **needs_model: Any) -> None:
        """Check and store the model; ``needs_model``: arguments that are useless without it.

        :raises TypeError: if ``model`` is neither ``None`` nor an ``nn.Module``
        :raises ModelNotSetException: if the model is ``None`` but ``required`` or one of
            ``needs_model`` is given
        """
        who = type(self).__name__
        if model is None and required:
            raise ModelNotSetException(f"{who} needs the target model, got None")
        if model is not None and not isinstance(model, nn.Module):
            raise TypeError(f"expected model to be a torch.nn.Module, got {type(model).__name__}")
        for name, value in needs_model.items():
            if value is not None and model is None:
                raise ModelNotSetException(f"{name} were given but model is None")
        self.model = model

    def _require_fitted(self) -> None:
        """:raises RequiresFittingException: before fitting"""
        if getattr(self, self.fitted_attribute) is None:
            raise RequiresFittingException(
                f"{type(self).__name__} must be fitted with fit(loader) or fit_structured(...) "
                "first"
            )

    def predict(self, x: Tensor) -> Tensor:
        """Outlier scores of shape ``(B,)``; larger is more anomalous.

        Equal to ``predict_structured(*extract(x))``.

        :param x: model inputs of the shape seen at fit time
        :raises RequiresFittingException: before fitting
        :raises ValueError: for a wrong shape or NaN/inf values
        """
        self._require_fitted()
        return self.predict_structured(*self.extract(x))

    def _require_model(self) -> nn.Module:
        if self.model is None:
            raise ModelNotSetException
        return self.model

    def _target_device(self) -> torch.device:
        dev = self.device  # pytorch-ood's Detector.device: that of the detector's own state
        return torch.device(dev) if dev is not None else torch.device("cpu")

    def _model_dtype(self) -> torch.dtype:
        return model_dtype(self.model)

    # -- data ----------------------------------------------------------------------------------
    def _iter_batches(self, data_loader: Iterable) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield checked, non-empty ``(x, y)`` batches, ``x`` cast to the model's dtype.

        :raises TypeError: for batches that are not ``(x, y)`` or inputs that are not floating
            point tensors
        :raises ValueError: for NaN/inf inputs, bad labels, a changing input shape, or a loader
            without any sample (message contains "empty")
        """
        who = type(self).__name__
        dtype = self._model_dtype()
        input_shape = None
        seen = False
        for batch in data_loader:
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise TypeError(
                    f"{who}: expected the loader to yield (x, y) batches, got "
                    f"{type(batch).__name__}"
                )
            x = check_inputs(batch[0], input_shape, "x in the fit loader", dtype)
            y = check_labels(batch[1], len(x))
            if len(x) == 0:
                continue
            input_shape = tuple(x.shape[1:])
            seen = True
            yield x, y
        if not seen:
            raise ValueError(
                f"{who}: expected a non-empty loader (at least one sample), got an empty loader"
            )

    def _model_outputs(self, x: Tensor) -> int:
        """Number of outputs (classes) of the model for a probe batch ``x``."""
        return model_outputs(self._require_model(), x.to(self._target_device()))

    def _iter_classified_batches(
        self, data_loader: Iterable
    ) -> Iterator[tuple[Tensor, Tensor, int]]:
        """:meth:`_iter_batches` for a classifier: ``(x, y, num_classes)``, the number of model
        outputs probed on the first batch and every batch's labels checked against it."""
        num_classes = None
        for x, y in self._iter_batches(data_loader):
            if num_classes is None:
                num_classes = self._model_outputs(x)
            check_label_range(y, num_classes, type(self).__name__)
            yield x, y, num_classes

    # -- state dicts ---------------------------------------------------------------------------
    def _pack_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """The versioned state dict: format version, class name, hyperparameters, ``state``."""
        return {
            "format_version": STATE_FORMAT_VERSION,
            "detector": type(self).__name__,
            "hyperparameters": self.all_hyperparameters(),
            "state": state,
        }

    def _unpack_state(self, state: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """Check a state from :meth:`_pack_state` and return ``(hyperparameters, state)``.

        :raises ValueError: for a state of another detector or format version
        """
        who = type(self).__name__
        got_version = state.get("format_version") if isinstance(state, dict) else None
        got_who = state.get("detector") if isinstance(state, dict) else None
        if got_version != STATE_FORMAT_VERSION or got_who != who:
            raise ValueError(
                f"expected a {who} state dict of format version {STATE_FORMAT_VERSION} (from "
                f"{who}.state_dict()), got {type(state).__name__} of detector {got_who!r} and "
                f"format version {got_version!r}"
            )
        try:
            return dict(state["hyperparameters"]), dict(state["state"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"expected a complete {who} state dict, missing or bad {e}") from e

    def _restore_hyperparameters(self, hyperparameters: Mapping[str, Any]) -> None:
        """Set the declared hyperparameters found in a state (unknown names are ignored)."""
        for name, value in hyperparameters.items():
            if name in self.hyperparameters:
                setattr(self, name, value)
        self._check_hyperparameters()
