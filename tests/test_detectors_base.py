"""What every detector shares: hyperparameter checks, input checks, batches, state dicts."""

from __future__ import annotations

import pytest
import torch
from pytorch_ood.api import Detector, ModelNotSetException
from torch.utils.data import DataLoader, TensorDataset

from uniad_plugin.detectors._base import (
    STATE_FORMAT_VERSION,
    UniadDetector,
    check_classes,
    check_inputs,
    check_label_range,
    check_labels,
    choice,
    flag,
    integer,
    positive_ints,
    real,
    split_known,
)


class Toy(UniadDetector, Detector):
    hyperparameter_space = {"k": [1, 2]}
    hyperparameters = {"k": integer(1), "mode": choice("a", "b")}

    def __init__(self, model=None, k=1, mode="a"):
        self.model, self.k, self.mode = model, k, mode
        self._check_hyperparameters()

    def _derive(self):
        self.double_k = 2 * self.k

    def fit(self, loader):
        self._check_hyperparameters()
        return self

    def predict(self, x):
        return x.sum(1)


@pytest.mark.parametrize(
    "check, good, bad, exc",
    [
        (integer(1), [1, 3.0], [0, -1], ValueError),
        (integer(1), [], ["3", 2.5, True, float("nan"), float("inf")], TypeError),
        (integer(0, optional=True), [None, 0], [-1], ValueError),
        (real(0.0, 1.0), [0.5], [0.0, 1.0, float("nan")], ValueError),
        (real(0.0, 1.0, low_open=False, high_open=False), [0.0, 1.0], [1.1], ValueError),
        (real(0.0), [], ["x", None, True], TypeError),
        (choice("a", None), ["a", None], ["b", 0], ValueError),
        (flag(), [True, False], [1, "yes", None], TypeError),
        (positive_ints(2), [(1, 2), [3, 4, 5]], [(1,), (0, 1), (1.5, 2)], ValueError),
        (positive_ints(), [], ["12", 3], TypeError),
    ],
)
def test_checks_accept_good_values_and_name_the_parameter(check, good, bad, exc):
    for value in good:
        check("p", value)
    for value in bad:
        with pytest.raises(exc, match="expected p"):
            check("p", value)


def test_set_hyperparameters_is_checked_at_fit_and_derived_values_recomputed():
    det = Toy()
    assert det.double_k == 2
    det.set_hyperparameters(k=3).fit(None)
    assert det.k == 3 and det.double_k == 6
    det.set_hyperparameters(k=0)  # pytorch-ood's setter does not check ...
    with pytest.raises(ValueError, match="expected k"):
        det.fit(None)  # ... fit does
    with pytest.raises(ValueError, match="expected mode"):
        Toy(mode="c")
    assert det.all_hyperparameters() == {"k": 0, "mode": "a"}


def test_model_checks_and_batches():
    det = Toy()
    with pytest.raises(ModelNotSetException):
        det._require_model()
    det.model = torch.nn.Linear(2, 2).double()
    x = torch.rand(5, 2)
    batches = list(det._iter_batches(DataLoader(TensorDataset(x, torch.zeros(5).long()), 2)))
    assert [len(b[0]) for b in batches] == [2, 2, 1]
    assert batches[0][0].dtype == torch.float64  # cast to the model's dtype
    with pytest.raises(ValueError, match="empty"):
        list(det._iter_batches([(x[:0], torch.zeros(0).long())]))
    with pytest.raises(TypeError, match=r"\(x, y\)"):
        list(det._iter_batches([x]))
    with pytest.raises(ValueError, match="shape"):
        list(det._iter_batches([(x, torch.zeros(5).long()), (torch.rand(2, 3), torch.zeros(2))]))


def test_input_and_label_checks():
    assert check_inputs(torch.rand(2, 3), (3,), dtype=torch.float64).dtype == torch.float64
    with pytest.raises(TypeError, match="floating"):
        check_inputs(torch.ones(2, 3, dtype=torch.long), None)
    with pytest.raises(ValueError, match="finite"):
        check_inputs(torch.tensor([[float("nan")]]), None)
    with pytest.raises(ValueError, match="shape"):
        check_inputs(torch.rand(2, 4), (3,))
    assert check_labels([0, 1], 2).dtype == torch.long
    with pytest.raises(ValueError, match="integer"):
        check_labels(torch.rand(2), 2)
    with pytest.raises(ValueError, match="labels"):
        check_labels(torch.zeros(3).long(), 2)
    with pytest.raises(ValueError, match="outputs"):
        check_label_range(torch.tensor([0, 5]), 3, "T")
    with pytest.warns(UserWarning, match="ignoring 1"):
        (z,), y = split_known([torch.arange(3)], torch.tensor([0, -1, 1]), "T")
    assert z.tolist() == [0, 2] and y.tolist() == [0, 1]
    with pytest.raises(ValueError, match=r"class\(es\) \[1\]"):
        check_classes(torch.tensor([0, 2]), 3, "T")


def test_state_layout_and_version():
    det = Toy(k=2)
    packed = det._pack_state({"w": torch.ones(2)})
    assert packed["format_version"] == STATE_FORMAT_VERSION and packed["detector"] == "Toy"
    hyper, state = det._unpack_state(packed)
    assert hyper == {"k": 2, "mode": "a"} and torch.equal(state["w"], torch.ones(2))
    with pytest.raises(ValueError, match=r"expected a Toy state dict of format version 2"):
        det._unpack_state({**packed, "format_version": 3})
    with pytest.raises(ValueError, match=r"got dict of detector 'Other'"):
        det._unpack_state({**packed, "detector": "Other"})
    with pytest.raises(ValueError, match=r"format version None"):
        det._unpack_state({"version": 1, "detector": "Toy", "config": {"k": 3}, "w": 1})
    det._restore_hyperparameters({"k": 5, "unknown": 1})
    assert det.k == 5 and det.double_k == 10
