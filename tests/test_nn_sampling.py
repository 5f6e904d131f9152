"""The bounded, class-balanced sample: water-filling cap, bottom-k per class, streaming, keys."""

from __future__ import annotations

import pytest
import torch

from uniad_plugin.nn.sampling import (
    BoundedSample,
    bounded_rows,
    class_cap,
    content_keys,
    position_keys,
)


def _data(n=3000, k=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (n,), generator=g)
    y[:k] = torch.arange(k)  # every class present
    x = torch.randn(n, 5, generator=g)
    return x, y


@pytest.mark.parametrize(
    "counts, budget, expected",
    [
        ([5, 10, 100], 50, 35),  # small classes whole, the rest share what is left
        ([5, 10, 100], 12, 4),
        ([5, 10, 100], 115, None),  # everything fits: nothing dropped
        ([5, 10, 100], None, None),
        ([100, 100], 1, 0),
    ],
)
def test_class_cap_is_water_filling(counts, budget, expected):
    assert class_cap(torch.tensor(counts), budget) == expected


def test_bounded_rows_keeps_the_smallest_keys_of_each_class_in_key_order():
    x, y = _data()
    keys = content_keys(x, y, seed=0)
    counts = torch.bincount(y)
    keep = bounded_rows(keys, y, counts, 700)
    cap = class_cap(counts, 700)
    kept_counts = torch.bincount(y[keep], minlength=len(counts))
    assert int(kept_counts.sum()) <= 700 and (kept_counts == torch.clamp(counts, max=cap)).all()
    for k in range(len(counts)):
        mine = keys[y == k].sort().values[:cap]
        assert torch.equal(keys[keep][y[keep] == k].sort().values, mine)
    assert (keys[keep].diff() >= 0).all()  # ordered by key
    # the same sample, in the same order, whatever the order of the rows
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(1))
    keep_perm = bounded_rows(keys[perm], y[perm], counts, 700)
    assert torch.equal(keys[perm][keep_perm], keys[keep])
    assert bounded_rows(keys, y, counts, len(y)) is None


@pytest.mark.parametrize("batch", [1, 37, 400, 5000])
def test_stream_gives_the_sample_of_all_rows_in_bounded_memory(batch):
    x, y = _data()
    keys = content_keys(x, y, seed=3)
    budget = 300
    sample = BoundedSample(7, budget)
    most = 0
    for xb, yb, kb in zip(x.split(batch), y.split(batch), keys.split(batch)):
        sample.add(kb, yb, [xb, 2 * xb])
        most = max(most, sample._held)
    assert most <= 1.5 * budget + batch
    k, ys, (rows, twice) = sample.finish()
    keep = bounded_rows(keys, y, torch.bincount(y), budget)
    assert torch.equal(k, keys[keep]) and torch.equal(ys, y[keep])
    assert torch.equal(rows, x[keep]) and torch.equal(twice, 2 * x[keep])
    assert torch.equal(sample.counts, torch.bincount(y))


def test_shards_gathered_and_sampled_again_give_the_one_pass_sample():
    x, y = _data()
    keys = content_keys(x, y, seed=0)
    budget = 250
    shards = []
    for r in range(3):  # interleaved, as a DistributedSampler splits
        s = BoundedSample(7, budget)
        for sl in torch.arange(r, len(y), 3).split(64):
            s.add(keys[sl], y[sl], [x[sl]])
        shards.append((s.finish(), s.counts))
    k = torch.cat([sh[0][0] for sh in shards])
    ys = torch.cat([sh[0][1] for sh in shards])
    counts = torch.stack([sh[1] for sh in shards]).sum(0)
    keep = bounded_rows(k, ys, counts, budget)
    whole = bounded_rows(keys, y, torch.bincount(y), budget)
    assert torch.equal(k[keep], keys[whole])


def test_below_the_budget_every_row_is_kept_in_stream_order():
    x, y = _data(n=500)
    sample = BoundedSample(7, 500)
    for xb, yb in zip(x.split(64), y.split(64)):
        sample.add(content_keys(xb, yb, 0), yb, [xb])
    _, ys, (rows,) = sample.finish()
    assert torch.equal(rows, x) and torch.equal(ys, y)


def test_content_keys_depend_on_the_row_label_and_seed_only():
    x, y = _data(n=200)
    keys = content_keys(x, y, seed=0)
    # the same row gets the same key in another batch, position or shard
    assert torch.equal(content_keys(x[50:70], y[50:70], seed=0), keys[50:70])
    assert torch.equal(content_keys(x.flip(0), y.flip(0), seed=0), keys.flip(0))
    assert len(keys.unique()) == len(keys)
    assert not torch.equal(content_keys(x, y, seed=1), keys)
    assert not torch.equal(content_keys(x, (y + 1) % 7, seed=0), keys)
    assert not torch.equal(content_keys(x, None, seed=0), keys)
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        assert content_keys(x.to(dtype)[:, None], y, seed=0).shape == (200,)
    with pytest.raises(TypeError, match="floating point"):
        content_keys(y[:, None], None, seed=0)


def test_keys_look_uniform():
    x = torch.rand(20000, 3, generator=torch.Generator().manual_seed(0))
    for keys in (content_keys(x, None, 0), position_keys(20000, 0)):
        assert abs(float((keys < 0).float().mean()) - 0.5) < 0.02
        assert abs(float((keys & 1).float().mean()) - 0.5) < 0.02
    assert torch.equal(position_keys(100, 5), position_keys(100, 5))
    assert not torch.equal(position_keys(100, 5), position_keys(100, 6))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="budget"):
        BoundedSample(3, 0)
    with pytest.raises(ValueError, match="num_classes"):
        BoundedSample(0, 10)
    s = BoundedSample(3, 10)
    with pytest.raises(ValueError, match=r"labels in \[0, 3\)"):
        s.add(torch.zeros(2, dtype=torch.long), torch.tensor([0, 3]), [torch.zeros(2, 1)])
    with pytest.raises(ValueError, match="at least one batch"):
        s.finish()
