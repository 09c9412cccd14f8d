"""lorafit's contact surface with TRL, transformers and accelerate: the trainer a recipe gets, its config, and
every access to one of their private attributes, so that a library upgrade has one place to look.

Checked against transformers 5.23, TRL 1.16 and accelerate 1.15 (the lower bounds in pyproject.toml). Imports
them: the training pipeline imports this module when it builds the trainer, never earlier."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from transformers import Trainer
from trl import SFTConfig, SFTTrainer

from lorafit.core import dist, methods
from lorafit.core.errors import RecipeError
from lorafit.models.loss import TrainedPositionLoss
from lorafit.train import config
from lorafit.train.sampling import length_grouped

if TYPE_CHECKING:
    from lorafit.recipe import Recipe


def trainer_for(recipe: Recipe) -> tuple[type, Callable[..., Any]]:
    """The trainer class and the config builder for the recipe's objective: supervised fine-tuning here, the
    preference objectives (DPO, KTO, ORPO, SimPO) in train/preference.py; the run's phases do not change."""
    if recipe.training.objective != "sft":
        from lorafit.train import preference

        return preference.trainer_for(recipe)
    return LorafitTrainer, sft_config


class LorafitTrainer(SFTTrainer):
    """SFTTrainer with two changes, both switchable from the recipe.

    Length-grouped batches are reseeded per epoch, so a resumed run sees the same batches:
    transformers' LengthGroupedSampler draws from the global RNG, whose state at epoch start differs
    between a fresh and a resumed process. And the loss takes the path training.lm_head names:
    TRL's chunked head, transformers' plain one (cheaper per step than chunked on CPU), or the
    plain one scoring trained positions only (lorafit.loss)."""

    lm_head = "chunked"  # TRL's own path until configure_loss says otherwise
    trained_positions = None

    def configure_loss(self, mode: str) -> None:
        self.lm_head = mode
        if mode == "trained":
            self.trained_positions = TrainedPositionLoss(self.model)
            self.compute_loss_func = self.trained_positions  # Trainer pops the labels and calls it on the outputs

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.lm_head == "chunked":
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs["use_cache"] = False  # a KV cache is dead weight in a training forward
        if self.lm_head == "full":  # transformers' own path: logits everywhere, token-averaged cross-entropy
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)
        with self.trained_positions.selecting(inputs):
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

    def _get_train_sampler(self, train_dataset=None):  # private: transformers' hook for the train sampler
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy != "group_by_length" or "input_ids" not in dataset.column_names:
            return super()._get_train_sampler(train_dataset)
        return length_grouped(self.args, [len(ids) for ids in dataset["input_ids"]])


def sft_config(recipe: Recipe, run_dir: Path, dtype_name: str, device_kind: str, has_eval: bool, checkpointing: bool):
    """The recipe's training section as TRL's SFTConfig, field by field (no reflection)."""
    return SFTConfig(
        **config.shared(recipe, run_dir, dtype_name, device_kind, has_eval, checkpointing),
        packing=recipe.data.packing,
        remove_unused_columns=True,
    )


def is_sharded(trainer) -> bool:
    """FSDP or DeepSpeed: the weights are split across ranks."""
    return bool(trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled)


def check_sharded_save(trainer, model, method: str) -> None:
    """pissa / olora / corda are saved by converting against their starting values, which PEFT does from the
    unsharded model only: under FSDP or DeepSpeed the final save could not convert them. Say so before training."""
    from lorafit.models import adapters

    if is_sharded(trainer) and getattr(model, adapters.INITIAL_ADAPTER_ATTR, None) is not None:
        raise RecipeError(
            f"adapter.method {method} cannot be saved from FSDP / DeepSpeed training: PEFT converts it to a "
            "plain LoRA from the unsharded model only",
            "train it with --strategy ddp, or use method lora or dora",
        )


def parallelism(trainer, warn: Callable[[str], None]) -> str:
    """What accelerate actually runs (NO, MULTI_CPU, MULTI_GPU, FSDP, DEEPSPEED), said out loud when it is not
    what the launch asked for: accelerate only shards (FSDP) on accelerators, so an FSDP launch on CPU trains as
    plain DDP."""
    kind = trainer.accelerator.distributed_type.value
    asked = next(
        (name for name in ("FSDP", "DEEPSPEED") if os.environ.get(f"ACCELERATE_USE_{name}", "").lower() == "true"), None
    )
    if asked and kind != asked:
        warn(f"launched for {asked}, but accelerate runs {kind} on this hardware: every rank holds the whole model")
    return kind


def base_is_the_untrained_model(trainer, recipe: Recipe, resumed: bool) -> bool:
    """Whether the held-out loss before training can wait for the end (training.eval_before_at_end), measured on
    the base with the adapter switched off: the first step then comes an evaluation sooner."""
    return (
        recipe.training.objective
        == "sft"  # a preference loss needs its reference, which the switched-off adapter is not
        and (recipe.training.eval_before_at_end or resumed)
        and recipe.adapter.method in methods.STARTS_AS_BASE
        and not is_sharded(trainer)
    )


def rounded(loss: float | None) -> float | None:
    return round(loss, 4) if loss is not None else None


def evaluate(trainer) -> float | None:
    """The held-out loss of the model as it is now."""
    return rounded(trainer.evaluate().get("eval_loss"))


def evaluate_base(trainer) -> float | None:
    """The held-out loss of the model before training, measured after it: the base with the adapter switched off.
    Eager, since compiled layers would recompile for the switched-off path; and not logged as an evaluation at
    the last step (metrics.jsonl gets its step-0 row from the caller)."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    with model.disable_adapter(), torch.compiler.set_stance("force_eager"):
        output = trainer.evaluation_loop(
            trainer.get_eval_dataloader(),
            description="held-out loss before training",
            prediction_loss_only=True,
            metric_key_prefix="eval",
        )
    getattr(trainer, "_metrics", {}).get("eval", {}).clear()  # private: TRL's token accuracy of this pass, never logged
    return rounded(output.metrics.get("eval_loss"))


def undo_eval_preparation(trainer) -> None:
    """Let train() wrap the model in DistributedDataParallel after the held-out loss was measured first.

    Trainer.evaluate() on a fresh trainer registers the bare model with accelerate in evaluation mode and marks
    it prepared; train() then never wraps it in DDP, and every rank silently trains its own copy
    (tests/test_ddp.py compares against a single process and catches it). FSDP and DeepSpeed wrap the model
    fully at that first evaluation and need nothing here."""
    model = trainer.model
    if (
        not dist.is_distributed()
        or is_sharded(trainer)
        or trainer.model_wrapped is not model
        or not getattr(model, "_is_accelerate_prepared", False)
    ):
        return
    del model._is_accelerate_prepared
    if "_original_forward" in model.__dict__:  # the mixed-precision wrapper prepare_model put on forward
        model.forward = model._original_forward
        del model._original_forward
    trainer.accelerator._models = [m for m in trainer.accelerator._models if m is not model]


def gather_sharded(trainer):
    """The full state dict when FSDP or DeepSpeed shards the weights across ranks (None otherwise).

    As PEFT documents for FSDP: switch to FULL_STATE_DICT for the final save, gather, let rank 0 write."""
    if trainer.is_fsdp_enabled:
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
        return trainer.accelerator.get_state_dict(trainer.model)
    if trainer.is_deepspeed_enabled:
        return trainer.accelerator.get_state_dict(trainer.model_wrapped)
    return None
