"""Running the evaluation over several processes with ``torch.distributed`` (``torchrun``).

One process behaves exactly as without this module. Under ``torchrun`` (or in a user's own
distributed script that has initialised the default process group), the heavy passes are
split over the ranks and their results gathered, so that every rank holds the same data and
fits the same detectors:

- feature extraction for fitting: each rank extracts a contiguous shard of the ID training
  data; the representations are gathered (in data order) and every rank fits on all of them;
- adversarial generation: each rank attacks a contiguous block of the attack batches, each
  batch seeded on its own, so the set equals that of a single process with the same seed;
- scoring: each rank scores a contiguous shard of every set; the scores are gathered in data
  order, every rank computes the same metrics, and only rank 0 writes files.

This module imports ``torch.distributed`` only when a process group is initialised or asked
for (:func:`init_from_env`): a single process never touches it.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "all_true",
    "assign_work",
    "barrier",
    "broadcast_module",
    "broadcast_object",
    "gather_cat",
    "gather_objects",
    "gather_tree",
    "init_from_env",
    "is_active",
    "is_local_main",
    "is_main",
    "launched_distributed",
    "local_device",
    "local_rank",
    "main_first",
    "rank",
    "shard_bounds",
    "shard_indices",
    "world_size",
]

#: default timeout of the collectives (seconds): a rank that fails ends the others by then
DEFAULT_TIMEOUT_S = 1800.0

_ENV_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")

#: elements per transport buffer of :func:`gather_cat` (64 Mi: 256 MB of float32)
_CHUNK_ELEMENTS = 1 << 26


def _dist() -> Any | None:
    """``torch.distributed`` if a process group is initialised, else ``None`` (no import)."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return None
    return dist


def is_active() -> bool:
    """Whether this process is one of several in an initialised process group."""
    dist = _dist()
    return dist is not None and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    dist = _dist()
    return dist.get_rank() if dist is not None else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    dist = _dist()
    return dist.get_world_size() if dist is not None else 1


def is_main() -> bool:
    """Whether this process is rank 0 (the one that prints and writes files)."""
    return rank() == 0


def local_rank() -> int:
    """This process's rank on its machine (``LOCAL_RANK``, set by ``torchrun``; else
    :func:`rank`)."""
    return int(os.environ.get("LOCAL_RANK", rank()))


def is_local_main() -> bool:
    """Whether this process is the first on its machine (it downloads and writes caches)."""
    return local_rank() == 0


def launched_distributed() -> bool:
    """Whether the environment describes several processes (``torchrun`` sets it)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_device(device: str | torch.device) -> torch.device:
    """The device this rank works on: ``cuda`` without an index becomes this process's GPU in
    a distributed run (``cuda:LOCAL_RANK``, modulo the GPUs it can see); anything else is
    kept.

    :raises ValueError: for ``cuda:N`` with several processes on one machine (they would all
        share one GPU)
    """
    device = torch.device(device)
    if device.type != "cuda" or not launched_distributed():
        return device
    if device.index is not None:
        if int(os.environ.get("LOCAL_WORLD_SIZE", "1")) > 1:
            raise ValueError(
                f"expected device 'cuda' (each process takes its own GPU) with several "
                f"processes per machine, got {str(device)!r}"
            )
        return device
    count = torch.cuda.device_count()
    return torch.device("cuda", local_rank() % count if count else local_rank())


def init_from_env(
    device: str | torch.device = "cpu",
    backend: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> bool:
    """Join the process group that ``torchrun`` describes in the environment.

    Does nothing (and imports nothing) for a single process (``WORLD_SIZE`` unset or 1) or
    when a process group is already initialised (a user's own script).

    :param device: the run's device; ``cuda`` selects ``cuda:LOCAL_RANK`` for this process
    :param backend: ``"gloo"`` or ``"nccl"``; default ``nccl`` for CUDA, else ``gloo``
    :param timeout_s: timeout of every collective: a rank that fails or hangs ends the others
        with an error after at most this long, never a silent hang
    :return: whether this call initialised a process group
    :raises ValueError: on an unknown backend, ``nccl`` without CUDA or a bad timeout
    :raises RuntimeError: if the environment lacks a variable that ``torchrun`` sets
    """
    if not launched_distributed() or _dist() is not None:
        return False
    if not timeout_s > 0:
        raise ValueError(f"expected a timeout > 0 seconds, got {timeout_s!r}")
    missing = [v for v in _ENV_VARS if v not in os.environ]
    if missing:
        raise RuntimeError(
            f"expected the variables {list(_ENV_VARS)} of a torchrun launch, missing {missing}; "
            "start with: torchrun --standalone --nproc_per_node N -m uniad_plugin.cli ..."
        )
    device = local_device(device)
    if backend is None:
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"expected backend 'gloo' or 'nccl', got {backend!r}")
    if backend == "nccl" and device.type != "cuda":
        raise ValueError(f"the nccl backend needs device 'cuda', got device {str(device)!r}")
    import torch.distributed as dist

    kwargs: dict[str, Any] = {"timeout": datetime.timedelta(seconds=timeout_s)}
    if device.type == "cuda":
        torch.cuda.set_device(device)
        kwargs["device_id"] = device
    dist.init_process_group(backend=backend, **kwargs)
    return True


def barrier() -> None:
    """Wait for every rank (nothing for a single process)."""
    dist = _dist()
    if dist is not None and dist.get_world_size() > 1:
        dist.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """The first process of each machine runs the block first (e.g. a download into a local
    folder), the others after it."""
    if not is_active():
        yield
        return
    if not is_local_main():
        barrier()
    yield
    if is_local_main():
        barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` (picklable) on every rank; ``obj`` for a single process."""
    if not is_active():
        return obj
    box = [obj]
    _dist().broadcast_object_list(box, src=src)
    return box[0]


def shard_bounds(n: int, index: int | None = None, count: int | None = None) -> tuple[int, int]:
    """``(start, stop)`` of this rank's contiguous share of ``n`` items (the ranks' shares
    are in rank order and cover ``0..n`` exactly once)."""
    index = rank() if index is None else index
    count = world_size() if count is None else count
    return n * index // count, n * (index + 1) // count


def shard_indices(n: int) -> range:
    """The indices of this rank's contiguous share of ``n`` items."""
    return range(*shard_bounds(n))


def _transport_device() -> torch.device:
    dist = _dist()
    if dist is not None and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` for a single process."""
    if not is_active():
        return [obj]
    dist = _dist()
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_cat(t: Tensor) -> Tensor:
    """Every rank's ``t`` concatenated along dim 0, in rank order, on ``t``'s device.

    The ranks' tensors may differ in length (dim 0); their other dimensions and dtypes must
    agree (an empty shard may have any shape).
    """
    if not is_active():
        return t
    dist = _dist()
    metas = gather_objects((tuple(t.shape), t.dtype))
    rows = [s[0] if len(s) else 0 for s, _ in metas]
    full = [(s, d) for s, d in metas if len(s) and s[0] > 0]
    if not full:
        return t
    tail, dtype = full[0][0][1:], full[0][1]
    if any(s[1:] != tail or d != dtype for s, d in full):
        raise ValueError(
            "expected tensors that agree beyond dim 0 on every rank, got "
            f"{[(tuple(s), str(d)) for s, d in metas]}"
        )
    width = max(rows)
    dev = _transport_device()
    local = t.reshape(-1, *tail) if t.numel() else t.new_zeros((0, *tail))
    # in chunks, so the transport buffers (on the GPU for nccl) stay small whatever the size
    step = max(1, _CHUNK_ELEMENTS // max(1, math.prod(tail)))
    parts: list[list[Tensor]] = [[] for _ in rows]
    for start in range(0, width, step):
        stop = min(start + step, width)
        buf = torch.zeros((stop - start, *tail), dtype=dtype, device=dev)
        piece = local[start:stop]
        buf[: len(piece)] = piece.to(dev, dtype)
        bufs = [torch.empty_like(buf) for _ in rows]
        dist.all_gather(bufs, buf)
        for r, b in enumerate(bufs):
            n = min(rows[r], stop) - start
            if n > 0:
                parts[r].append(b[:n].to(t.device))
    return torch.cat([p for rank_parts in parts for p in rank_parts])


def gather_tree(value: Any) -> Any:
    """:func:`gather_cat` on every tensor of ``value`` (a tensor, or a dict / list / tuple of
    them, nested); other leaves must be equal on every rank.

    :raises ValueError: if a non-tensor leaf differs between ranks
    """
    if isinstance(value, Tensor):
        return gather_cat(value)
    if isinstance(value, dict):
        return {k: gather_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and any(isinstance(v, Tensor) for v in value):
        return type(value)(gather_tree(v) for v in value)
    if is_active():
        seen = gather_objects(value)
        if any(v != seen[0] for v in seen):
            raise ValueError(f"expected the same value on every rank, got {seen}")
    return value


def broadcast_module(module: torch.nn.Module, src: int = 0) -> torch.nn.Module:
    """Rank ``src``'s parameters and buffers copied into ``module`` on every rank (in place)."""
    if not is_active():
        return module
    dist = _dist()
    dev = _transport_device()
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            buf = t.detach().to(dev)
            dist.broadcast(buf, src=src)
            t.copy_(buf.to(t.device))
    return module


def assign_work(costs: Sequence[float], count: int | None = None) -> list[int]:
    """The rank that does each of several independent jobs of the given ``costs``: the
    largest job first, each to the least loaded rank (the same answer on every rank)."""
    count = world_size() if count is None else count
    load = [0.0] * count
    owner = [0] * len(costs)
    for job in sorted(range(len(costs)), key=lambda j: (-costs[j], j)):
        r = min(range(count), key=lambda i: (load[i], i))
        owner[job] = r
        load[r] += costs[job]
    return owner


def all_true(flag: bool) -> bool:
    """Whether ``flag`` holds on every rank."""
    return all(gather_objects(bool(flag)))
