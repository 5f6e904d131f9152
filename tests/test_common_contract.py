"""pytorch-ood's own contract, in pytorch-ood's test style, for every registered detector.

The cases pytorch-ood's detector tests make with small models built in the test and a
24-sample loader (3 classes, batches of 6): float class labels (``torch.zeros(n)``), ``fit``
under ``torch.no_grad()``, a float64 model, a model that returns a tuple, rows with ``y < 0``,
a class missing from the fit data and few samples per class, ``GridSearch``-sized
hyperparameter spaces and the package's exports.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tests.detector_kwargs import FAST_KWARGS
from uniad_plugin._bridge import registered_detectors

NAMES = sorted(registered_detectors())

#: small budgets: these models and loaders are tiny
TINY = {
    "A3": {"epochs": 2},
    "R2AD2": {"epochs": 2, "snapshot_epochs": 1},
}


class ClassificationModel(nn.Module):
    """A two-layer classifier for 10 features, as pytorch-ood's test helpers build one;
    ``tuple_output=True`` returns ``(logits, features)``."""

    def __init__(self, num_outputs: int = 3, tuple_output: bool = False) -> None:
        super().__init__()
        self.layer1 = nn.Linear(10, 16)
        self.relu = nn.ReLU()
        self.classifier = nn.Linear(16, num_outputs)
        self.tuple_output = tuple_output

    def forward(self, x: torch.Tensor):
        h = self.relu(self.layer1(x))
        out = self.classifier(h)
        return (out, h) if self.tuple_output else out


def make(name: str, model: nn.Module, **extra):
    cls = registered_detectors()[name].load()
    return cls(model, **{**FAST_KWARGS.get(name, {}), **TINY.get(name, {}), **extra})


def loader(labels=None, n: int = 24, dtype=torch.float32) -> DataLoader:
    gen = torch.Generator().manual_seed(123)
    x = torch.randn(n, 10, generator=gen, dtype=dtype)
    y = torch.arange(n) % 3 if labels is None else labels
    return DataLoader(TensorDataset(x, y), batch_size=6)


def model(**kwargs) -> nn.Module:
    torch.manual_seed(0)
    return ClassificationModel(**kwargs).eval()


def assert_scores(det, x: torch.Tensor) -> torch.Tensor:
    scores = det(x)
    assert isinstance(scores, torch.Tensor) and scores.shape == (len(x),)
    assert torch.isfinite(scores).all()
    return scores


X_EVAL = torch.randn(8, 10, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("name", NAMES)
def test_float_labels_are_taken_as_classes(name):
    """pytorch-ood's Mahalanobis tests fit with ``torch.zeros``/``torch.ones`` labels."""
    labels = (torch.arange(24) % 3).float()
    as_float = make(name, model()).fit(loader(labels))
    as_int = make(name, model()).fit(loader(labels.long()))
    assert torch.equal(assert_scores(as_float, X_EVAL), as_int(X_EVAL))


@pytest.mark.parametrize("name", NAMES)
def test_all_zero_float_labels(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one class only: UniformDetector says so
        det = make(name, model()).fit(loader(torch.zeros(24)))
    assert_scores(det, X_EVAL)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", [0.5, float("nan")])
def test_fractional_float_labels_are_refused(name, bad):
    labels = (torch.arange(24) % 3).float()
    labels[7] = bad
    with pytest.raises(ValueError, match="whole numbers"):
        make(name, model()).fit(loader(labels))


@pytest.mark.parametrize("name", NAMES)
def test_fit_under_no_grad(name):
    with torch.no_grad():
        det = make(name, model()).fit(loader())
        inside = assert_scores(det, X_EVAL)
    reference = make(name, model()).fit(loader())
    assert torch.allclose(inside, reference(X_EVAL), atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_float64_model(name):
    det = make(name, model().double()).fit(loader(dtype=torch.float64))
    assert_scores(det, X_EVAL.double())
    assert_scores(det, X_EVAL)  # float32 inputs are cast to the model's precision


@pytest.mark.parametrize("name", NAMES)
def test_model_returning_a_tuple_is_scored_on_its_logits(name):
    """A model that returns ``(logits, features)`` behaves as the one returning the logits."""
    plain = make(name, model()).fit(loader())
    tupled = make(name, model(tuple_output=True)).fit(loader())
    assert torch.allclose(assert_scores(tupled, X_EVAL), plain(X_EVAL), atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_rows_with_negative_labels_are_ignored_by_default(name):
    """One rule for every detector: fit on the ID rows (y >= 0), as pytorch-ood's built-ins
    do; rows with y < 0 are dropped with a warning naming them."""
    labels = torch.arange(30) % 3
    labels[24:] = -1
    x = torch.randn(30, 10, generator=torch.Generator().manual_seed(123))
    x[24:] += 5.0  # the "anomalies" differ, so training on them would change the scores
    mixed = DataLoader(TensorDataset(x, labels), batch_size=6)
    id_only = DataLoader(TensorDataset(x[:24], labels[:24]), batch_size=6)
    with pytest.warns(UserWarning, match="ignoring 6 samples with labels < 0"):
        det = make(name, model()).fit(mixed)
    reference = make(name, model()).fit(id_only)
    assert torch.allclose(assert_scores(det, X_EVAL), reference(X_EVAL), atol=1e-5)


@pytest.mark.parametrize("name", [n for n in NAMES if n != "UniformDetector"])
def test_known_anomalies_are_used_only_when_asked(name):
    labels = torch.arange(30) % 3
    labels[24:] = -1
    x = torch.randn(30, 10, generator=torch.Generator().manual_seed(123))
    x[24:] += 5.0
    mixed = DataLoader(TensorDataset(x, labels), batch_size=6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is ignored
        semi = make(name, model(), known_anomalies=True).fit(mixed)
    with pytest.warns(UserWarning):
        plain = make(name, model()).fit(mixed)
    assert not torch.allclose(assert_scores(semi, X_EVAL), plain(X_EVAL))


@pytest.mark.parametrize("name", NAMES)
def test_class_missing_from_the_fit_data(name):
    labels = torch.arange(24) % 2  # the model has 3 outputs; class 2 has no sample
    if name == "UniformDetector":
        with pytest.warns(UserWarning, match=r"no ID samples of class\(es\) \[2\]"):
            det = make(name, model()).fit(loader(labels))
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            det = make(name, model()).fit(loader(labels))
    assert_scores(det, X_EVAL)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n", [24, 12])
def test_few_samples_per_class(name, n):
    """pytorch-ood's smoke loader: 24 samples (8 per class); and 4 per class."""
    det = make(name, model()).fit(loader(n=n))
    assert_scores(det, X_EVAL)


@pytest.mark.parametrize("name", NAMES)
def test_hyperparameter_space_is_affordable(name):
    """GridSearch refits once per combination: tens of fits, not thousands."""
    space = registered_detectors()[name].load().hyperparameter_space
    assert 2 <= math.prod(len(v) for v in space.values()) <= 50


@pytest.mark.parametrize("name", NAMES)
def test_every_detector_is_exported(name):
    import uniad_plugin
    import uniad_plugin.detectors

    cls = registered_detectors()[name].load()
    assert name in uniad_plugin.__all__ and getattr(uniad_plugin, name) is cls
    assert name in uniad_plugin.detectors.__all__
    assert getattr(uniad_plugin.detectors, name) is cls


@pytest.mark.parametrize("name", NAMES)
def test_two_samples_per_class_fit_with_a_clear_warning_or_quietly(name):
    """Six samples, two per class: nothing can be held out of a class without leaving one
    sample to fit on; UniformDetector standardises on the fitting samples and says so."""
    if name == "UniformDetector":
        with pytest.warns(UserWarning, match="standardised on the samples the spheres"):
            det = make(name, model()).fit(loader(n=6))
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            det = make(name, model()).fit(loader(n=6))
    assert_scores(det, X_EVAL)


def test_uniform_detector_needs_two_samples():
    with pytest.raises(ValueError, match="at least 2 ID samples"):
        make("UniformDetector", model()).fit(loader(n=1))


@pytest.mark.parametrize("name", [n for n in NAMES if n != "UniformDetector"])
def test_known_anomalies_survive_a_state_round_trip(name):
    import io

    det = make(name, model(), known_anomalies=True).fit(loader())
    buf = io.BytesIO()
    torch.save(det.state_dict(), buf)
    buf.seek(0)
    restored = make(name, model()).load_state_dict(torch.load(buf, weights_only=True))
    assert restored.known_anomalies is True
    assert torch.equal(det(X_EVAL), restored(X_EVAL))


@pytest.mark.parametrize("name", NAMES)
def test_set_hyperparameters_takes_every_declared_hyperparameter(name):
    """GridSearch's space is small; pytorch-ood's setter still reaches every hyperparameter."""
    det = make(name, model())
    declared = sorted(type(det).hyperparameters)
    det.set_hyperparameters(**{declared[0]: getattr(det, declared[0])})
    with pytest.raises(ValueError, match="expected hyperparameters of"):
        det.set_hyperparameters(bogus=1)
