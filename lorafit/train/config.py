"""The settings every objective's TRL config takes alike, in one place: SFT's config (train/trainer.py) and the
preference objectives' (train/preference.py) are this plus their own fields."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorafit import runs
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
    return dict(
        output_dir=str(run_dir / runs.CHECKPOINTS),
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.lr,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        lr_scheduler_type=t.scheduler,
        warmup_steps=t.warmup_ratio,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        optim=t.optimizer,
        seed=t.seed,
        data_seed=t.seed,
        bf16=dtype_name == "bfloat16",
        fp16=dtype_name == "float16",
        use_cpu=device_kind == "cpu",
        gradient_checkpointing=checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        logging_steps=t.logging_steps,
        logging_first_step=True,
        logging_nan_inf_filter=False,  # transformers would log a NaN/inf loss as the running mean: the guard must see it
        eval_strategy=eval_strategy,
        eval_steps=t.eval_every or None,
        save_strategy="steps" if t.save_every else "no",
        save_steps=t.save_every or 500,
        save_total_limit=None,  # lorafit rotates, only after the newest checkpoint is marked complete
        save_only_model=False,
        **tracking.sft_kwargs(recipe, run_dir),  # report_to, run_name, project
        max_length=t.max_length,
        disable_tqdm=True,
        dataloader_num_workers=0,
        prediction_loss_only=True,  # held-out loss only: no eval logits are gathered and kept
    )
