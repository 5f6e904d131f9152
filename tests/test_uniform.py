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
from uniad_plugin.nn.pvalues import log_survival
from uniad_plugin.nn.rivals import ranked_classes, rival_contrast
from uniad_plugin.nn.sampling import bounded_rows, content_keys, position_keys
from uniad_plugin.nn.taps import LayerTaps


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
    assert detector.layers == ["3", "4", "8:input", "log_softmax", "softmax"]


def test_layers_by_name_and_module(digits, digits_model):
    loader = DataLoader(digits.train, batch_size=256)
    by_name = UniformDetector(digits_model, layers=["4", "8:input"], epochs=5).fit(loader)
    by_module = UniformDetector(digits_model, layers=[digits_model[4], "8:input"], epochs=5)
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
        det = UniformDetector(digits_model, epochs=2, warmup_epochs=1).fit(
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
        with_anomalies = UniformDetector(digits_model, epochs=3).fit(mixed)
    plain = UniformDetector(digits_model, epochs=3).fit(plain_batches)
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
    det = UniformDetector(model, epochs=2, warmup_epochs=1).fit(loader)
    x = digits.test.tensors[0][:16]
    restored = UniformDetector(model).load_state_dict(det.state_dict())
    assert torch.equal(det(x), restored(x))


def test_failed_load_leaves_the_detector_usable(detector, digits, digits_model):
    x = digits.test.tensors[0][:16]
    before = detector(x)
    state = detector.state_dict()
    inner = state["state"]
    inner["layers"] = list(reversed(inner["layers"]))  # layer sizes disagree with the spheres
    with pytest.raises(ValueError):
        detector.load_state_dict(state)
    assert torch.equal(detector(x), before)
    # a state of other layers and pooling, refused late (its statistics are cut short)
    other = UniformDetector(digits_model, ["4", "8:input"], pooling="avg", epochs=1)
    bad = other.fit(DataLoader(digits.train, batch_size=256)).state_dict()
    bad["state"]["fusion_knots"] = bad["state"]["fusion_knots"][:1]
    layers, pooling = list(detector.layers), detector.pooling
    with pytest.raises(ValueError, match="fused scores"):
        detector.load_state_dict(bad)
    assert detector.layers == layers and detector.pooling == pooling
    assert torch.equal(detector(x), before)


def test_fit_structured_matches_fit(digits, digits_model):
    loader = DataLoader(digits.train, batch_size=128)
    det = UniformDetector(digits_model, epochs=5).fit(loader)
    x, y = digits.train.tensors
    other = UniformDetector(digits_model, layers=det.layers, epochs=5)
    # extracted in the loader's batches, so that both fits see bit-identical activations
    parts = [other.extract(xb) for xb in x.split(128)]
    feats = [torch.cat([p[0][i] for p in parts]) for i in range(len(parts[0][0]))]
    logits = torch.cat([p[1] for p in parts])
    other.fit_structured(feats, y, logits, num_classes=10)
    xt = digits.test.tensors[0][:64]
    assert torch.allclose(det(xt), other(xt), atol=1e-4)


def test_difference_score_and_hyperparameter_validation(digits, digits_model):
    loader = DataLoader(digits.train, batch_size=256)
    det = UniformDetector(digits_model, score="difference", epochs=5).fit(loader)
    assert torch.isfinite(det(digits.test.tensors[0][:16])).all()
    for kwargs in ({"nu": 0.0}, {"score": "cosine"}, {"holdout": 1.0}, {"pooling": "sum"}):
        with pytest.raises(ValueError, match="expected"):
            UniformDetector(digits_model, **kwargs)
    with pytest.raises(TypeError, match="nn.Module"):
        UniformDetector("not a model")


def test_layer_scores_sum_to_prediction(detector, digits):
    x = digits.test.tensors[0][:16]
    per_layer = detector.layer_scores(x)
    assert per_layer.shape == (16, len(detector.score_names))
    assert detector.score_names[: len(detector.layers)] == detector.layers
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
        (
            lambda: torchvision.models.resnet18(num_classes=4),
            (3, 64, 64),
            ["layer1", "layer2", "layer3", "layer4", "fc:input", "log_softmax", "softmax"],
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
    det = UniformDetector(model, epochs=2, warmup_epochs=1).fit(_random_loader(shape, 4))
    assert det.layers == expected
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
    det = UniformDetector(model, epochs=2, batch_size=64).fit(
        _random_loader((3, 16, 16), 10, n=300)
    )
    assert det.layers == [*expected, "log_softmax", "softmax"]
    scores = det(torch.rand(7, 3, 16, 16))
    assert scores.shape == (7,) and torch.isfinite(scores).all()


def test_warmup_is_derived_at_fit_from_the_current_epochs(digits, digits_model):
    loader = DataLoader(digits.train, batch_size=256)
    det = UniformDetector(digits_model, epochs=30)
    det.epochs = 2
    det.fit(loader)  # a stale warm-up of 5 would exceed 2
    assert det.warmup_epochs is None and det._warmup_epochs == 1
    det = UniformDetector(digits_model, epochs=10, warmup_epochs=5)
    det.epochs = 3
    with pytest.raises(ValueError, match="warmup_epochs"):
        det.fit(loader)


def test_deprecated_names_still_work(detector, digits):
    x = digits.test.tensors[0][:8]
    feats, logits = detector.extract(x)
    with pytest.warns(DeprecationWarning, match="n_classes"):
        assert detector.n_classes == detector.num_classes == 10
    other = UniformDetector(detector.model, layers=detector.layers, epochs=2, warmup_epochs=1)
    z, y = detector.extract(digits.train.tensors[0])[0], digits.train.tensors[1]
    with pytest.warns(DeprecationWarning, match="pred="):
        other.fit_structured(z, y, pred=detector.extract(digits.train.tensors[0])[1])
    with pytest.warns(DeprecationWarning, match="n_classes="):
        other.fit_structured(
            z, y, n_classes=10, logits=detector.extract(digits.train.tensors[0])[1]
        )
    assert other.predict_structured(feats, logits).shape == (8,)


def test_few_samples_per_class_still_fit(digits, digits_model):
    """Five samples per class: one of each is held out for the standardisation. One per class:
    too few to hold any out, so the scores are standardised on the fitting samples, and the
    warning says so."""
    x, y = digits.train.tensors
    for n in (5, 1):
        few = torch.cat([torch.nonzero(y == k).flatten()[:n] for k in range(10)])
        det = UniformDetector(digits_model, epochs=2, warmup_epochs=1)
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


def test_zsum_fusion_sums_the_z_scores_and_fisher_the_log_p_values(detector, digits):
    x = digits.test.tensors[0][:64]
    feats, logits = detector.extract(x)
    raw = detector._layer_scores(feats, logits)
    assert detector.fusion == "zsum"  # the default
    expected = ((raw - detector.fusion_mean) / detector.fusion_std).sum(1)
    assert torch.allclose(detector(x), expected, atol=1e-4)
    fisher = UniformDetector(detector.model).load_state_dict(detector.state_dict())
    fisher.fusion = "fisher"
    per_layer = fisher.layer_scores(x)
    assert (per_layer >= 0).all()  # -log p
    # an input scoring above every held-out input in a layer has p <= 1 / (n_held + 1)
    n_held = detector.fusion_knots.shape[1]
    top = raw > detector.fusion_knots[:, -1]
    assert top.any()
    assert (per_layer[top] >= torch.log(torch.tensor(n_held + 1.0)) - 1e-4).all()
    log_p = log_survival(detector.fusion_knots, detector.fusion_slope, raw)
    assert torch.allclose(fisher(x), -log_p.sum(1), atol=1e-4)
    assert not torch.allclose(fisher(x), detector(x))
    # a state saved with Fisher's combination keeps it when loaded into a default detector
    again = UniformDetector(detector.model).load_state_dict(fisher.state_dict())
    assert again.fusion == "fisher" and torch.equal(again(x), fisher(x))


def test_states_without_fusion_knots_load_as_zsum(detector, digits):
    state = detector.state_dict()
    del state["state"]["fusion_knots"], state["state"]["fusion_slope"]
    del state["hyperparameters"]["fusion"]
    old = UniformDetector(detector.model, fusion="fisher").load_state_dict(state)
    assert old.fusion == "zsum"
    x = digits.test.tensors[0][:8]
    feats, logits = detector.extract(x)
    raw = detector._layer_scores(feats, logits)
    expected = ((raw - detector.fusion_mean) / detector.fusion_std).sum(1)
    assert torch.allclose(old(x), expected, atol=1e-4)
    again = UniformDetector(detector.model).load_state_dict(old.state_dict())  # saved again
    assert again.fusion == "zsum" and torch.equal(again(x), old(x))
    old.fusion = "fisher"
    with pytest.raises(ValueError, match="saved before the Fisher fusion"):
        old(x)


def _gathered(parts):
    """The shards' collected dicts joined as a distributed fit joins them: tensors
    concatenated along dim 0 (lists element-wise), other values equal across shards."""
    joined = {}
    for key, first in parts[0].items():
        values = [p[key] for p in parts]
        if isinstance(first, torch.Tensor):
            joined[key] = torch.cat(values)
        elif isinstance(first, list):
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
    tensors = ("fusion_mean", "fusion_std", "fusion_knots", "fusion_slope", "spheres")
    torch.testing.assert_close(
        {k: sa["state"][k] for k in tensors}, {k: sb["state"][k] for k in tensors}, rtol=0, atol=0
    )


def test_fit_from_collected_shards_equals_fit(digits, digits_model):
    """A distributed fit extracts shards and concatenates them: the same state as one fit."""
    x, y = digits.train.tensors[0][:512], digits.train.tensors[1][:512]
    whole = UniformDetector(digits_model, epochs=2, seed=3).fit(
        DataLoader(TensorDataset(x, y), batch_size=128)
    )
    det = UniformDetector(digits_model, epochs=2, seed=3)
    parts = [
        det.collect_fit_inputs(DataLoader(TensorDataset(x[s], y[s]), batch_size=128))
        for s in (slice(0, 256), slice(256, 512))
    ]
    joined = _gathered(parts)
    assert joined["class_counts"].shape == (2, 10)
    det.fit_collected(joined)
    assert det.input_shape == whole.input_shape == tuple(x.shape[1:])
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
    det = UniformDetector(digits_model, max_fit_rows=400, epochs=2).fit(loader)
    other = UniformDetector(digits_model, layers=det.layers, max_fit_rows=400, epochs=2)
    parts = [other.extract(xb) for xb in x.split(128)]
    feats = [torch.cat([p[0][i] for p in parts]) for i in range(len(parts[0][0]))]
    logits = torch.cat([p[1] for p in parts])
    keys = content_keys(x, y, other.seed)
    other.fit_structured(feats, y, logits, num_classes=10, keys=keys)
    _states_equal(det, other)


def test_fit_structured_applies_the_bound_with_position_keys(digits, digits_model):
    x, y = digits.train.tensors
    bounded = UniformDetector(digits_model, max_fit_rows=400, epochs=2, seed=4)
    feats, logits = bounded.extract(x)
    bounded.fit_structured(feats, y, logits)
    keep = bounded_rows(position_keys(len(y), 4), y, torch.bincount(y), 400)
    assert len(keep) == 400
    unbounded = UniformDetector(
        digits_model, layers=bounded.layers, max_fit_rows=None, epochs=2, seed=4
    )
    unbounded.fit_structured([f[keep] for f in feats], y[keep], logits[keep])
    unbounded.max_fit_rows = 400
    _states_equal(bounded, unbounded)


def test_below_the_bound_the_fit_is_the_unbounded_fit(digits, digits_model):
    """The default keeps every sample of small data: results fitted before the bound hold."""
    loader = DataLoader(digits.train, batch_size=128)
    default = UniformDetector(digits_model, epochs=2).fit(loader)
    assert default.max_fit_rows == 100_000
    exact = UniformDetector(digits_model, epochs=2, max_fit_rows=len(digits.train)).fit(loader)
    unbounded = UniformDetector(digits_model, epochs=2, max_fit_rows=None).fit(loader)
    x = digits.test.tensors[0][:64]
    assert torch.equal(default(x), unbounded(x)) and torch.equal(exact(x), unbounded(x))
    collected = default.collect_fit_inputs(loader)
    assert torch.equal(collected["y"], digits.train.tensors[1])  # all rows, loader order


def test_sharded_bounded_fit_equals_the_one_pass_fit(digits, digits_model):
    x, y = digits.train.tensors[0][:768], digits.train.tensors[1][:768]
    whole = UniformDetector(digits_model, epochs=2, max_fit_rows=300, seed=3)
    whole.fit(DataLoader(TensorDataset(x, y), batch_size=128))
    det = UniformDetector(digits_model, epochs=2, max_fit_rows=300, seed=3)
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


def test_max_fit_rows_is_checked_and_old_states_load(digits, digits_model, detector):
    loader = DataLoader(digits.train, batch_size=256)
    for bad in (0, -5, 1.5, "all"):
        with pytest.raises((ValueError, TypeError), match="max_fit_rows"):
            UniformDetector(digits_model, max_fit_rows=bad)
    too_few = UniformDetector(digits_model, max_fit_rows=60, epochs=1)
    with pytest.raises(ValueError, match=r"max_fit_rows=60 keeps 6 per class of 1078 .* >= 100"):
        too_few.fit(loader)
    state = detector.state_dict()
    assert state["hyperparameters"]["max_fit_rows"] == 100_000
    del state["hyperparameters"]["max_fit_rows"]  # a state saved before the bound
    old = UniformDetector(digits_model, max_fit_rows=None).load_state_dict(state)
    x = digits.test.tensors[0][:8]
    assert old.max_fit_rows is None and torch.equal(old(x), detector(x))
    feats, logits = detector.extract(digits.train.tensors[0])
    with pytest.raises(ValueError, match="class_counts"):
        too_few.fit_structured(feats, digits.train.tensors[1], logits, class_counts=torch.ones(10))
    with pytest.raises(ValueError, match="int64 keys"):
        too_few.fit_structured(feats, digits.train.tensors[1], logits, keys=torch.zeros(3))


def test_softmax_spheres_are_encoder_free_by_default(detector, digits, digits_model):
    assert "softmax" in detector.layers and detector.pooling == "grid"
    free = [not s.has_encoder for s in detector.spheres]
    assert free == [name == "softmax" for name in detector.layers]
    i = detector.layers.index("softmax")
    x, y = digits.train.tensors
    with torch.no_grad():
        probs = digits_model(x).softmax(1)
    # the centre of each class: the class's mean softmax (over the rows the spheres were fitted
    # on, which leave out the hold-out: close to the mean over all training rows)
    means = torch.stack([probs[y == k].mean(0) for k in range(10)])
    assert (detector.spheres[i].center - means).abs().max() < 0.02
    loaded = UniformDetector(digits_model).load_state_dict(detector.state_dict())
    assert [s.has_encoder for s in loaded.spheres] == [s.has_encoder for s in detector.spheres]
    x_test = digits.test.tensors[0][:16]
    assert torch.equal(loaded(x_test), detector(x_test))


def test_encoder_free_names_are_checked(digits, digits_model):
    loader = DataLoader(digits.train, batch_size=256)
    every = UniformDetector(digits_model, encoder_free=(), epochs=2).fit(loader)
    assert all(s.has_encoder for s in every.spheres)
    layers = ["8:input", "logits"]
    chosen = UniformDetector(digits_model, layers, encoder_free=["logits"], epochs=2).fit(loader)
    assert [s.has_encoder for s in chosen.spheres] == [True, False]
    with pytest.raises(ValueError, match=r"encoder_free to name tapped layers .*\['nope'\]"):
        UniformDetector(digits_model, encoder_free=["nope"], epochs=1).fit(loader)
    with pytest.raises(TypeError, match="encoder_free"):
        UniformDetector(digits_model, encoder_free="softmax")


def test_states_before_grid_pooling_load_with_their_pooling(digits, digits_model):
    loader = DataLoader(digits.train, batch_size=256)
    old = UniformDetector(digits_model, pooling="avg", encoder_free=(), epochs=2).fit(loader)
    state = old.state_dict()
    del state["hyperparameters"]["pooling"], state["hyperparameters"]["encoder_free"]
    loaded = UniformDetector(digits_model).load_state_dict(state)
    assert loaded.pooling == "avg" and loaded.encoder_free == ()
    x = digits.test.tensors[0][:16]
    assert torch.equal(loaded(x), old(x))


def test_scores_under_inference_mode_then_gradients(detector, digits):
    """Caches filled while scoring under inference mode (the folded first layers, the grid
    matrices) must not break a white-box attack's gradient pass afterwards."""
    for fusion in ("zsum", "fisher"):
        x = digits.test.tensors[0][:8]
        fresh = UniformDetector(detector.model).load_state_dict(detector.state_dict())
        fresh.fusion = fusion
        with torch.inference_mode():
            expected = fresh(x)
        x = x.clone().requires_grad_(True)
        score = fresh.differentiable_score(x)
        score.sum().backward()
        assert torch.allclose(score.detach(), expected, atol=1e-4)
        assert x.grad is not None and x.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()


def test_rival_contrasts_follow_the_layers_and_leave_the_spheres_alone(
    detector, digits, digits_model
):
    hidden = [n for n in detector.layers if n not in ("log_softmax", "softmax")]
    assert detector.rivals == 3 and detector.contrast is None and hidden
    assert detector.score_names == detector.layers + [f"contrast:{n}" for n in hidden]
    x = digits.test.tensors[0][:64]
    feats, logits = detector.extract(x)
    L = len(detector.layers)
    idx = [detector.layers.index(n) for n in hidden]
    pooled = [f.float() for f in feats]
    expected = rival_contrast(
        [detector.spheres[i] for i in idx], [pooled[i] for i in idx], ranked_classes(logits, 3)
    )
    raw = detector._layer_scores(feats, logits)
    assert raw.shape == (64, L + len(hidden))
    torch.testing.assert_close(raw[:, L:], expected, rtol=1e-4, atol=1e-4)
    # rivals=0: the same spheres and held-out statistics of the layers, no contrast columns
    plain = UniformDetector(digits_model, rivals=0, seed=0)
    plain.fit(DataLoader(digits.train, batch_size=128))
    assert plain.score_names == detector.layers
    torch.testing.assert_close(plain.layer_scores(x), detector.layer_scores(x)[:, :L])
    # predicted classes cannot rank 3 rivals of 9: a clear error, not a silent other rule
    with pytest.raises(ValueError, match=r"expected logits \(B, 10\) to rank 3 rival classes"):
        detector.predict_structured(feats, logits.argmax(1))
    with pytest.raises(ValueError, match=r"expected logits \(B, 10\) to rank 3 rival classes"):
        UniformDetector(digits_model, epochs=1).fit_structured(feats, digits.test.tensors[1][:64])
    # every other class a rival: predicted classes suffice, and the contrast is never smaller
    every = UniformDetector(digits_model, detector.layers, rivals=9, seed=0)
    every.fit_structured(*detector.extract(digits.train.tensors[0])[:1], digits.train.tensors[1])
    exact = rival_contrast(
        [every.spheres[i] for i in idx], [pooled[i] for i in idx], ranked_classes(logits, 9)
    )
    torch.testing.assert_close(every._layer_scores(feats, logits.argmax(1))[:, L:], exact)
    torch.testing.assert_close(every.predict_structured(feats, logits.argmax(1)), every(x))


def test_contrast_names_and_rivals_are_checked(digits, digits_model):
    loader = DataLoader(digits.train, batch_size=256)
    chosen = UniformDetector(digits_model, contrast=["3"], rivals=1, epochs=1).fit(loader)
    assert chosen.score_names == chosen.layers + ["contrast:3"]
    chosen.set_hyperparameters(rivals=2)  # the held-out statistics are those of 1 rival
    with pytest.raises(ValueError, match="rivals changed after the fit; refit"):
        chosen(digits.test.tensors[0][:4])
    with pytest.raises(ValueError, match="rivals changed after the fit; refit"):
        chosen.state_dict()
    # collected with 1 rival, fitted with 3: the ranking kept is too short, a clear error
    few = UniformDetector(digits_model, rivals=1, epochs=1)
    collected = few.collect_fit_inputs(loader)
    assert collected["logits"].shape[1] == 2
    few.set_hyperparameters(rivals=3)
    with pytest.raises(ValueError, match="collected with fewer rivals; collect them again"):
        few.fit_collected(collected)
    # a bad contrast name fails before the training, also without a forward pass
    feats, logits = chosen.extract(digits.train.tensors[0][:200])
    fresh = UniformDetector(digits_model, chosen.layers, contrast=["nope"], epochs=1)
    with pytest.raises(ValueError, match="contrast to name tapped layers"):
        fresh.fit_structured(feats, digits.train.tensors[1][:200], logits)
    assert fresh.spheres is None
    with pytest.raises(ValueError, match=r"contrast to name tapped layers .*\['nope'\]"):
        UniformDetector(digits_model, contrast=["nope"], epochs=1).fit(loader)
    for bad in (-1, 1.5):
        with pytest.raises((ValueError, TypeError), match="rivals"):
            UniformDetector(digits_model, rivals=bad)


def test_states_before_rival_contrasts_load_without_them(detector, digits, digits_model):
    state = detector.state_dict()
    L = len(detector.layers)
    del state["hyperparameters"]["rivals"], state["hyperparameters"]["contrast"]
    del state["state"]["score_names"], state["state"]["rivals_fitted"]
    for key in ("fusion_mean", "fusion_std", "fusion_knots", "fusion_slope"):
        state["state"][key] = state["state"][key][:L]
    old = UniformDetector(digits_model).load_state_dict(state)
    assert old.rivals == 0 and old.score_names == detector.layers
    x = digits.test.tensors[0][:16]
    torch.testing.assert_close(old(x), detector.layer_scores(x)[:, :L].sum(1))
    bad = detector.state_dict()
    bad["state"]["fusion_knots"] = bad["state"]["fusion_knots"][:L]
    bad["state"]["fusion_mean"] = bad["state"]["fusion_mean"][:L]
    before = detector(x)
    with pytest.raises(ValueError, match="fused scores"):
        detector.load_state_dict(bad)  # refused before anything of the detector changes
    torch.testing.assert_close(detector(x), before, rtol=0, atol=0)
    assert detector.rivals == 3 and detector.fitted_scores[1] == 3


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


def test_gridstd_pooling_doubles_the_feature_maps_and_keeps_gradients_finite(
    detector, digits, digits_model
):
    loader = DataLoader(digits.train, batch_size=256)
    det = UniformDetector(digits_model, pooling="gridstd", epochs=2).fit(loader)
    assert det.layers == detector.layers
    x = digits.test.tensors[0][:16]
    maps = [t.dim() == 4 for t in LayerTaps(digits_model, det.layers, reduce=None)(x)[1]]
    assert any(maps)
    for is_map, mine, grid in zip(maps, det.spheres, detector.spheres):
        assert mine.in_dim == (2 * grid.in_dim if is_map else grid.in_dim)
    scores = det(x)
    assert scores.shape == (16,) and torch.isfinite(scores).all()
    # the noise the detector must flag still scores above the ID inputs
    noise = torch.rand(16, *x.shape[1:], generator=torch.Generator().manual_seed(0))
    assert det(noise).median() > scores.median()
    x = x.clone().requires_grad_(True)
    det.differentiable_score(x).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    loaded = UniformDetector(digits_model).load_state_dict(det.state_dict())
    assert loaded.pooling == "gridstd" and torch.equal(loaded(x.detach()), scores)
