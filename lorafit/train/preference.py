"""The preference objectives' trainers and configs: DPO and KTO (trl, stable), ORPO and SimPO (trl.experimental:
ORPOTrainer, and CPOTrainer with loss_type simpo). TRL computes every loss; lorafit maps the recipe onto the
configs, field by field, and arranges the frozen reference.

The reference of DPO / KTO (preference.reference):
  init   TRL's own arrangement for a PEFT policy passed without ref_model: it adds an adapter named "ref", a
         frozen copy of the policy's adapter as training starts, and scores the reference through it. With
         adapter.init_from that is base + the parent's (SFT) adapter; with a fresh adapter, whose update starts
         at zero, it computes what the base computes.
  base   the bare base model, loaded a second time as TRL's ref_model (only differs from init with init_from).
  RUN    the base with that run's adapter, merged (unless the base is quantized), as ref_model.

Checked against TRL 1.16 (DPOTrainer/KTOTrainer's "ref" adapter, experimental ORPO/CPO import paths).
Imports TRL: the training pipeline imports this module when it builds the trainer, never earlier."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from torch.utils.data import SequentialSampler
from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer

from lorafit.train import config
from lorafit.train.sampling import length_grouped

if TYPE_CHECKING:
    from lorafit.recipe import Recipe

REF_ADAPTER = "ref"  # the name TRL 1.16 gives the frozen copy of the policy's adapter


def _experimental():
    """trl.experimental's ORPO and CPO, without its import-time notice (the recipe chose them knowingly)."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from trl.experimental.cpo import CPOConfig, CPOTrainer
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer
    return ORPOConfig, ORPOTrainer, CPOConfig, CPOTrainer


class PreferenceTrainer:
    """What lorafit's phases ask of every trainer, for TRL's preference trainers: they compute their own
    log-probabilities, so training.lm_head has no say (the recipe refuses anything but auto)."""

    lm_head = "trl"

    def configure_loss(self, mode: str) -> None:
        pass


class LorafitDPOTrainer(PreferenceTrainer, DPOTrainer):
    """DPOTrainer with training.group_by_length: pairs of similar length share a micro-batch, so less of it is
    padding (TRL pads the chosen and rejected rows of a micro-batch to its longest side)."""

    def _get_train_sampler(self, train_dataset=None):  # private: transformers' hook for the train sampler
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        columns = ("prompt_ids", "chosen_ids", "rejected_ids")
        if self.args.train_sampling_strategy != "group_by_length" or not set(columns) <= set(dataset.column_names):
            return super()._get_train_sampler(train_dataset)
        limit = self.args.max_length or 1 << 30
        lengths = [
            min(len(prompt) + max(len(chosen), len(rejected)), limit)
            for prompt, chosen, rejected in zip(*(dataset[c] for c in columns))
        ]
        return length_grouped(self.args, lengths)

    def _get_eval_sampler(self, eval_dataset):  # private: transformers' hook for the evaluation sampler
        """Held-out pairs in order, as without length grouping: transformers would group them by an input_ids
        column that TRL's preference data does not have."""
        if self.args.train_sampling_strategy != "group_by_length" or eval_dataset is None:
            return super()._get_eval_sampler(eval_dataset)
        return SequentialSampler(eval_dataset) if self.args.world_size <= 1 else None


class LorafitKTOTrainer(PreferenceTrainer, KTOTrainer):
    pass


def trainer_for(recipe: Recipe) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """(trainer factory, config builder) for a preference objective."""
    objective = recipe.training.objective
    if objective == "dpo":
        return _with_reference(LorafitDPOTrainer, recipe), dpo_config
    if objective == "kto":
        return _with_reference(LorafitKTOTrainer, recipe), kto_config
    ORPOConfig, ORPOTrainer, CPOConfig, CPOTrainer = _experimental()
    if objective == "orpo":
        return type("LorafitORPOTrainer", (PreferenceTrainer, ORPOTrainer), {}), orpo_config
    return type("LorafitCPOTrainer", (PreferenceTrainer, CPOTrainer), {}), simpo_config


def _with_reference(trainer_class: type, recipe: Recipe) -> Callable[..., Any]:
    """The trainer built with the recipe's reference: TRL's own ("init"), or a ref_model lorafit loads."""

    def build(**kwargs):
        ref_model = reference_model(recipe)
        return trainer_class(ref_model=ref_model, **kwargs) if ref_model is not None else trainer_class(**kwargs)

    build.__name__ = trainer_class.__name__
    return build


def reference_model(recipe: Recipe):
    """The ref_model to pass TRL, or None for TRL's own frozen copy of the starting adapter."""
    reference = recipe.preference.reference
    if reference == "init" or (reference == "base" and recipe.adapter.init_from is None):
        return None  # a fresh adapter starts as the base: TRL's copy of it is the base
    from lorafit import models

    model = models.load_model(recipe, models.resolve_model_path(recipe), checkpointing=False)
    if reference != "base":
        from peft import PeftModel

        from lorafit.runs import lineage

        model = PeftModel.from_pretrained(model, str(lineage.adapter_dir(Path(reference))), is_trainable=False)
        if not (recipe.quantization.load_in_4bit or recipe.quantization.load_in_8bit):
            model = model.merge_and_unload()
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def _common(recipe: Recipe, *args) -> dict[str, Any]:
    shared = config.shared(recipe, *args)
    if recipe.training.objective != "dpo":  # only DPO's trainer groups by length (LorafitDPOTrainer)
        shared["train_sampling_strategy"] = "random"
    return shared


def dpo_config(recipe: Recipe, *args) -> DPOConfig:
    p = recipe.preference
    return DPOConfig(
        **_common(recipe, *args),
        beta=p.beta,
        loss_type=[p.loss_type, "sft"] if p.rpo_alpha else [p.loss_type],
        loss_weights=[1.0, p.rpo_alpha] if p.rpo_alpha else None,
        label_smoothing=p.label_smoothing,
        precompute_ref_log_probs=p.precompute_ref_log_probs,
        sync_ref_model=p.sync_ref_model,
        disable_dropout=True,
    )


def kto_config(recipe: Recipe, *args) -> KTOConfig:
    p = recipe.preference
    shared = _common(recipe, *args)
    shared["train_sampling_strategy"] = "sequential"  # the KL term pairs neighbours; the data was shuffled, seeded
    return KTOConfig(
        **shared,
        beta=p.beta,
        loss_type=p.loss_type,
        desirable_weight=p.desirable_weight,
        undesirable_weight=p.undesirable_weight,
        precompute_ref_log_probs=p.precompute_ref_log_probs,
        sync_ref_model=p.sync_ref_model,
        disable_dropout=True,
    )


def orpo_config(recipe: Recipe, *args):
    ORPOConfig = _experimental()[0]
    return ORPOConfig(**_common(recipe, *args), beta=recipe.preference.beta, remove_unused_columns=False)


def simpo_config(recipe: Recipe, *args):
    CPOConfig = _experimental()[2]
    p = recipe.preference
    return CPOConfig(
        **_common(recipe, *args),
        loss_type="simpo",
        beta=p.beta,
        simpo_gamma=p.simpo_gamma,
        cpo_alpha=p.cpo_alpha,
        remove_unused_columns=False,
    )
