"""The common detector suite: every detector registered in ``pytorch_ood.detectors``.

Like scikit-learn's estimator checks: one set of contract tests, parametrised over every
registered detector, so a new detector joins by registering.
"""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
import torch
from pytorch_ood.api import Detector, RequiresFittingException, Task
from pytorch_ood.metrics import OODMetrics
from torch.utils.data import DataLoader, TensorDataset

from tests.detector_kwargs import FAST_KWARGS, VALID_SETTINGS
from uniad_plugin._bridge import registered_detectors
from uniad_plugin.models import digits_cnn

NAMES = sorted(registered_detectors())


def make(name: str, model, **extra):
    cls = registered_detectors()[name].load()
    return cls(model, **{**FAST_KWARGS.get(name, {}), **extra})


def scores_of(det, x):
    with torch.no_grad():
        return det(x).detach().cpu()


@pytest.fixture(scope="module")
def fitted(digits, digits_model):
    cache = {}

    def get(name):
        if name not in cache:
            loader = DataLoader(digits.train, batch_size=128)
            cache[name] = make(name, digits_model).fit(loader)
        return cache[name]

    return get


def test_at_least_the_uniform_detector_is_registered():
    assert "UniformDetector" in NAMES


@pytest.mark.parametrize("name", NAMES)
def test_metadata(name):
    cls = registered_detectors()[name].load()
    assert issubclass(cls, Detector)
    assert cls.requires_fit is True
    assert cls.info is not None and cls.info.ai_coded is True
    assert Task.CLASSIFICATION in cls.info.tasks
    assert cls.info.paper is not None and cls.info.paper.url.startswith("https://")
    assert isinstance(cls.hyperparameter_space, dict) and cls.hyperparameter_space


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_importable_from_pytorch_ood_in_fresh_interpreter(name):
    code = (
        "import sys\n"
        f"from pytorch_ood.detector import {name}\n"
        "import pytorch_ood.detector as d\n"
        f"assert {name}.__module__.startswith('uniad_plugin'), {name}.__module__\n"
        f"assert '{name}' in dir(d)\n"
        f"assert getattr(d, '{name}') is {name}\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("name", NAMES)
def test_predict_before_fit_raises(name, digits_model, digits):
    det = make(name, digits_model)
    with pytest.raises(RequiresFittingException):
        det(digits.test.tensors[0][:4])


@pytest.mark.parametrize("name", NAMES)
def test_scores_shape_and_separation(name, fitted, digits):
    det = fitted(name)
    x = digits.test.tensors[0]
    s_id = scores_of(det, x)
    assert s_id.shape == (len(x),) and s_id.dtype.is_floating_point
    assert torch.isfinite(s_id).all()
    noise = torch.rand((300, *x.shape[1:]), generator=torch.Generator().manual_seed(7))
    s_ood = scores_of(det, noise)
    metrics = OODMetrics()
    labels = torch.cat([torch.zeros(len(s_id)), -torch.ones(len(s_ood))]).long()
    metrics.update(torch.cat([s_id, s_ood]), labels)
    auroc = metrics.compute()["AUROC"]
    assert auroc > 0.9, f"{name} should separate uniform noise from digits, AUROC {auroc:.3f}"


@pytest.mark.parametrize("name", NAMES)
def test_batch_of_one_and_empty_batch(name, fitted, digits):
    det = fitted(name)
    x = digits.test.tensors[0]
    one = scores_of(det, x[:1])
    assert one.shape == (1,)
    assert torch.allclose(one, scores_of(det, x[:8])[:1], atol=1e-4)
    try:
        empty = scores_of(det, x[:0])
    except ValueError as e:
        assert "empty" in str(e) or "expected" in str(e)
    else:
        assert empty.shape == (0,)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "bad, exc",
    [
        (lambda x: x.clone().index_fill_(0, torch.tensor([1]), float("nan")), ValueError),
        (lambda x: x.clone().index_fill_(0, torch.tensor([0]), float("inf")), ValueError),
        (lambda x: x[:, :, :4, :4], ValueError),  # wrong spatial shape
        (lambda x: x.squeeze(1), ValueError),  # missing channel axis
        (lambda x: (x * 255).to(torch.uint8), TypeError),  # wrong dtype
        (lambda x: x.numpy(), TypeError),  # not a tensor
    ],
    ids=["nan", "inf", "shape", "ndim", "dtype", "numpy"],
)
def test_bad_inputs_raise_clear_errors(name, fitted, digits, bad, exc):
    det = fitted(name)
    with pytest.raises(exc, match="expected"):
        det(bad(digits.test.tensors[0][:8]))


@pytest.mark.parametrize("name", NAMES)
def test_huge_values_give_finite_scores(name, fitted, digits):
    det = fitted(name)
    s = scores_of(det, digits.test.tensors[0][:8] * 1e6)
    assert s.shape == (8,) and torch.isfinite(s).all()


@pytest.mark.parametrize("name", NAMES)
def test_fit_errors(name, digits_model, digits):
    x, y = digits.train.tensors
    with pytest.raises(ValueError, match="empty"):
        make(name, digits_model).fit(DataLoader(TensorDataset(x[:0], y[:0]), batch_size=8))
    bad = x.clone()
    bad[3] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        make(name, digits_model).fit(DataLoader(TensorDataset(bad, y), batch_size=64))
    with pytest.raises(ValueError, match="expected"):
        y_bad = y.clone()
        y_bad[0] = 10  # the model has 10 outputs
        make(name, digits_model).fit(DataLoader(TensorDataset(x, y_bad), batch_size=256))


@pytest.mark.parametrize("name", NAMES)
def test_all_one_class_is_refused_or_handled(name, digits_model, digits):
    x, y = digits.train.tensors
    keep = y == 3
    det = make(name, digits_model)
    try:
        det.fit(DataLoader(TensorDataset(x[keep], y[keep]), batch_size=64))
    except ValueError as e:
        assert "class" in str(e)
    else:
        assert torch.isfinite(scores_of(det, x[:8])).all()


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_under_seed(name, fitted, digits_model, digits):
    loader = DataLoader(digits.train, batch_size=128)
    again = make(name, digits_model).fit(loader)
    x = digits.test.tensors[0][:64]
    assert torch.allclose(scores_of(fitted(name), x), scores_of(again, x), atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_state_round_trip_weights_only(name, fitted, digits_model, digits):
    det = fitted(name)
    buf = io.BytesIO()
    torch.save(det.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    restored = make(name, digits_model).load_state_dict(state)
    x = digits.test.tensors[0][:64]
    assert torch.equal(scores_of(det, x), scores_of(restored, x))


@pytest.mark.parametrize("name", NAMES)
def test_state_for_another_model_is_refused(name, fitted):
    other = digits_cnn(num_classes=7).eval()
    with pytest.raises(ValueError, match="expected|fitted|model"):
        make(name, other).load_state_dict(fitted(name).state_dict())
    with pytest.raises(ValueError):
        make(name, other).load_state_dict({"version": -1})


@pytest.mark.parametrize("name", NAMES)
def test_device_moves(name, fitted, digits):
    det = fitted(name)
    x = digits.test.tensors[0][:16]
    before = scores_of(det, x)
    assert det.to("cpu") is det
    assert torch.equal(before, scores_of(det, x))
    if torch.cuda.is_available():
        det.to("cuda")
        assert torch.allclose(before, scores_of(det, x.cuda()), atol=1e-4)
        det.to("cpu")


@pytest.mark.parametrize("name", NAMES)
def test_model_is_not_modified(name, digits_model, digits):
    before = {k: v.clone() for k, v in digits_model.state_dict().items()}
    flags = [p.requires_grad for p in digits_model.parameters()]
    digits_model.train()
    try:
        det = make(name, digits_model).fit(DataLoader(digits.train, batch_size=128))
        det(digits.test.tensors[0][:8])
        assert digits_model.training, "the model's training mode must be restored"
    finally:
        digits_model.eval()
    after = digits_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert flags == [p.requires_grad for p in digits_model.parameters()]


@pytest.mark.parametrize("name", NAMES)
def test_hyperparameters_round_trip(name, digits_model):
    det = make(name, digits_model)
    params = det.get_hyperparameters()
    assert set(params) == set(det.hyperparameter_space)
    first = {k: v[0] for k, v in det.hyperparameter_space.items()}
    det.set_hyperparameters(**first)
    assert det.get_hyperparameters() == first


def _declared(name: str) -> list[str]:
    cls = registered_detectors()[name].load()
    return sorted(set(getattr(cls, "hyperparameters", {})) | set(cls.hyperparameter_space))


@pytest.mark.parametrize(
    "name, param, value",
    [
        (n, p, v)
        for n in NAMES
        for p in _declared(n)
        for v in (
            ["bogus", -1]
            if p in registered_detectors()[n].load().hyperparameter_space
            else ["bogus"]
        )
    ],
)
def test_invalid_hyperparameter_set_later_is_refused_at_fit(
    name, param, value, digits_model, digits
):
    """pytorch-ood's set_hyperparameters (used by GridSearch) assigns without checks; fit
    checks every hyperparameter where it takes effect and names the bad one."""
    det = make(name, digits_model)
    if param in det.hyperparameter_space:
        det.set_hyperparameters(**{param: value})
    else:
        setattr(det, param, value)
    with pytest.raises((ValueError, TypeError), match=param):
        det.fit(DataLoader(digits.train, batch_size=128))


@pytest.mark.parametrize("name", NAMES)
def test_valid_hyperparameters_set_later_take_effect(name, digits_model, digits):
    space = make(name, digits_model).hyperparameter_space
    settings = VALID_SETTINGS.get(name)
    if settings is None:
        key, values = next(iter(space.items()))
        settings = {key: values[-1]}
    x, y = digits.train.tensors
    loader = DataLoader(TensorDataset(x[:300], y[:300]), batch_size=128)
    tuned = make(name, digits_model).set_hyperparameters(
        **{k: v for k, v in settings.items() if k in space}
    )
    for k, v in settings.items():
        setattr(tuned, k, v)
    tuned.fit(loader)
    direct = make(name, digits_model, **settings).fit(loader)
    default = make(name, digits_model).fit(loader)
    x_test = digits.test.tensors[0][:64]
    assert tuned.get_hyperparameters() == direct.get_hyperparameters()
    assert torch.equal(scores_of(tuned, x_test), scores_of(direct, x_test))
    assert not torch.equal(scores_of(tuned, x_test), scores_of(default, x_test))


@pytest.mark.parametrize("name", NAMES)
def test_shared_names(name, fitted, digits):
    """The same things have the same names: num_classes, extract, the structured pair."""
    det = fitted(name)
    assert det.num_classes == 10
    x = digits.test.tensors[0][:8]
    with torch.no_grad():
        assert torch.allclose(det.predict_structured(*det.extract(x)), det(x), atol=1e-5)


_DTYPES = [torch.float32, torch.float64, torch.float16, torch.int64, torch.uint8, torch.bool]
_FILLS = [0.0, 1.0, 0.5, -3.0, 1e30, -1e30, float("nan"), float("inf")]


@pytest.mark.parametrize("name", NAMES)
def test_hostile_inputs_get_clear_error_or_correct_answer(name, fitted, digits):
    """Hypothesis: any batch size, shape, dtype and fill value either scores (shape (B,), no
    NaN) or raises TypeError/ValueError whose message says what was expected."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    det = fitted(name)
    good_shape = tuple(digits.test.tensors[0].shape[1:])
    shapes = st.one_of(
        st.just(good_shape),
        st.lists(st.integers(1, 9), min_size=0, max_size=4).map(tuple),
    )

    @settings(
        max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
    )
    @given(
        batch=st.integers(0, 4),
        shape=shapes,
        dtype=st.sampled_from(_DTYPES),
        fill=st.sampled_from(_FILLS),
    )
    def check(batch, shape, dtype, fill):
        base = torch.rand((batch, *shape), generator=torch.Generator().manual_seed(0))
        if dtype.is_floating_point:
            x = (base * fill if fill not in (0.0,) else base * 0).to(dtype)
            if fill != fill or fill in (float("inf"),):
                x = torch.full((batch, *shape), fill).to(dtype)
        else:
            x = (base * 255).to(dtype)
        try:
            s = det(x)
        except (TypeError, ValueError) as e:
            assert "expected" in str(e), f"unclear message: {e}"
        else:
            assert isinstance(s, torch.Tensor) and s.shape == (batch,)
            assert not torch.isnan(s).any()

    check()
