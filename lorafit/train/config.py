"""The settings every objective's TRL config takes alike, in one place: SFT's config (train/trainer.py) and the
preference objectives' (train/preference.py) are this plus their own fields."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorafit import runs
from lorafit.recipe.training import epoch_fraction, steps_for, steps_per_epoch
from lorafit.train import tracking

if TYPE_CHECKING:
    from lorafit.recipe import Recipe


def shared(
    recipe: Recipe, run_dir: Path, dtype_name: str, device_kind: str, has_eval: bool, checkpointing: bool
) -> dict[str, Any]:
    """The settings every objective's TRL config takes alike (TrainingArguments' own, and max_length), field by
    field: batch, schedule, precision, checkpoints, logging, evaluation."""
    t = recipe.training
    eval_strategy = "steps" if (has_eval and t.eval_every) else "no"
    # A share of an epoch becomes steps once the trainer has packed the data (resolve_cadence); 1 until then.
    eval_steps = t.eval_every if isinstance(t.eval_every, int) else 1
    save_steps = t.save_every if isinstance(t.save_every, int) else 1
    return dict(
        output_dir=str(run_dir / runs.CHECKPOINTS),
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.lr,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        lr_scheduler_type=t.scheduler,
        warmup_steps=t.warmup_steps if t.warmup_steps else t.warmup_ratio,  # transformers: >= 1 steps, < 1 a ratio
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        optim=t.optimizer,
        seed=t.seed,
        data_seed=t.seed,
        bf16=dtype_name == "bfloat16",
        fp16=dtype_name == "float16",
        tf32=True if (t.tf32 and device_kind == "cuda") else None,  # transformers refuses tf32 without CUDA
        use_cpu=device_kind == "cpu",
        gradient_checkpointing=checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        logging_steps=t.logging_steps,
        logging_first_step=True,
        logging_nan_inf_filter=False,  # transformers would log a NaN/inf loss as the running mean: the guard must see it
        eval_strategy=eval_strategy,
        eval_steps=eval_steps or None,
        save_strategy="steps" if t.save_every else "no",
        save_steps=save_steps or 500,
        save_total_limit=None,  # lorafit rotates, only after the newest checkpoint is marked complete
        save_only_model=False,
        **tracking.sft_kwargs(recipe, run_dir),  # report_to, run_name, project
        max_length=t.max_length,
        disable_tqdm=True,
        dataloader_num_workers=0,
        prediction_loss_only=True,  # held-out loss only: no eval logits are gathered and kept
    )


def resolve_cadence(recipe: Recipe, args, rows: int, world_size: int) -> str | None:
    """Per-epoch eval_every / save_every as optimizer steps, from the rows the trainer will draw (packed sequences
    when packing is on), set on the trainer's arguments; the line that says what they became, or None."""
    t = recipe.training
    wanted = {"eval_every": t.eval_every, "save_every": t.save_every}
    if all(epoch_fraction(v) is None for v in wanted.values()):
        return None
    per_epoch = steps_per_epoch(rows, t.batch_size, t.grad_accum, world_size)
    said = []
    for name, every in wanted.items():
        if epoch_fraction(every) is None:
            continue
        steps = steps_for(every, per_epoch)
        setattr(args, "eval_steps" if name == "eval_every" else "save_steps", steps)
        said.append(f"training.{name} {every} = every {steps} steps")
    rows_word = "packed sequences" if recipe.data.packing else "examples"
    return f"{', '.join(said)} ({per_epoch} steps per epoch: {rows:,} {rows_word})"
