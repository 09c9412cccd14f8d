"""One training run, as its phases: prepare the inputs, record the run, plan memory, build the model, build the
trainer, measure "before", fit, handle a stop, finish. `attempt` calls them in that order; `train` repeats the
attempt with half the micro-batch when training.auto_batch_size answers an out-of-memory step.

Under torchrun / accelerate launch every rank runs all of it: all ranks train, only rank 0 writes files and
prints, and token counts and tokens/s in run.json are summed over ranks."""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from lorafit import runs
from lorafit.core import dist
from lorafit.core.errors import Interrupted
from lorafit.runs import lineage, registry
from lorafit.train import oom, outputs, rundir, tracking
from lorafit.train.phases import (
    build_model,
    build_trainer,
    finish,
    fit,
    handle_stop,
    measure_before,
    plan_memory,
    prepare_inputs,
    record_start,
)
from lorafit.train.signals import Signals
from lorafit.train.state import Result, Run

if TYPE_CHECKING:
    from lorafit.recipe import Recipe


def run(recipe: Recipe, *, console, quiet: bool = False, resume: bool = True, force: bool = False) -> Result:
    """Train as the recipe says and write the run directory.

    resume=False starts fresh, in `<dir>-N` when output.dir holds an earlier run; force=True resumes even
    though the recipe changed."""
    with Signals() as signals:
        try:
            return _run(recipe, signals, console=console, quiet=quiet, resume=resume, force=force)
        except KeyboardInterrupt as exc:
            raise Interrupted(
                str(exc) or "interrupted (Ctrl-C) before training started; nothing was trained",
                "run the same command again",
            ) from None


def _run(recipe: Recipe, signals: Signals, *, console, quiet: bool, resume: bool, force: bool) -> Result:
    """Checks that need no model, the run directory and its resume point, then training inside the registry's
    and the trackers' frame."""
    from lorafit import models
    from lorafit.core import device
    from lorafit.recipe import check_hardware

    device.configure_memory(recipe.training.keep_freed_memory, recipe.training.huge_pages)  # before torch is imported
    models.quiet_libraries()
    if not dist.is_main():
        console, quiet = _silent_console(), True
    check_hardware(recipe)
    recipe = lineage.resolve(recipe)  # the parent run's adapter is there and unchanged, its sha256 recorded
    tracking.check(recipe)  # a tracker that cannot work fails now, in one line, not minutes into the run
    if not resume:
        recipe = _fresh(recipe, console)
    run_dir = recipe.run_dir
    rundir.check_run_dir(run_dir)
    warn = lambda m: console.print(f"[yellow]warning[/] {m}", highlight=False, soft_wrap=True)  # noqa: E731
    resume_from = rundir.resume_point(run_dir, recipe, force=force, warn=warn)
    state = Run(recipe, run_dir, resume_from, console, quiet, force, signals)
    with _tracked(recipe, run_dir, console):
        try:
            return train(state)
        except (KeyboardInterrupt, Interrupted):
            if runs.read_run_json(run_dir).get("status") == "running":  # stopped during setup
                outputs.record(run_dir, status="interrupted")
            raise


def _fresh(recipe: Recipe, console) -> Recipe:
    """`--no-resume`: the recipe pointed at a directory that holds no earlier run."""
    fresh = rundir.fresh_run_dir(recipe.run_dir)
    if fresh != recipe.run_dir:
        console.print(
            f"{recipe.run_dir} holds an earlier run (--no-resume): starting fresh in {fresh}",
            highlight=False,
            soft_wrap=True,
        )
        recipe = recipe.model_copy(update={"output": recipe.output.model_copy(update={"dir": str(fresh)})})
    dist.barrier()  # every rank has chosen the directory before rank 0 creates it
    return recipe


@contextmanager
def _tracked(recipe: Recipe, run_dir: Path, console):
    """Around one training run: the trackers' environment, the run registry's row, and the final loss.png."""
    warn = lambda m: console.print(f"[yellow]warning[/] {m}", highlight=False)  # noqa: E731
    restore = tracking.set_environment(recipe, run_dir)
    try:
        if dist.is_main():
            with registry.recording(recipe, run_dir, warn=warn):
                yield
        else:
            yield
    finally:
        restore()
        if dist.is_main():
            outputs.plot(run_dir, console)


def train(state: Run) -> Result:
    """Attempts until one finishes. training.auto_batch_size answers an out-of-memory step with half the
    micro-batch and twice the accumulation (the same global batch and data order), from the newest checkpoint."""
    while True:
        try:
            return attempt(state)
        except oom.HalveAndRetry as stopped:
            step = stopped.step
        state = oom.halved(state, step)  # outside the handler: the failed attempt's frames (and tensors) are gone


def attempt(state: Run) -> Result:
    """One attempt at the run, phase by phase."""
    from lorafit.core import device

    state.info = device.detect()
    state.dtype_name = device.compute_dtype_name(state.recipe.training.precision, state.recipe.model.dtype, state.info)
    inputs = prepare_inputs(state)
    record_start(state, inputs)
    memory = plan_memory(state, inputs)
    model, summary, compiled = build_model(state, inputs, memory)
    built = build_trainer(state, inputs, memory, model, summary, compiled)
    before = measure_before(state, inputs, built)
    if memory.prefaulting is not None:
        memory.prefaulting.join(timeout=30)  # the heap holds the pages before step 1 allocates, not while
    state.signals.check()
    state.signals.training(built.callbacks["SignalStop"])
    setup_s = time.perf_counter() - state.t0
    train_started_wall = time.time()
    result = fit(state, built)
    train_s = time.perf_counter() - state.t0 - setup_s
    handle_stop(state, built)
    timing = {"setup_s": setup_s, "train_s": train_s, "train_started_wall": train_started_wall}
    return finish(state, inputs, memory, built, before, result, timing)


def _silent_console():
    """The console of ranks other than 0: rank 0 alone prints progress (errors still reach stderr)."""
    from rich.console import Console

    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass
    return Console(quiet=True)
