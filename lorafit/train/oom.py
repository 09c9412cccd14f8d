"""training.auto_batch_size: an out-of-memory step is answered with half the micro-batch and twice the
accumulation (the same global batch and data order), from the newest complete checkpoint."""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING

from lorafit import runs
from lorafit.core import dist
from lorafit.core.errors import OutOfMemory

if TYPE_CHECKING:
    from lorafit.recipe import Recipe
    from lorafit.train.state import Run


class HalveAndRetry(Exception):
    """`fit` ran out of memory where training.auto_batch_size may retry with half the micro-batch."""

    def __init__(self, step: int):
        super().__init__(f"out of memory at step {step}")
        self.step = step


def can_halve(recipe: Recipe) -> bool:
    """training.auto_batch_size applies to single-process runs: under DDP one rank's OOM leaves the others
    waiting in a collective, so there the error (exit 4) is the honest answer."""
    return recipe.training.auto_batch_size and recipe.training.batch_size > 1 and not dist.is_distributed()


def halve_batch(recipe: Recipe, step: int) -> tuple[Recipe, dict]:
    """The recipe with (about) half the micro-batch and accumulation raised to match, so the global batch and
    the data order stay the same, and the note run.json keeps of it."""
    t = recipe.training
    smaller = max(d for d in range(1, t.batch_size // 2 + 1) if t.batch_size % d == 0)  # 8 -> 4, 6 -> 3, 3 -> 1
    half = t.model_copy(update={"batch_size": smaller, "grad_accum": t.grad_accum * (t.batch_size // smaller)})
    note = {
        "at_step": step,
        "from": {"batch_size": t.batch_size, "grad_accum": t.grad_accum},
        "to": {"batch_size": half.batch_size, "grad_accum": half.grad_accum},
    }
    return recipe.model_copy(update={"training": half}), note


def halved(state: Run, step: int) -> Run:
    """The next attempt after an out-of-memory step: half the micro-batch, from the newest complete checkpoint
    (or from the start when there is none yet)."""
    halved, note = halve_batch(state.recipe, step)
    checkpoint = runs.latest_checkpoint(state.run_dir)
    start = (
        f"continuing from {checkpoint.name}"
        if checkpoint
        else "starting over (no checkpoint yet; training.save_every keeps one)"
    )
    state.console.print(
        f"[yellow]out of memory[/] at step {step}: batch_size {note['from']['batch_size']} -> "
        f"{note['to']['batch_size']}, grad_accum {note['from']['grad_accum']} -> {note['to']['grad_accum']} "
        f"(same global batch); {start}",
        highlight=False,
    )
    free_memory()
    return dataclasses.replace(
        state,
        recipe=halved,
        resume_from=checkpoint,
        halvings=(*state.halvings, note),
        started=time.time(),
        t0=time.perf_counter(),
    )


def oom_error(recipe: Recipe, dtype_name: str, args) -> OutOfMemory:
    t = recipe.training
    return OutOfMemory(
        f"out of memory at micro-batch {t.batch_size} x {t.max_length} tokens, {dtype_name}, "
        f"4-bit {recipe.quantization.load_in_4bit}, gradient checkpointing {args.gradient_checkpointing}",
        "halve training.batch_size (and double training.grad_accum to keep the global batch)"
        + ("" if args.gradient_checkpointing else ", or set training.gradient_checkpointing: on"),
    )


def free_memory() -> None:
    """Give the failed attempt's tensors back before the next one allocates."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
