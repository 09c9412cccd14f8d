"""Which process am I, under torchrun / accelerate launch: rank 0 owns the run directory and the console.

Every rank trains; only rank 0 writes run files (recipe.yaml, run.json, metrics.jsonl, adapter/, checkpoint
markers) and prints progress. Rank and world size come from the environment the launchers set (RANK,
LOCAL_RANK, WORLD_SIZE), so asking costs nothing and imports nothing: the CLI may ask before torch loads.
A plain `lorafit train` is world size 1, where every helper here is a no-op.

Collectives (barrier, sums) go through accelerate's PartialState, the same object Trainer builds later, so
the process group is created once with the backend Trainer would choose (gloo on CPU, nccl on CUDA).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import timedelta
from typing import Iterator, Sequence

# Trainer's default ddp_timeout; the group created here is the one Trainer reuses.
TIMEOUT = timedelta(seconds=1800)
# Set by `lorafit launch` for the job it starts: the file where rank 0 leaves the exit code it failed with
# (torchrun reports any failure as 1).
EXIT_FILE_ENV = "LORAFIT_EXIT_FILE"


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_distributed() -> bool:
    return world_size() > 1


def is_main() -> bool:
    """Rank 0 of the whole job (not of each node): the one process that writes the run directory."""
    return rank() == 0


def _state():
    """accelerate's PartialState, which initialises torch.distributed on first use."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available(), timeout=TIMEOUT)


def barrier() -> None:
    """Wait for every rank (a no-op in a single process)."""
    if is_distributed():
        _state().wait_for_everyone()


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (filling caches: converted models, tokenized data), then the others."""
    if not is_distributed():
        yield
        return
    with _state().main_process_first():
        yield


def shutdown(failed: bool = False) -> None:
    """Destroy the process group once this rank is done (torch's advice for every distributed program).

    Left to the interpreter's exit, gloo's worker threads can still be running when the C++ runtime tears
    down, and the process dies with SIGABRT ("terminate called without an active exception"): torchrun then
    reports a finished job as failed. After a failure only gloo's group is destroyed: NCCL's waits for the
    collectives still in flight, which a failed rank may never complete."""
    import sys

    if not is_distributed() or "torch" not in sys.modules:
        return
    import torch.distributed as torch_dist

    if torch_dist.is_available() and torch_dist.is_initialized() and (not failed or torch_dist.get_backend() == "gloo"):
        torch_dist.destroy_process_group()


def _tensor(values: Sequence[float]):
    import torch
    import torch.distributed as torch_dist

    on_cuda = torch_dist.get_backend() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if on_cuda else torch.device("cpu")
    return torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)


def all_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sum over ranks; every rank must call it at the same point (it is a collective)."""
    if not is_distributed():
        return [float(v) for v in values]
    import torch.distributed as torch_dist

    _state()
    t = _tensor(values)
    torch_dist.all_reduce(t, op=torch_dist.ReduceOp.SUM)
    return t.tolist()


def all_max(value: int) -> int:
    """The largest value over ranks (a collective, like all_sum)."""
    if not is_distributed():
        return value
    import torch.distributed as torch_dist

    _state()
    t = _tensor([value])
    torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
    return int(t.item())
