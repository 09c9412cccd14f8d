"""Where a run goes and whether it may go on: the run directory check, `--no-resume`'s fresh directory, and the
checkpoint a run resumes from (only when the recipe still describes the same run)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lorafit import runs
from lorafit.core import dist
from lorafit.core.errors import RecipeError
from lorafit.recipe import recipe_from_yaml_text

if TYPE_CHECKING:
    from lorafit.recipe import Recipe

RESUME_SECTIONS = ("model", "adapter", "quantization", "data", "preference")  # preference: None on an SFT run
# Within those sections, settings that change how fast a step runs, not what it computes.
RESUME_SPEED = {"preference": ("precompute_ref_log_probs",)}
# The training settings that make it the same run: data order and split (seed), truncation, the optimisation.
# Speed, memory and bookkeeping settings may change (auto_batch_size itself changes batch_size and grad_accum).
RESUME_TRAINING = (
    "objective",
    "seed",
    "max_length",
    "lr",
    "scheduler",
    "warmup_ratio",
    "warmup_steps",
    "epochs",
    "max_steps",
    "optimizer",
    "weight_decay",
    "max_grad_norm",
    "group_by_length",
    "precision",
)


def resume_point(run_dir: Path, recipe: Recipe, force: bool = False, warn=None) -> Path | None:
    """The checkpoint to resume from, after checking the recipe still describes the same run
    (with `force`, a changed recipe is only reported through `warn`)."""
    checkpoint = runs.latest_checkpoint(run_dir)
    if checkpoint is None or not (run_dir / runs.RECIPE).is_file():
        return None
    before = recipe_from_yaml_text(runs.read_recipe_text(run_dir / runs.RECIPE), str(run_dir / runs.RECIPE)).model_dump(
        mode="json"
    )
    now = recipe.model_dump(mode="json")
    changed = [
        f"{section}.{key}: {(before.get(section) or {}).get(key)!r} -> {value!r}"
        for section in RESUME_SECTIONS
        for key, value in (now.get(section) or {}).items()
        if (before.get(section) or {}).get(key) != value and key not in RESUME_SPEED.get(section, ())
    ] + [
        f"training.{key}: {before['training'].get(key)!r} -> {now['training'][key]!r}"
        for key in RESUME_TRAINING
        if before["training"].get(key) != now["training"][key]
    ]
    if changed and force:
        if warn is not None:
            warn(f"resuming {checkpoint} although the recipe changed (--force): " + "; ".join(changed))
    elif changed:
        raise RecipeError(
            f"{run_dir} holds a checkpoint of a different run; changed: " + "; ".join(changed),
            "restore those settings to resume, start fresh with --no-resume (a new directory), or resume anyway with --force",
        )
    return checkpoint


def _holds_a_run(path: Path) -> bool:
    return any((path / name).exists() for name in (runs.RECIPE, runs.RUN_JSON, runs.ADAPTER, runs.CHECKPOINTS))


def fresh_run_dir(run_dir: Path) -> Path:
    """`--no-resume`: run_dir itself if it holds no earlier run, else the first free `<run_dir>-N` (N >= 2).

    Only reads the filesystem, so every rank of a distributed job computes the same answer (before any creates it)."""
    if not _holds_a_run(run_dir):
        return run_dir
    n = 2
    while True:
        candidate = run_dir.with_name(f"{run_dir.name}-{n}")
        if not candidate.exists() or (candidate.is_dir() and not any(candidate.iterdir())):
            return candidate
        n += 1


def check_run_dir(run_dir: Path) -> None:
    if (run_dir / runs.ADAPTER).exists():
        raise RecipeError(
            f"{run_dir} already holds a trained adapter; lorafit never overwrites a run silently",
            f"choose another directory: --set output.dir={run_dir}-2, or delete {run_dir}",
        )
    if not dist.is_main():
        return  # rank 0 creates and probes the directory; the others never write to it
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise RecipeError(
            f"output.dir {run_dir} is not writable: {exc.strerror}", "choose a directory you can write to"
        ) from None
