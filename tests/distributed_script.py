"""A user's own distributed script, run by tests/test_distributed.py under torchrun (or alone).

    python tests/distributed_script.py OUT.pt                 # one process
    torchrun --standalone --nproc_per_node 2 tests/distributed_script.py OUT.pt
    ... --fail-rank 1      # that rank raises before the first collective
    ... --hang-rank 1      # that rank sleeps instead of joining the collectives
    ... --timeout 5        # timeout of the collectives (seconds)
    ... --sphere-fail-rank 1   # UniformDetector's sphere training fails on that rank only

Trains a small digits CNN (rank 0; the others receive it), crafts a PGD set in several seeded
batches, fits UniformDetector, Mahalanobis, MultiMahalanobis and MaxSoftmax through UnifiedBenchmark and scores
every set. Rank 0 saves the adversarials, the rows, the raw scores and a digest of every
rank's fitted UniformDetector state to OUT.pt.
"""

from __future__ import annotations

import argparse
import hashlib
import time

import torch
from torch.utils.data import DataLoader

from uniad_plugin import distributed
from uniad_plugin.anomalies import make_adversarial
from uniad_plugin.benchmark import UnifiedBenchmark, build_detectors
from uniad_plugin.data import digits_splits
from uniad_plugin.models import digits_cnn, train_classifier


def _digest(state: object) -> str:
    h = hashlib.sha256()

    def walk(v: object) -> None:
        if isinstance(v, torch.Tensor):
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        elif isinstance(v, dict):
            for k in sorted(v, key=str):
                h.update(str(k).encode())
                walk(v[k])
        elif isinstance(v, (list, tuple)):
            for x in v:
                walk(x)
        else:
            h.update(repr(v).encode())

    walk(state)
    return h.hexdigest()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--fail-rank", type=int, default=None)
    p.add_argument("--hang-rank", type=int, default=None)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--sphere-fail-rank", type=int, default=None)
    args = p.parse_args()
    distributed.init_from_env("cpu", timeout_s=args.timeout)
    rank = distributed.rank()
    if rank == args.fail_rank:
        raise ValueError(f"injected failure on rank {rank}")
    if rank == args.hang_rank:
        time.sleep(120)
    if rank == args.sphere_fail_rank:  # this rank's share of UniformDetector's spheres fails
        from uniad_plugin.nn.spheres import ClassSpheres

        def boom(*_args, **_kwargs):
            raise MemoryError(f"injected sphere failure on rank {rank}")

        ClassSpheres.fit = boom
    splits = digits_splits(seed=0)
    torch.manual_seed(0)
    model = digits_cnn()
    if distributed.is_main():
        loader = DataLoader(
            splits.train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0)
        )
        train_classifier(model, loader, epochs=8, seed=0)
    model = distributed.broadcast_module(model).eval()
    adv = make_adversarial(
        model,
        splits.attack,
        "pgd_linf",
        0.1,
        batch_size=16,
        max_samples=60,
        progress=False,
        sharing=distributed,
    )
    bench = UnifiedBenchmark(splits.train, splits.test, [adv], id_val=splits.val, progress=False)
    entries = build_detectors(
        ["UniformDetector", "Mahalanobis", "MultiMahalanobis", "MaxSoftmax"],
        model,
        splits.test.tensors[0][:8],
        # a bound below the training set's size: only the kept rows travel between ranks
        detector_kwargs={"UniformDetector": {"max_fit_rows": 500}},
    )
    bench.fit(entries)
    rows = bench.evaluate(entries)
    uniform = next(e for e in entries if e.name == "UniformDetector")
    state = uniform.detector.state_dict() if uniform.ok else uniform.reason
    digests = distributed.gather_objects(_digest(state))
    reasons = distributed.gather_objects(uniform.reason)
    if distributed.is_main():
        torch.save(
            {
                "adv_x": adv.x,
                "rows": rows,
                "scores": bench.scores,
                "digests": digests,
                "world_size": distributed.world_size(),
                "uniform_reasons": reasons,
            },
            args.out,
        )
    if distributed.is_active():  # a process that leaves the group running may abort at exit
        import torch.distributed as dist

        dist.destroy_process_group()


if __name__ == "__main__":
    main()
