"""UniformDetector: detection quality on digits, layer selection, errors, structured API."""

from __future__ import annotations

import warnings

import foolbox as fb
import pytest
import torch
import torchvision
from pytorch_ood.metrics import OODMetrics
from pytorch_ood.model import WideResNet
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tests.tiny_models import TinyResNet, tiny_vit
from uniad_plugin.detectors.uniform import UniformDetector
from uniad_plugin.models import lenet
from uniad_plugin.nn.rivals import log_contrast, ranked_classes
from uniad_plugin.nn.sampling import bounded_rows, content_keys, position_keys


def auroc(s_id: torch.Tensor, s_ood: torch.Tensor) -> float:
    m = OODMetrics()
    labels = torch.cat([torch.zeros(len(s_id)), -torch.ones(len(s_ood))]).long()
    m.update(torch.cat([s_id, s_ood]), labels)
    return m.compute()["AUROC"]


@pytest.fixture(scope="module")
def detector(digits, digits_model):
    return UniformDetector(digits_model, seed=0).fit(DataLoader(digits.train, batch_size=128))


def test_separates_gaussian_noise(detector, digits):
    x = digits.test.tensors[0]
    g = torch.Generator().manual_seed(1)
    noise = (0.5 + 0.5 * torch.randn((400, *x.shape[1:]), generator=g)).clamp(0, 1)
    assert auroc(detector(x), detector(noise)) > 0.97


def test_separates_fgsm_adversarials(detector, digits, digits_model):
    x_att, y_att = digits.attack.tensors
    fmodel = fb.PyTorchModel(digits_model.eval(), bounds=(0, 1))
    _, adv, success = fb.attacks.FGSM()(fmodel, x_att, y_att, epsilons=0.1)
    correct = digits_model(x_att).argmax(1) == y_att
    adv = adv[success & correct]
    assert len(adv) > 30, "the attack should succeed on a good share of the attack split"
    assert auroc(detector(digits.test.tensors[0]), detector(adv)) > 0.9


@pytest.mark.slow
def test_multi_layer_default_beats_penultimate_only_on_adversarials(digits, digits_model):
    """The design choice documented in the class: several layers detect AD better."""
    x_att, y_att = digits.attack.tensors
    fmodel = fb.PyTorchModel(digits_model.eval(), bounds=(0, 1))
    _, adv, success = fb.attacks.LinfPGD()(fmodel, x_att, y_att, epsilons=0.1)
    adv = adv[success]
    loader = DataLoader(digits.train, batch_size=128)
    multi = UniformDetector(digits_model).fit(loader)
    penultimate = UniformDetector(digits_model, layers=["8:input"]).fit(loader)
    x = digits.test.tensors[0]
    assert auroc(multi(x), multi(adv)) > auroc(penultimate(x), penultimate(adv)) + 0.03


def test_default_layers_are_reported(detector):
    assert detector.layers_ == ["3", "4", "8:input", "log_softmax", "softmax"]


def test_layers_by_name_and_module(digits, digits_model):
    loader = DataLoader(digits.train, batch_size=256)
    by_name = UniformDetector(digits_model, layers=["4", "8:input"]).fit(loader)
    by_module = UniformDetector(digits_model, layers=[digits_model[4], "8:input"])
    by_module.fit(loader)
    x = digits.test.tensors[0][:32]
    assert torch.equal(by_name(x), by_module(x))


@pytest.mark.parametrize("layers", [["nope"], ["8:input", "conv9"], []])
def test_unknown_layer_is_refused(digits_model, layers):
    with pytest.raises(ValueError, match="expected"):
        UniformDetector(digits_model, layers=layers)


def test_class_without_samples_gets_a_pooled_sphere_with_a_warning(digits, digits_model):
    """A class the fit data lacks is named, and inputs the model assigns to it are scored
    against a sphere of all classes' samples pooled (not an error, not a blind spot)."""
    x, y = digits.train.tensors
    keep = y != 7
    with pytest.warns(UserWarning, match=r"no ID samples of class\(es\) \[7\]"):
        det = UniformDetector(digits_model).fit(
            DataLoader(TensorDataset(x[keep], y[keep]), batch_size=256)
        )
    sevens = digits.test.tensors[0][digits.test.tensors[1] == 7]
    with torch.no_grad():
        scores = det(sevens)
        others = det(digits.test.tensors[0][digits.test.tensors[1] != 7])
    assert torch.isfinite(scores).all()
    # the sevens were never seen: they score above the ID test digits on the whole
    assert float(scores.median()) > float(others.median())


def test_known_anomalies_are_ignored_with_warning(digits, digits_model):
    x, y = digits.train.tensors
    noise = torch.rand(50, *x.shape[1:], generator=torch.Generator().manual_seed(0))
    # the ID samples come in the same batches as in the plain loader, with anomalies mixed in
    plain_batches = list(zip(x.split(128), y.split(128), strict=True))
    mixed = [
        (torch.cat([xb, nb]), torch.cat([yb, -torch.ones(len(nb), dtype=torch.long)]))
        for (xb, yb), nb in zip(plain_batches, noise.split(8), strict=False)
    ]
    mixed += plain_batches[len(mixed) :]
    with pytest.warns(UserWarning, match="ignoring 50 samples"):
        with_anomalies = UniformDetector(digits_model).fit(mixed)
    plain = UniformDetector(digits_model).fit(plain_batches)
    xt = digits.test.tensors[0][:32]
    assert torch.equal(with_anomalies(xt), plain(xt))


def test_structured_api_matches_predict(detector, digits):
    x = digits.test.tensors[0][:64]
    feats, logits = detector.extract(x)
    assert torch.allclose(detector.predict_structured(feats, logits), detector(x), atol=1e-5)
    with pytest.raises(ValueError, match="expected 5 layers"):
        detector.predict_structured(feats[:2], logits)
    with pytest.raises(ValueError, match="features for layer"):
        detector.predict_structured([f[:, :3] for f in feats], logits)
    with pytest.raises(ValueError, match="expected logits of 10 classes"):
        detector.predict_structured(feats, logits[:, :7])
    with pytest.raises(ValueError, match="expected 64 logits"):
        detector.predict_structured(feats, logits[:10])


def test_float64_model_fits_and_loads(digits, digits_model):
    import copy

    model = copy.deepcopy(digits_model).double()
    loader = DataLoader(digits.train, batch_size=256)
    det = UniformDetector(model).fit(loader)
    x = digits.test.tensors[0][:16]
    restored = UniformDetector(model).load_state_dict(det.state_dict())
    assert torch.equal(det(x), restored(x))


def test_fit_structured_matches_fit(digits, digits_model):
    loader = DataLoader(digits.train, batch_size=128)
    det = UniformDetector(digits_model).fit(loader)
    x, y = digits.train.tensors
    other = UniformDetector(digits_model, layers=det.layers_)
    # extracted in the loader's batches, so that both fits see bit-identical activations
    parts = [other.extract(xb) for xb in x.split(128)]
    feats = [torch.cat([p[0][i] for p in parts]) for i in range(len(parts[0][0]))]
    logits = torch.cat([p[1] for p in parts])
    other.fit_structured(feats, y, logits, num_classes=10)
    xt = digits.test.tensors[0][:64]
    assert torch.allclose(det(xt), other(xt), atol=1e-4)


def test_layer_scores_sum_to_prediction(detector, digits):
    x = digits.test.tensors[0][:16]
    per_layer = detector.layer_scores(x)
    assert per_layer.shape == (16, len(detector.score_names))
    assert detector.score_names[: len(detector.layers_)] == detector.layers_
    assert torch.allclose(per_layer.sum(1), detector(x), atol=1e-5)


def _random_loader(shape, n_classes, n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, *shape), generator=g)
    y = torch.arange(n) % n_classes
    return DataLoader(TensorDataset(x, y), batch_size=32)


@pytest.mark.parametrize(
    "factory, shape, expected",
    [
        (
            lambda: lenet(num_classes=4),
            (1, 28, 28),
            ["1", "4", "5", "11:input", "log_softmax", "softmax"],
        ),
        pytest.param(
            lambda: torchvision.models.resnet18(num_classes=4),
            (3, 64, 64),
            ["layer1", "layer2", "layer3", "layer4", "fc:input", "log_softmax", "softmax"],
            marks=pytest.mark.slow,
        ),
        (
            lambda: WideResNet(num_classes=4, depth=10, widen_factor=1),
            (3, 32, 32),
            ["block1", "block2", "relu", "fc:input", "log_softmax", "softmax"],
        ),
        (
            lambda: nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4)),
            (3, 4),
            ["1:input", "3:input", "log_softmax", "softmax"],
        ),
    ],
    ids=["lenet", "resnet18", "wideresnet", "mlp"],
)
def test_defaults_work_on_common_architectures(factory, shape, expected):
    torch.manual_seed(0)
    model = factory().eval()
    det = UniformDetector(model).fit(_random_loader(shape, 4))
    assert det.layers_ == expected
    scores = det(torch.rand((5, *shape)))
    assert scores.shape == (5,) and torch.isfinite(scores).all()


@pytest.mark.parametrize(
    "factory, expected",
    [
        (tiny_vit, [f"encoder.layers.encoder_layer_{i}" for i in range(4)] + ["heads.head:input"]),
        (TinyResNet, ["layer1", "layer2", "layer3", "fc:input"]),
    ],
    ids=["vit", "resnet"],
)
def test_fits_and_predicts_with_default_layers_of_a_vit_and_a_resnet(factory, expected):
    """The default layers of token models and BatchNorm/residual CNNs are usable."""
    torch.manual_seed(0)
    model = factory().eval()
    det = UniformDetector(model).fit(_random_loader((3, 16, 16), 10, n=300))
    assert det.layers_ == [*expected, "log_softmax", "softmax"]
    scores = det(torch.rand(7, 3, 16, 16))
    assert scores.shape == (7,) and torch.isfinite(scores).all()


def test_few_samples_per_class_still_fit(digits, digits_model):
    """Five samples per class: one of each is held out for the standardisation. One per class:
    too few to hold any out, so the scores are standardised on the fitting samples, and the
    warning says so."""
    x, y = digits.train.tensors
    for n in (5, 1):
        few = torch.cat([torch.nonzero(y == k).flatten()[:n] for k in range(10)])
        det = UniformDetector(digits_model)
        loader = DataLoader(TensorDataset(x[few], y[few]), batch_size=64)
        if n == 1:
            with pytest.warns(UserWarning, match="standardised on the samples the spheres"):
                det.fit(loader)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                det.fit(loader)
        with torch.no_grad():
            assert torch.isfinite(det(digits.test.tensors[0][:8])).all()


def _gathered(parts):
    """The shards' collected dicts joined as a distributed fit joins them: tensors
    concatenated along dim 0 (lists element-wise), other values equal across shards."""
    joined = {}
    for key, first in parts[0].items():
        values = [p[key] for p in parts]
        if isinstance(first, torch.Tensor):
            joined[key] = torch.cat(values)
        elif isinstance(first, list) and isinstance(first[0], torch.Tensor):
            joined[key] = [torch.cat(v) for v in zip(*values)]
        else:
            assert all(v == first for v in values)
            joined[key] = first
    return joined


def _states_equal(a, b):
    """The fitted tensors are equal (the input shape is known to fit, not to fit_structured)."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["hyperparameters"] == sb["hyperparameters"]
    assert sa["state"]["layers"] == sb["state"]["layers"]
    tensors = ("score_mean", "score_std", "spheres")
    torch.testing.assert_close(
        {k: sa["state"][k] for k in tensors}, {k: sb["state"][k] for k in tensors}, rtol=0, atol=0
    )


def test_fit_from_collected_shards_equals_fit(digits, digits_model):
    """A distributed fit extracts shards and concatenates them: the same state as one fit."""
    x, y = digits.train.tensors[0][:512], digits.train.tensors[1][:512]
    whole = UniformDetector(digits_model, seed=3).fit(
        DataLoader(TensorDataset(x, y), batch_size=128)
    )
    det = UniformDetector(digits_model, seed=3)
    parts = [
        det.collect_fit_inputs(DataLoader(TensorDataset(x[s], y[s]), batch_size=128))
        for s in (slice(0, 256), slice(256, 512))
    ]
    joined = _gathered(parts)
    assert joined["class_counts"].shape == (2, 10)
    det.fit_collected(joined)
    assert det.input_shape_ == whole.input_shape_ == tuple(x.shape[1:])
    x_test = digits.test.tensors[0][:64]
    torch.testing.assert_close(det(x_test), whole(x_test))


# ------------------------------------------------------------------ bounded memory
def test_the_bound_keeps_a_seeded_class_balanced_sample(digits, digits_model):
    x, y = digits.train.tensors
    det = UniformDetector(digits_model, max_fit_rows=500, seed=1)
    collected = det.collect_fit_inputs(DataLoader(digits.train, batch_size=64))
    kept = torch.bincount(collected["y"], minlength=10)
    assert int(kept.sum()) == 500 and (kept == 50).all()  # every class has more than 50
    assert torch.equal(collected["class_counts"], torch.bincount(y)[None])
    assert all(len(f) == 500 for f in collected["features"])
    assert len(collected["logits"]) == len(collected["keys"]) == 500
    # reproducible, independent of the loader's order and batches, different for another seed
    shuffled = DataLoader(
        digits.train, batch_size=100, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    again = det.collect_fit_inputs(shuffled)
    assert torch.equal(again["keys"], collected["keys"])
    assert torch.equal(again["y"], collected["y"])
    other = UniformDetector(digits_model, max_fit_rows=500, seed=2)
    other_keys = other.collect_fit_inputs(DataLoader(digits.train, batch_size=64))["keys"]
    assert not torch.equal(other_keys, collected["keys"])


def test_bounded_fit_is_the_fit_on_the_sample_of_all_rows(digits, digits_model):
    """fit(loader) streams, fit_structured sees every row: with the inputs' keys, the same."""
    x, y = digits.train.tensors
    loader = DataLoader(digits.train, batch_size=128)
    det = UniformDetector(digits_model, max_fit_rows=400).fit(loader)
    other = UniformDetector(digits_model, layers=det.layers_, max_fit_rows=400)
    parts = [other.extract(xb) for xb in x.split(128)]
    feats = [torch.cat([p[0][i] for p in parts]) for i in range(len(parts[0][0]))]
    logits = torch.cat([p[1] for p in parts])
    keys = content_keys(x, y, other.seed)
    other.fit_structured(feats, y, logits, num_classes=10, keys=keys)
    _states_equal(det, other)


def test_fit_structured_applies_the_bound_with_position_keys(digits, digits_model):
    x, y = digits.train.tensors
    bounded = UniformDetector(digits_model, max_fit_rows=400, seed=4)
    feats, logits = bounded.extract(x)
    bounded.fit_structured(feats, y, logits)
    keep = bounded_rows(position_keys(len(y), 4), y, torch.bincount(y), 400)
    assert len(keep) == 400
    unbounded = UniformDetector(digits_model, layers=bounded.layers_, max_fit_rows=None, seed=4)
    unbounded.fit_structured([f[keep] for f in feats], y[keep], logits[keep])
    unbounded.max_fit_rows = 400
    _states_equal(bounded, unbounded)


def test_below_the_bound_the_fit_is_the_unbounded_fit(digits, digits_model):
    """The default keeps every sample of small data: results fitted before the bound hold."""
    loader = DataLoader(digits.train, batch_size=128)
    default = UniformDetector(digits_model).fit(loader)
    assert default.max_fit_rows == 100_000
    exact = UniformDetector(digits_model, max_fit_rows=len(digits.train)).fit(loader)
    unbounded = UniformDetector(digits_model, max_fit_rows=None).fit(loader)
    x = digits.test.tensors[0][:64]
    assert torch.equal(default(x), unbounded(x)) and torch.equal(exact(x), unbounded(x))
    collected = default.collect_fit_inputs(loader)
    assert torch.equal(collected["y"], digits.train.tensors[1])  # all rows, loader order


def test_sharded_bounded_fit_equals_the_one_pass_fit(digits, digits_model):
    x, y = digits.train.tensors[0][:768], digits.train.tensors[1][:768]
    whole = UniformDetector(digits_model, max_fit_rows=300, seed=3)
    whole.fit(DataLoader(TensorDataset(x, y), batch_size=128))
    det = UniformDetector(digits_model, max_fit_rows=300, seed=3)
    shards = [slice(0, 256), slice(256, 512), slice(512, 768)]
    parts = [
        det.collect_fit_inputs(DataLoader(TensorDataset(x[s], y[s]), batch_size=128))
        for s in shards
    ]
    assert all(len(p["y"]) <= 300 for p in parts)
    det.fit_collected(_gathered(parts))
    _states_equal(det, whole)
    # interleaved shards (a DistributedSampler's split) batch differently: the sample is the
    # same, the activations may differ in the last bits
    inter = [
        det.collect_fit_inputs(DataLoader(TensorDataset(x[r::3], y[r::3]), batch_size=128))
        for r in range(3)
    ]
    joined = _gathered(inter)
    keep = bounded_rows(joined["keys"], joined["y"], joined["class_counts"].sum(0), 300)
    one_pass = det.collect_fit_inputs(DataLoader(TensorDataset(x, y), batch_size=128))
    assert torch.equal(joined["keys"][keep], one_pass["keys"])
    det.fit_collected(joined)
    x_test = digits.test.tensors[0][:64]
    torch.testing.assert_close(det(x_test), whole(x_test), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_rival_contrasts_catch_minimal_perturbations_better(digits, digits_model):
    """The design choice of the rival contrasts: minimal L2 perturbations (DeepFool, CW), which
    leave the predicted class's spheres unsurprised, are told from ID inputs better with them
    (on the digits, seeded: about +0.01 AUROC for both attacks)."""
    x_att, y_att = digits.attack.tensors
    fmodel = fb.PyTorchModel(digits_model.eval(), bounds=(0, 1))
    correct = digits_model(x_att).argmax(1) == y_att
    attacks = [
        fb.attacks.L2DeepFoolAttack(steps=50, overshoot=0.02),
        fb.attacks.L2CarliniWagnerAttack(steps=100),
    ]
    loader = DataLoader(digits.train, batch_size=128)
    with_contrasts = UniformDetector(digits_model, seed=0).fit(loader)
    without = UniformDetector(digits_model, seed=0, rivals=0).fit(loader)
    x = digits.test.tensors[0]
    for attack in attacks:
        _, adv, success = attack(fmodel, x_att, y_att, epsilons=1.0)
        adv = adv[success & correct]
        assert len(adv) > 100, "the minimal attacks should succeed on most of the attack split"
        gain = auroc(with_contrasts(x), with_contrasts(adv)) - auroc(without(x), without(adv))
        assert gain > 0.005, f"{type(attack).__name__}: contrasts gain {gain:.4f}"


def test_hyperparameters_are_validated(digits_model):
    for kwargs in ({"nu": 0.0}, {"nu": 1.5}, {"holdout": 1.0}, {"rivals": -1}, {"max_fit_rows": 0}):
        with pytest.raises(ValueError, match="expected"):
            UniformDetector(digits_model, **kwargs)
    for kwargs in ({"rivals": 1.5}, {"max_fit_rows": "all"}):
        with pytest.raises((ValueError, TypeError), match=next(iter(kwargs))):
            UniformDetector(digits_model, **kwargs)
    with pytest.raises(TypeError, match="nn.Module"):
        UniformDetector("not a model")
    with pytest.raises(TypeError, match="pooling"):
        UniformDetector(digits_model, pooling="avg")  # not a parameter any more


def test_the_fit_leaves_the_constructor_arguments_alone(digits, digits_model):
    """Resolved settings are fitted attributes with a trailing underscore; ``layers`` stays
    what was given (``None``: the defaults, resolved at fit time)."""
    det = UniformDetector(digits_model)
    assert det.layers is None and det.layers_ is None and det.spheres_ is None
    det.fit(DataLoader(digits.train, batch_size=256))
    assert det.layers is None and det.layers_ == ["3", "4", "8:input", "log_softmax", "softmax"]
    assert det.num_classes_ == 10 and det.rivals_ == 3 and det.input_shape_ == (1, 8, 8)


def test_spheres_are_whitened_class_balls_with_the_soft_boundary_radius(detector, digits):
    """Every hidden layer's spheres sit in the whitened space: the held-out ID rows lie
    inside their class's sphere about 1 - nu of the time, and the softmax layer's centres are
    the classes' mean probability vectors."""
    x, y = digits.train.tensors
    feats, logits = detector.extract(x)
    for z, sphere, name in zip(feats, detector.spheres_, detector.layers_):
        assert sphere.whitened == (name != "softmax")
        inside = (sphere.ratios(z.float(), y[:, None]).squeeze(1) <= 1).float().mean()
        assert 0.8 < float(inside) <= 0.95, (name, float(inside))
    i = detector.layers_.index("softmax")
    probs = logits.softmax(1)
    means = torch.stack([probs[y == k].mean(0) for k in range(10)])
    assert (detector.spheres_[i].center - means).abs().max() < 0.02


def test_rival_contrasts_are_the_log_ratio_to_the_nearest_rival(detector, digits, digits_model):
    hidden = [n for n in detector.layers_ if n not in ("log_softmax", "softmax")]
    assert detector.score_names == detector.layers_ + [f"contrast:{n}" for n in hidden]
    x = digits.test.tensors[0][:64]
    feats, logits = detector.extract(x)
    ranked = ranked_classes(logits, 3)
    raw = detector._raw_scores(feats, logits)
    L = len(detector.layers_)
    for j, name in enumerate(hidden):
        i = detector.layers_.index(name)
        expected = log_contrast(detector.spheres_[i].ratios(feats[i], ranked))
        torch.testing.assert_close(raw[:, L + j], expected)
    # rivals=0: the same spheres and layer statistics, no contrast columns
    plain = UniformDetector(digits_model, rivals=0, seed=0)
    plain.fit(DataLoader(digits.train, batch_size=128))
    assert plain.score_names == detector.layers_
    torch.testing.assert_close(plain.layer_scores(x), detector.layer_scores(x)[:, :L])
    # predicted classes cannot rank 3 rivals of 9: a clear error, not a silent other rule
    with pytest.raises(ValueError, match=r"expected logits \(B, 10\) to rank 3 rival classes"):
        detector.predict_structured(feats, logits.argmax(1))
    # collected with 1 rival, fitted with 3: the ranking kept is too short, a clear error
    few = UniformDetector(digits_model, rivals=1)
    collected = few.collect_fit_inputs(DataLoader(digits.train, batch_size=256))
    assert collected["logits"].shape[1] == 2
    few.set_hyperparameters(rivals=3)
    with pytest.raises(ValueError, match="collected with fewer rivals; collect them again"):
        few.fit_collected(collected)
    # every other class a rival: predicted classes suffice
    every = UniformDetector(digits_model, detector.layers_, rivals=9, seed=0)
    every.fit_structured(detector.extract(digits.train.tensors[0])[0], digits.train.tensors[1])
    torch.testing.assert_close(every.predict_structured(feats, logits.argmax(1)), every(x))


def test_rivals_changed_after_the_fit_change_nothing_until_the_next_fit(detector, digits):
    x = digits.test.tensors[0][:16]
    copy = UniformDetector(detector.model).load_state_dict(detector.state_dict())
    before = copy(x)
    copy.set_hyperparameters(rivals=0)
    assert copy.rivals_ == 3 and torch.equal(copy(x), before)


def test_state_round_trip_and_refusals(detector, digits, digits_model):
    x = digits.test.tensors[0][:16]
    state = detector.state_dict()
    loaded = UniformDetector(digits_model).load_state_dict(state)
    assert torch.equal(loaded(x), detector(x)) and loaded.layers_ == detector.layers_
    before = detector(x)
    bad = detector.state_dict()
    bad["state"]["layers"] = list(reversed(bad["state"]["layers"]))  # sizes disagree
    with pytest.raises(ValueError):
        detector.load_state_dict(bad)
    bad = detector.state_dict()
    bad["state"]["score_mean"] = bad["state"]["score_mean"][:2]
    with pytest.raises(ValueError, match="corrupted UniformDetector state"):
        detector.load_state_dict(bad)
    bad = detector.state_dict()
    del bad["state"]["spheres"]
    with pytest.raises(ValueError, match="complete UniformDetector state"):
        detector.load_state_dict(bad)
    assert torch.equal(detector(x), before)  # refused before anything changed


def test_scores_under_inference_mode_then_gradients(detector, digits):
    x = digits.test.tensors[0][:8]
    fresh = UniformDetector(detector.model).load_state_dict(detector.state_dict())
    with torch.inference_mode():
        expected = fresh(x)
    x = x.clone().requires_grad_(True)
    score = fresh.differentiable_score(x)
    score.sum().backward()
    assert torch.allclose(score.detach(), expected, atol=1e-4)
    assert x.grad is not None and x.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()


def test_max_fit_rows_too_small_and_bad_keys_are_refused(digits, digits_model):
    loader = DataLoader(digits.train, batch_size=256)
    too_few = UniformDetector(digits_model, max_fit_rows=60)
    with pytest.raises(ValueError, match=r"max_fit_rows=60 keeps 6 per class of 1078 .* >= 100"):
        too_few.fit(loader)
    feats, logits = too_few.extract(digits.train.tensors[0])
    with pytest.raises(ValueError, match="class_counts"):
        too_few.fit_structured(feats, digits.train.tensors[1], logits, class_counts=torch.ones(10))
    with pytest.raises(ValueError, match="int64 keys"):
        too_few.fit_structured(feats, digits.train.tensors[1], logits, keys=torch.zeros(3))
