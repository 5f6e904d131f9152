"""R2AD2: snapshots, raw gradients against an autograd reference, alarm training, state."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from pytorch_ood.api import RequiresFittingException
from pytorch_ood.metrics import OODMetrics
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from uniad_plugin.detectors.r2ad2 import R2AD2
from uniad_plugin.models import digits_cnn
from uniad_plugin.nn.pergrad import default_gradient_params

#: few epochs keep each fit to a few seconds
FAST = {"snapshot_epochs": 1, "epochs": 5}


def auroc(s_id: torch.Tensor, s_ood: torch.Tensor) -> float:
    m = OODMetrics()
    labels = torch.cat([torch.zeros(len(s_id)), -torch.ones(len(s_ood))]).long()
    m.update(torch.cat([s_id, s_ood]).detach(), labels)
    return m.compute()["AUROC"]


def uniform(n: int, seed: int) -> torch.Tensor:
    return torch.rand((n, 1, 8, 8), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def fitted(digits, digits_model):
    return R2AD2(digits_model, **FAST).fit(DataLoader(digits.train, batch_size=128))


def test_default_gradient_params():
    assert default_gradient_params(digits_cnn()) == ["6.bias", "8.weight", "8.bias"]
    big_head = nn.Sequential(nn.Flatten(), nn.Linear(64, 300), nn.ReLU(), nn.Linear(300, 100))
    # the last layer is kept whole even above the size limit
    assert default_gradient_params(big_head, max_param_size=1000) == [
        "1.bias",
        "3.weight",
        "3.bias",
    ]


def test_snapshots_are_copies_trained_further(fitted, digits_model):
    snaps = fitted.snapshots
    assert len(snaps) == 3
    own = digits_model.state_dict()
    assert all(torch.equal(snaps[0][k], own[k]) for k in own)
    for a, b in [(0, 1), (1, 2)]:
        assert not torch.equal(snaps[a]["8.weight"], snaps[b]["8.weight"])
    assert not digits_model.training


def test_features_are_raw_gradients_of_each_snapshot(fitted, digits_model, digits):
    x = digits.test.tensors[0][:4]
    feats = fitted.extract(x)[0]
    assert feats.shape == (4, 3, 64 + 640 + 10) and fitted.gradient_dim == 714
    for t, snap in enumerate(fitted.snapshots):
        model = copy.deepcopy(digits_model)
        model.load_state_dict(snap)
        rows = []
        for i in range(len(x)):
            model.zero_grad(set_to_none=True)
            out = model(x[i : i + 1])
            nn.functional.cross_entropy(out, out.argmax(1)).backward()
            grads = [
                model.get_parameter(n).grad.flatten() for n in ["6.bias", "8.weight", "8.bias"]
            ]
            rows.append(torch.cat(grads))
        torch.testing.assert_close(feats[:, t], torch.stack(rows), rtol=1e-4, atol=1e-7)


def test_separates_uniform_noise(fitted, digits):
    x = digits.test.tensors[0]
    with torch.no_grad():
        assert auroc(fitted(x), fitted(uniform(300, 3))) > 0.9


def test_known_anomalies_are_used_only_when_asked(monkeypatch, digits, digits_model):
    """With known_anomalies=True the alarm trains on them as 1; otherwise they are dropped."""
    x, y = digits.train.tensors
    ds = TensorDataset(
        torch.cat([x, uniform(100, 11)]), torch.cat([y, -torch.ones(100, dtype=torch.long)])
    )
    loader = DataLoader(ds, batch_size=256)
    cheap = {**FAST, "n_snapshots": 1}
    seen = _spy_fit(monkeypatch, R2AD2(digits_model, known_anomalies=True, **cheap), loader)
    labels = seen["alarm_labels"]
    assert int((labels < 0).sum()) == 100 and int((labels >= 0).sum()) == len(x)
    with pytest.warns(UserWarning, match="known_anomalies=True"):
        seen = _spy_fit(monkeypatch, R2AD2(digits_model, **cheap), loader)
    assert int((seen["alarm_labels"] < 0).sum()) == 0


@pytest.mark.slow
def test_given_snapshots_are_used_as_is(digits, digits_model):
    torch.manual_seed(3)
    other = digits_cnn().eval()
    det = R2AD2(digits_model, snapshots=[digits_model, other.state_dict()], **{**FAST, "epochs": 2})
    assert det.n_snapshots == 2
    det.fit(DataLoader(digits.train, batch_size=256))
    assert torch.equal(det.snapshots[1]["0.weight"], other.state_dict()["0.weight"])
    assert det.extract(digits.test.tensors[0][:2])[0].shape == (2, 2, 714)
    with pytest.raises(ValueError, match="shaped like"):
        R2AD2(digits_model, snapshots=[digits_cnn(num_classes=7)])


@pytest.mark.slow
def test_deterministic_and_seed_dependent(digits, digits_model):
    x = digits.test.tensors[0][:32]
    loader = DataLoader(digits.train, batch_size=128)
    cheap = {**FAST, "n_snapshots": 2, "epochs": 2}
    first = R2AD2(digits_model, **cheap).fit(loader)
    again = R2AD2(digits_model, **cheap).fit(loader)
    other = R2AD2(digits_model, seed=1, **cheap).fit(loader)
    with torch.no_grad():
        assert torch.equal(first(x), again(x))
        assert not torch.allclose(first(x), other(x))


def test_state_round_trip(fitted, digits_model, digits):
    buf = io.BytesIO()
    torch.save(fitted.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    restored = R2AD2(digits_model).load_state_dict(state)
    x = digits.test.tensors[0][:64]
    with torch.no_grad():
        assert torch.equal(restored(x), fitted(x))
    assert restored.n_snapshots == 3 and restored.params == fitted.params
    inner = state["state"]
    alarm = {k: v[..., :1] if v.dim() else v for k, v in inner["alarm"].items()}
    bad = dict(state, state=dict(inner, alarm=alarm))
    with pytest.raises(ValueError, match="corrupted"):
        R2AD2(digits_model).load_state_dict(bad)
    with pytest.raises(ValueError, match="shaped like"):
        R2AD2(digits_cnn(num_classes=7)).load_state_dict(state)


def test_structured_api(fitted, digits, digits_model):
    x = digits.test.tensors[0][:16]
    feats = fitted.extract(x)[0]
    with torch.no_grad():
        assert torch.equal(fitted.predict_structured(feats), fitted(x))
    with pytest.raises(ValueError, match=r"\(B, 3, 714\)"):
        fitted.predict_structured(feats[:, :2])
    with pytest.raises(ValueError, match="snapshots"):
        R2AD2(digits_model).fit_structured(feats, torch.zeros(16).long())


@pytest.mark.slow
def test_single_snapshot_and_autoencoder_target(digits):
    torch.manual_seed(0)
    ae = nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 16),
        nn.ReLU(),
        nn.Linear(16, 64),
        nn.Sigmoid(),
        nn.Unflatten(1, (1, 8, 8)),
    )
    x = digits.train.tensors[0]
    opt = torch.optim.Adam(ae.parameters(), 1e-2)
    for _ in range(100):
        loss = nn.functional.binary_cross_entropy(ae(x), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    ae.eval()
    labels = torch.randint(0, 1000, (len(x),))  # any label >= 0 means ID for an autoencoder
    det = R2AD2(ae, target="autoencoder", n_snapshots=1, **FAST)
    det.fit(DataLoader(TensorDataset(x, labels), batch_size=256))
    assert det.params == ["1.weight", "1.bias", "3.weight", "3.bias"]
    with torch.no_grad():
        assert auroc(det(digits.test.tensors[0]), det(uniform(300, 3))) > 0.95


def test_errors(fitted, digits_model, digits):
    x = digits.test.tensors[0]
    with pytest.raises(RequiresFittingException):
        R2AD2(digits_model).predict(x[:2])
    with pytest.raises(ValueError, match=r"shape \(B, 1, 8, 8\)"):
        fitted(torch.rand(2, 1, 28, 28))
    with pytest.raises(ValueError, match="target"):
        R2AD2(digits_model, target="gan")
    with pytest.raises(ValueError, match="unknown"):
        R2AD2(digits_model, params=["fc.weight"])
    with pytest.raises(ValueError, match="empty"):
        R2AD2(digits_model).fit(DataLoader(TensorDataset(x[:0], x[:0]), batch_size=4))
    with pytest.raises(ValueError, match="ID samples"):
        ds = TensorDataset(x[:10], -torch.ones(10, dtype=torch.long))
        R2AD2(digits_model, known_anomalies=True).fit(DataLoader(ds, batch_size=4))


def _spy_fit(monkeypatch, det, loader):
    """Fit ``det``, returning the inputs the snapshot trainer and the alarm were given."""
    import uniad_plugin.detectors.r2ad2 as mod

    seen = {}
    real_train, real_fit_structured = mod.train_snapshots, R2AD2.fit_structured

    def train_spy(model, x, y, *args, **kwargs):
        seen["snapshots"] = (x.clone(), y.clone())
        return real_train(model, x, y, *args, **kwargs)

    def fit_structured_spy(self, features, y, **kwargs):
        seen["alarm_labels"] = y.clone()
        return real_fit_structured(self, features, y, **kwargs)

    real_split = R2AD2._split_id

    def split_spy(self, known):
        seen["split"] = real_split(self, known)
        return seen["split"]

    monkeypatch.setattr(mod, "train_snapshots", train_spy)
    monkeypatch.setattr(R2AD2, "fit_structured", fit_structured_spy)
    monkeypatch.setattr(R2AD2, "_split_id", split_spy)
    det.fit(loader)
    return seen


@pytest.mark.slow
def test_alarm_samples_are_held_out_from_snapshot_training(monkeypatch, digits, digits_model):
    """The authors' 75/25 split: the snapshot trainer never sees the alarm's ID samples."""
    x, y = digits.train.tensors
    anomalies = uniform(20, 5)
    ds = TensorDataset(torch.cat([x, anomalies]), torch.cat([y, -torch.ones(20, dtype=torch.long)]))
    loader = DataLoader(ds, batch_size=128)
    cheap = {**FAST, "n_snapshots": 2, "epochs": 1}
    seen = _spy_fit(monkeypatch, R2AD2(digits_model, known_anomalies=True, **cheap), loader)
    snap_idx, alarm_idx = seen["split"]
    n = len(x)
    assert len(alarm_idx) == round(0.25 * n) and len(snap_idx) == n - len(alarm_idx)
    # disjoint, covering every ID sample, and no known anomaly in either part
    assert not set(snap_idx.tolist()) & set(alarm_idx.tolist())
    assert sorted(snap_idx.tolist() + alarm_idx.tolist()) == list(range(n))
    # the snapshot trainer got exactly the snapshot part, none of the alarm's samples
    x_snap, y_snap = seen["snapshots"]
    assert torch.equal(x_snap, x[snap_idx]) and torch.equal(y_snap, y[snap_idx])
    flat_snap = {tuple(r.tolist()) for r in x_snap.flatten(1)}
    assert not any(tuple(r.tolist()) in flat_snap for r in x[alarm_idx].flatten(1))
    # the alarm got the held-out ID samples and every known anomaly
    labels = seen["alarm_labels"]
    assert int((labels >= 0).sum()) == len(alarm_idx) and int((labels < 0).sum()) == 20
    # seeded: the same split again, another one for another seed
    again = _spy_fit(monkeypatch, R2AD2(digits_model, known_anomalies=True, **cheap), loader)[
        "split"
    ]
    other = _spy_fit(
        monkeypatch, R2AD2(digits_model, seed=1, known_anomalies=True, **cheap), loader
    )["split"]
    assert torch.equal(again[1], alarm_idx) and not torch.equal(other[1], alarm_idx)


@pytest.mark.slow
def test_single_snapshot_and_given_snapshots_use_every_sample(monkeypatch, digits, digits_model):
    """Without snapshot training there is nothing to hold out from: the alarm sees every sample."""
    loader = DataLoader(digits.train, batch_size=128)
    n = len(digits.train)
    cheap = {**FAST, "epochs": 1}
    seen = _spy_fit(monkeypatch, R2AD2(digits_model, n_snapshots=1, **cheap), loader)
    assert len(seen["snapshots"][0]) == n and len(seen["alarm_labels"]) == n
    given = R2AD2(digits_model, snapshots=[digits_model, digits_model], **cheap)
    seen = _spy_fit(monkeypatch, given, loader)
    assert "snapshots" not in seen and len(seen["alarm_labels"]) == n


def test_too_few_id_samples_for_the_held_out_split_are_refused_at_fit(digits_model, digits):
    x, y = digits.train.tensors
    loader = DataLoader(TensorDataset(x[:2], y[:2]), batch_size=4)
    with pytest.raises(ValueError, match="ID samples"):
        R2AD2(digits_model, **FAST).fit(loader)
