"""Tests of uniad_plugin.anomalies.adversarial and .confined: attacks on the value grid."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from uniad_plugin.anomalies import (
    ATTACKS,
    AdversarialOptions,
    AdversarialSet,
    AttackSpec,
    is_on_grid,
    make_adversarial,
    to_grid,
)
from uniad_plugin.anomalies import adversarial as adv_module

# --------------------------------------------------------------------------- adversarial

#: small budgets of every attack for the 8x8 digits; CW/DeepFool/PGD with few steps (fast)
ATTACK_CASES = {
    "fgsm": (0.3, None),
    "pgd_linf": (0.2, {"steps": 10}),
    "pgd_l2": (1.5, {"steps": 10}),
    "pgd_linf_obj": (0.3, {"steps": 10}),
    "pgd_l2_obj": (2.0, {"steps": 10}),
    "deepfool": (1.5, {"steps": 10}),
    "cw_l2": (1.5, {"steps": 20, "binary_search_steps": 2, "initial_const": 1.0}),
}


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@torch.no_grad()
def _pred(model, x):
    return model(x).argmax(1)


def test_attack_names():
    assert sorted(ATTACKS) == sorted(ATTACK_CASES)
    assert {spec.norm for spec in ATTACKS.values()} == {"linf", "l2"}


#: the fast tier (``-m "not slow"``) keeps the digits' grid (16) of the cheap attacks
_SLOW_ATTACKS = {"deepfool", "cw_l2"}


@pytest.mark.parametrize(
    "attack,levels",
    [
        pytest.param(
            attack,
            levels,
            marks=[pytest.mark.slow] if levels != 16 or attack in _SLOW_ATTACKS else [],
        )
        for attack in sorted(ATTACK_CASES)
        for levels in (16, 255, None)
    ],
)
def test_make_adversarial_keeps_only_successful(digits, digits_model, attack, levels):
    eps, params = ATTACK_CASES[attack]
    before = _state(digits_model)
    grads = [p.requires_grad for p in digits_model.parameters()]
    s = make_adversarial(
        digits_model,
        digits.attack,
        attack,
        eps,
        max_samples=48,
        progress=False,
        attack_params=params,
        levels=levels,
    )
    name = f"{attack}@{eps:g}" + ("" if levels else " (continuous)")
    assert isinstance(s, AdversarialSet) and s.kind == "AD" and s.name == name
    assert len(s) > 0, f"{attack} produced no successful adversarial"
    assert s.info["grid_levels"] == levels
    if levels is not None:  # on the grid: every kept one is misclassified AFTER rounding
        assert is_on_grid(s.x, levels) and is_on_grid(s.clean, 16)
    assert s.info["n_success"] <= s.info["n_success_continuous"]
    assert s.info["success_rate_continuous"] == s.info["n_success_continuous"] / 48
    assert s.x.shape == (len(s), 1, 8, 8) and s.x.dtype == torch.float32
    assert s.x.min() >= 0.0 and s.x.max() <= 1.0
    # every kept sample fools the model, its clean source did not
    assert (_pred(digits_model, s.x) != s.source_labels).all()
    assert torch.equal(_pred(digits_model, s.clean), s.source_labels)
    assert torch.equal(_pred(digits_model, s.x), s.adv_pred)
    delta = (s.x - s.clean).flatten(1)
    size = delta.abs().amax(1) if ATTACKS[attack].norm == "linf" else delta.norm(dim=1)
    assert (size <= eps + 1e-5).all() and (size > 0).all()
    assert all(s[i][1] == -1 for i in range(len(s)))
    info = s.info
    assert info["attack"] == attack and info["eps"] == eps
    assert info["n_attacked"] == 48 and info["n_success"] == len(s)
    assert s.success_rate == pytest.approx(len(s) / 48)
    assert info["source_labels"] == s.source_labels.tolist()
    assert info["adv_pred"] == s.adv_pred.tolist()
    assert info["mean_linf"] == pytest.approx(delta.abs().amax(1).mean().item(), rel=1e-5)
    assert info["mean_l2"] == pytest.approx(delta.norm(dim=1).mean().item(), rel=1e-5)
    # the model is left untouched
    assert not digits_model.training
    assert [p.requires_grad for p in digits_model.parameters()] == grads
    assert all(torch.equal(before[k], v) for k, v in digits_model.state_dict().items())


def test_fgsm_linf_budget_is_exact(digits, digits_model):
    # FGSM moves every pixel by exactly eps unless the bounds clip it (continuous), or by the
    # largest grid step within eps (on the grid of the data)
    kw = {"progress": False, "max_samples": 32}
    for levels, step in [(None, 0.3), (16, 4 / 16)]:
        s = make_adversarial(digits_model, digits.attack, "fgsm", 0.3, levels=levels, **kw)
        d = (s.x - s.clean).abs()
        at_bound = (s.x == 0) | (s.x == 1)
        assert torch.allclose(d[~at_bound], torch.full_like(d[~at_bound], step), atol=1e-5)


@pytest.mark.parametrize("attack", ["pgd_linf_obj", "pgd_l2_obj"])
@pytest.mark.parametrize(
    "levels",
    [16, pytest.param(255, marks=pytest.mark.slow), pytest.param(None, marks=pytest.mark.slow)],
)
def test_object_confined_attacks_leave_the_background(digits, digits_model, attack, levels):
    eps, params = ATTACK_CASES[attack]
    kw = {"progress": False, "max_samples": 64, "attack_params": params, "levels": levels}
    s = make_adversarial(digits_model, digits.attack, attack, eps, **kw)
    assert len(s) > 5 and (_pred(digits_model, s.x) != s.source_labels).all()
    background = s.clean == 0
    assert background.any() and torch.equal(s.x[background], s.clean[background])  # bit-identical
    # no object pixel becomes background: a pixel count sees the same image
    assert torch.equal((s.x != 0).flatten(1).sum(1), (s.clean != 0).flatten(1).sum(1))
    assert (s.x != s.clean).any()
    # the usual attack does change the background
    usual = make_adversarial(digits_model, digits.attack, attack[:-4], eps, **kw)
    assert ((usual.x != 0) & (usual.clean == 0)).any()


def test_object_confined_attack_class_masks_every_step():
    from uniad_plugin.anomalies.confined import ObjectL2PGD, ObjectLinfPGD

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
    import foolbox

    fmodel = foolbox.PyTorchModel(model, bounds=(-1.0, 1.0))
    x = torch.full((8, 1, 4, 4), -1.0)  # background is the lower bound
    x[:, :, 1:3, 1:3] = 0.5
    y = model(x).argmax(1)
    for cls, eps in [(ObjectLinfPGD, 0.4), (ObjectL2PGD, 1.0)]:
        attack = cls(steps=5, rel_stepsize=0.5, random_start=True, floor_step=0.25)
        _, adv, _ = attack(fmodel, x, y, epsilons=eps)
        assert torch.equal(adv[x == -1], x[x == -1]) and (adv[x != -1] >= -0.75).all()
        assert (adv != x).any()
    with pytest.raises(ValueError, match="floor_step"):
        ObjectLinfPGD(steps=1, rel_stepsize=0.1, random_start=False, floor_step=-1)


def test_rounding_undoes_tiny_perturbations(digits, digits_model):
    # an L-inf budget under one grid step (1/16): foolbox fools the model in continuous values,
    # rounding onto the digits' grid gives back the sources, and those successes are dropped
    kw = {"progress": False, "max_samples": 128}
    cont = make_adversarial(digits_model, digits.attack, "fgsm", 0.06, levels=None, **kw)
    s = make_adversarial(digits_model, digits.attack, "fgsm", 0.06, levels=16, **kw)
    assert cont.info["n_success"] > 0
    assert s.info["n_success_continuous"] == cont.info["n_success"]
    assert s.info["success_rate_continuous"] == cont.info["success_rate"]
    assert len(s) == 0 and s.info["n_success"] == 0 and s.success_rate == 0.0
    # a budget of a few steps: some survive, some are undone; every kept one fools the model
    s = make_adversarial(digits_model, digits.attack, "fgsm", 0.15, levels=16, **kw)
    assert 0 < s.info["n_success"] < s.info["n_success_continuous"]
    assert (_pred(digits_model, s.x) != s.source_labels).all() and is_on_grid(s.x, 16)
    assert ((s.x - s.clean).abs().amax((1, 2, 3)) == 2 / 16).all()


class _Threshold(torch.nn.Module):
    """Class 1 if the mean pixel exceeds 127.3/255 (between two 8-bit grid values)."""

    def forward(self, x):
        m = x.flatten(1).mean(1, keepdim=True) - 127.3 / 255
        return torch.cat([-m, m], 1) * 1000


def test_recheck_with_a_hand_built_model(monkeypatch):
    # sources at 127/255 (class 0); the fake attack adds 0.4/255 to four of them (fooled in
    # continuous values, rounded back to the source on the 8-bit grid) and 1/255 to two (one
    # full grid step: still fooled after rounding)
    x = torch.full((6, 1, 4, 4), 127 / 255)
    y = torch.zeros(6, dtype=torch.long)
    step = torch.tensor([0.4, 0.4, 0.4, 0.4, 1.0, 1.0]).view(-1, 1, 1, 1) / 255

    def make(inp):
        return inp + step[: len(inp)], inp + step[: len(inp)]

    monkeypatch.setitem(ATTACKS, "fgsm", _fake_spec(make))
    model = _Threshold()
    kw = {"progress": False, "batch_size": 8}
    s = make_adversarial(model, TensorDataset(x, y), "fgsm", 2 / 255, **kw)
    cont = make_adversarial(model, TensorDataset(x, y), "fgsm", 2 / 255, levels=None, **kw)
    assert cont.info["n_success"] == 6 and cont.name == "fgsm@2/255 (continuous)"
    assert s.info["n_success_continuous"] == 6 and s.info["success_rate_continuous"] == 1.0
    assert s.info["n_success"] == 2 and s.info["success_rate"] == pytest.approx(2 / 6)
    assert torch.equal(s.x, torch.full((2, 1, 4, 4), 128 / 255))
    assert (_pred(model, s.x) == 1).all() and (
        _pred(model, to_grid(make(x)[1][:4], 255, (0, 1))) == 0
    ).all()
    assert s.info["mean_linf"] == pytest.approx(1 / 255, rel=1e-5)


@pytest.mark.slow
def test_adversarial_restores_training_mode_and_rng(digits, digits_model):
    model = copy.deepcopy(digits_model).train()
    model[1].eval()  # a mixed state must survive too
    rng = torch.get_rng_state()
    make_adversarial(model, digits.attack, "pgd_linf", 0.1, progress=False, max_samples=8)
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training and not model[1].training and model[0].training


def test_pgd_deterministic_under_seed(digits, digits_model):
    kw = {"progress": False, "max_samples": 32, "attack_params": {"steps": 5}}
    loader = DataLoader(digits.attack, batch_size=16, shuffle=False)
    a = make_adversarial(digits_model, loader, "pgd_linf", 0.2, seed=3, **kw)
    b = make_adversarial(digits_model, digits.attack, "pgd_linf", 0.2, seed=3, **kw)
    c = make_adversarial(digits_model, digits.attack, "pgd_linf", 0.2, seed=4, **kw)
    assert torch.equal(a.x, b.x) and torch.equal(a.source_labels, b.source_labels)
    assert not (a.x.shape == c.x.shape and torch.equal(a.x, c.x))


class _Share:
    """Process ``index`` of ``count`` as a :class:`WorkSharing` test double: it records
    its calls; ``gather_tree`` puts the ``others``' blocks (keyed by index) around its own."""

    def __init__(self, index, count, others=None):
        self.index, self.count, self.others, self.calls, self.block = index, count, others, [], None

    def shard_bounds(self, n):
        self.calls.append("shard_bounds")
        return n * self.index // self.count, n * (self.index + 1) // self.count

    def gather_tree(self, value):
        self.calls.append("gather_tree")
        self.block = value
        if self.others is None:
            raise _Gathered
        blocks = [self.others.get(i, value) for i in range(self.count)]
        return {k: torch.cat([b[k] for b in blocks]) for k in value}

    def broadcast_object(self, obj):
        self.calls.append("broadcast_object")
        return obj

    def all_true(self, flag):
        self.calls.append("all_true")
        return bool(flag)

    def is_local_main(self):
        self.calls.append("is_local_main")
        return self.index == 0


class _Gathered(Exception):
    pass


def test_shared_work_enters_through_the_seam_and_crafts_the_same_set(
    digits, digits_model, tmp_path
):
    kw = {"progress": False, "max_samples": 40, "batch_size": 8, "attack_params": {"steps": 5}}
    alone = make_adversarial(digits_model, digits.attack, "pgd_linf", 0.2, seed=2, **kw)
    # the second of two processes attacks its block of batches, then would gather
    second = _Share(1, 2)
    with pytest.raises(_Gathered):
        make_adversarial(digits_model, digits.attack, "pgd_linf", 0.2, seed=2, sharing=second, **kw)
    assert second.calls == ["broadcast_object", "shard_bounds", "gather_tree"]
    assert 0 < len(second.block["x"]) < 40
    # the first one gathers both blocks: the set of a single process, bit for bit
    first = _Share(0, 2, others={1: second.block})
    shared = make_adversarial(
        digits_model,
        digits.attack,
        "pgd_linf",
        0.2,
        seed=2,
        sharing=first,
        cache_dir=tmp_path,
        **kw,
    )
    assert first.calls == [
        "all_true",
        "broadcast_object",
        "shard_bounds",
        "gather_tree",
        "is_local_main",
    ]
    assert torch.equal(shared.x, alone.x) and torch.equal(shared.clean, alone.clean)
    assert torch.equal(shared.source_labels, alone.source_labels)
    assert shared.info == alone.info and len(list(tmp_path.glob("*.pt"))) == 1
    # the default is one process doing all the work
    assert adv_module.SINGLE_PROCESS.shard_bounds(5) == (0, 5)
    assert adv_module.SINGLE_PROCESS.is_local_main() and adv_module.SINGLE_PROCESS.all_true(True)


def test_adversarial_cache(digits, digits_model, tmp_path, monkeypatch):
    kw = {"progress": False, "max_samples": 16, "cache_dir": tmp_path}
    first = make_adversarial(digits_model, digits.attack, "fgsm", 0.2, **kw)
    files = list(tmp_path.glob("*.pt"))
    assert len(files) == 1 and len(files[0].stem) == 64

    def boom(*args, **kwargs):
        raise AssertionError("attack ran although the result is cached")

    monkeypatch.setattr(adv_module, "_run_attack", boom)
    second = make_adversarial(digits_model, digits.attack, "fgsm", 0.2, **kw)
    assert torch.equal(first.x, second.x) and torch.equal(first.clean, second.clean)
    assert torch.equal(first.source_labels, second.source_labels)
    assert first.info == second.info and second.name == "fgsm@0.2" and second.kind == "AD"
    # every ingredient of the key changes it: eps, seed, params, grid, data, model weights
    with pytest.raises(AssertionError, match="cached"):
        make_adversarial(digits_model, digits.attack, "fgsm", 0.2, levels=16, **kw)
    with pytest.raises(AssertionError, match="cached"):
        make_adversarial(digits_model, digits.attack, "fgsm", 0.2, levels=None, **kw)
    with pytest.raises(AssertionError, match="cached"):
        make_adversarial(digits_model, digits.attack, "fgsm", 0.25, **kw)
    with pytest.raises(AssertionError, match="cached"):
        make_adversarial(digits_model, digits.attack, "fgsm", 0.2, seed=1, **kw)
    with pytest.raises(AssertionError, match="cached"):
        make_adversarial(
            digits_model, digits.attack, "fgsm", 0.2, attack_params={"random_start": True}, **kw
        )
    x, y = digits.attack.tensors
    with pytest.raises(AssertionError, match="cached"):
        make_adversarial(digits_model, TensorDataset(x.flip(0), y.flip(0)), "fgsm", 0.2, **kw)
    other = copy.deepcopy(digits_model)
    with torch.no_grad():
        other[-1].bias.add_(1e-3)
    with pytest.raises(AssertionError, match="cached"):
        make_adversarial(other, digits.attack, "fgsm", 0.2, **kw)


class _FakeAttack:
    """Returns fixed 'adversarials' for every input, to test the success filter."""

    def __init__(self, make):
        self.make = make

    def __call__(self, fmodel, x, y, *, epsilons):
        raw, clipped = self.make(x)
        return raw, clipped, torch.ones(len(x), dtype=torch.bool)


def _fake_spec(make):
    class _Spec(AttackSpec):
        def build(self, params):
            return _FakeAttack(make)

    return _Spec("none", "linf", {})


@pytest.mark.parametrize(
    "make",
    [
        # C&W's failure marker: raw all zero; its projection onto the eps-ball (here the raw
        # itself, with a huge eps) fools the model for most labels but must be dropped
        lambda x: (torch.zeros_like(x), torch.zeros_like(x)),
        lambda x: (x, torch.full_like(x, float("nan"))),  # non-finite
        lambda x: (x, (1 - x)),  # far outside the budget eps = 0.5 (L-inf)
    ],
    ids=["cw_all_zero", "nan", "outside_eps"],
)
def test_failures_are_dropped(digits, digits_model, monkeypatch, make):
    x = digits.attack.tensors[0][:64]
    eps = 100.0 if make(x)[0].abs().sum() == 0 else 0.5
    # check that without the filter these outputs would count as successes
    if not torch.isnan(make(x)[1]).any():
        assert (_pred(digits_model, make(x)[1]) != digits.attack.tensors[1][:64]).any()
    monkeypatch.setitem(ATTACKS, "fgsm", _fake_spec(make))
    s = make_adversarial(digits_model, digits.attack, "fgsm", eps, progress=False, max_samples=64)
    assert len(s) == 0 and s.info["n_success"] == 0 and s.info["n_attacked"] == 64
    assert s.success_rate == 0.0 and s.info["mean_l2"] is None and s.x.shape == (0, 1, 8, 8)


def test_adversarial_bad_inputs(digits, digits_model):
    data = digits.attack
    with pytest.raises(ValueError, match="unknown attack 'nope'.*fgsm"):
        make_adversarial(digits_model, data, "nope", 0.1)
    for eps in (0, -0.1, 0.0, float("nan")):
        with pytest.raises(ValueError, match="eps"):
            make_adversarial(digits_model, data, "fgsm", eps)
    with pytest.raises(ValueError, match="unknown attack_params.*steps"):
        make_adversarial(digits_model, data, "pgd_linf", 0.1, attack_params={"stepz": 3})
    x, y = data.tensors
    with pytest.raises(ValueError, match="within bounds"):
        make_adversarial(digits_model, TensorDataset(x * 2, y), "fgsm", 0.1)
    with pytest.raises(ValueError, match="bounds"):
        make_adversarial(digits_model, data, "fgsm", 0.1, bounds=(1.0, 0.0))
    with pytest.raises(TypeError, match="nn.Module"):
        make_adversarial(lambda t: t, data, "fgsm", 0.1)
    with pytest.raises(TypeError, match="Dataset or DataLoader"):
        make_adversarial(digits_model, [x, y], "fgsm", 0.1)
    with pytest.raises(ValueError, match="expected levels"):
        make_adversarial(digits_model, data, "fgsm", 0.1, levels=-1)
    with pytest.raises(TypeError, match="expected keyword arguments among"):
        make_adversarial(digits_model, data, "fgsm", 0.1, level=16)
    with pytest.raises(TypeError, match="AdversarialOptions"):
        make_adversarial(digits_model, data, "fgsm", 0.1, options={"levels": 16})


@pytest.mark.slow
def test_options_object_and_keywords_agree(digits, digits_model):
    opts = AdversarialOptions(levels=16, max_samples=16, progress=False, seed=2)
    a = make_adversarial(digits_model, digits.attack, "pgd_linf", 0.2, options=opts)
    b = make_adversarial(
        digits_model,
        digits.attack,
        "pgd_linf",
        0.2,
        levels=16,
        max_samples=16,
        progress=False,
        seed=2,
    )
    c = make_adversarial(digits_model, digits.attack, "pgd_linf", 0.2, options=opts, levels=255)
    assert torch.equal(a.x, b.x) and a.info == b.info
    assert c.info["grid_levels"] == 255 and a.info["grid_levels"] == 16
