"""Peer keys, by the name each peer writes: the lorafit field each sets and what it means there."""

from __future__ import annotations

from lorafit.recipe.peers.convert import (
    TORCHTUNE_OPTIMIZERS,
    TORCHTUNE_SCHEDULERS,
    chat_template_for,
    clip,
    component,
    dtype,
    eval_fraction,
    finetuning_type,
    flag,
    max_length,
    max_steps_per_epoch,
    model_dtype,
    modules_to_save,
    number,
    number_into,
    on_off,
    per_epoch,
    precision,
    quantization_bit,
    report_to,
    rl,
    seed,
    stage,
    strategy,
    targets,
    torchtune_builder,
    torchtune_modules,
)
from lorafit.recipe.peers.spec import AXOLOTL, HF, LLAMAFACTORY, TORCHTUNE, TRL, UNSLOTH, PeerKey

NO_EFFECT = "no effect on what is trained; lorafit needs no setting for it"
LAUNCH = "multi-GPU sharding is chosen at launch, not in the recipe: `lorafit launch RECIPE --strategy fsdp` (or deepspeed-zero2 / deepspeed-zero3)"


# Peer keys, by the name the peer writes (torchtune's nested keys dotted: `optimizer.lr`).
KEYS: dict[str, PeerKey] = {
    # ---- model
    "base_model": PeerKey((AXOLOTL,), "model.name", "the base model (hub id or directory)"),
    "model_name_or_path": PeerKey(HF, "model.name", "the base model (hub id or directory)"),
    "model_name": PeerKey((UNSLOTH,), "model.name", "the base model (hub id or directory)"),
    "checkpointer.checkpoint_dir": PeerKey((TORCHTUNE,), "model.name", "the base model's checkpoint directory"),
    "revision_of_model": PeerKey((AXOLOTL,), "model.revision", "the hub revision of the base model"),
    "model_revision": PeerKey(HF, "model.revision", "the hub revision of the base model"),
    "torch_dtype": PeerKey((TRL,), "model.dtype", "the weights' dtype", model_dtype),
    "dtype": PeerKey((TORCHTUNE, TRL, UNSLOTH), "training.precision", "the training dtype", dtype),
    "attn_implementation": PeerKey((TRL,), "model.attn_implementation", "the attention kernel"),
    "flash_attention": PeerKey(
        (AXOLOTL,),
        "model.attn_implementation",
        "FlashAttention-2",
        flag("model.attn_implementation", "flash_attention_2"),
    ),
    "sdp_attention": PeerKey(
        (AXOLOTL,), "model.attn_implementation", "PyTorch's fused attention", flag("model.attn_implementation", "sdpa")
    ),
    "flash_attn": PeerKey(
        (LLAMAFACTORY,),
        "model.attn_implementation",
        "the attention kernel",
        lambda v: {"model.attn_implementation": {"fa2": "flash_attention_2", "disabled": "eager"}.get(v, v)},
    ),
    # ---- quantization
    "load_in_4bit": PeerKey((AXOLOTL, TRL, UNSLOTH), "quantization.load_in_4bit", "a 4-bit (QLoRA) base"),
    "load_in_8bit": PeerKey((AXOLOTL, TRL), "quantization.load_in_8bit", "an 8-bit base"),
    "quantization_bit": PeerKey(
        (LLAMAFACTORY,), "quantization.load_in_4bit", "the base's bitsandbytes bits", quantization_bit
    ),
    "bnb_4bit_quant_type": PeerKey((TRL,), "quantization.quant_type", "the 4-bit data type (nf4, fp4)"),
    "quantization_type": PeerKey((LLAMAFACTORY,), "quantization.quant_type", "the 4-bit data type (nf4, fp4)"),
    "bnb_4bit_use_double_quant": PeerKey((TRL,), "quantization.double_quant", "4-bit double quantization"),
    "use_bnb_nested_quant": PeerKey((TRL,), "quantization.double_quant", "4-bit double quantization"),
    "double_quantization": PeerKey((LLAMAFACTORY,), "quantization.double_quant", "4-bit double quantization"),
    "bnb_4bit_compute_dtype": PeerKey((TRL,), "quantization.compute_dtype", "the 4-bit matmuls' dtype"),
    # ---- adapter
    "adapter": PeerKey((AXOLOTL,), "adapter.method", "the adapter (lora, qlora)"),
    "finetuning_type": PeerKey((LLAMAFACTORY,), "adapter.method", "what is trained", finetuning_type),
    "lora_r": PeerKey((AXOLOTL, TRL), "adapter.r", "the LoRA rank"),
    "lora_rank": PeerKey((LLAMAFACTORY,), "adapter.r", "the LoRA rank"),
    "model.lora_rank": PeerKey((TORCHTUNE,), "adapter.r", "the LoRA rank"),
    "r": PeerKey((UNSLOTH,), "adapter.r", "the LoRA rank"),
    "lora_alpha": PeerKey((AXOLOTL, LLAMAFACTORY, TRL, UNSLOTH), "adapter.alpha", "the LoRA scaling numerator"),
    "model.lora_alpha": PeerKey((TORCHTUNE,), "adapter.alpha", "the LoRA scaling numerator"),
    "lora_dropout": PeerKey((AXOLOTL, LLAMAFACTORY, TRL, UNSLOTH), "adapter.dropout", "dropout on the adapter input"),
    "model.lora_dropout": PeerKey((TORCHTUNE,), "adapter.dropout", "dropout on the adapter input"),
    "lora_target_modules": PeerKey((AXOLOTL, TRL), "adapter.target_modules", "the modules adapted", targets),
    "lora_target": PeerKey(
        (LLAMAFACTORY,), "adapter.target_modules", "the modules adapted (`all`: every linear layer)", targets
    ),
    "target_modules": PeerKey((UNSLOTH,), "adapter.target_modules", "the modules adapted", targets),
    "lora_target_linear": PeerKey(
        (AXOLOTL,),
        "adapter.target_modules",
        "every linear layer",
        flag("adapter.target_modules", "all-linear"),
    ),
    "model.lora_attn_modules": PeerKey(
        (TORCHTUNE,), "adapter.target_modules", "the attention modules adapted", torchtune_modules
    ),
    "model.apply_lora_to_mlp": PeerKey(
        (TORCHTUNE,),
        "adapter.target_modules",
        "the feed-forward modules adapted too (w1, w2, w3: gate_proj, down_proj, up_proj)",
        flag("adapter.target_modules", ["gate_proj", "up_proj", "down_proj"]),
    ),
    "model.apply_lora_to_output": PeerKey(
        (TORCHTUNE,),
        None,
        "LoRA on the output projection: lorafit adapts no output layer; adapter.modules_to_save: [lm_head] trains it in full",
    ),
    "model._component_": PeerKey(
        (TORCHTUNE,), "adapter.method", "the model builder (lora_* / qlora_*)", torchtune_builder
    ),
    "peft_use_dora": PeerKey((AXOLOTL,), "adapter.use_dora", "DoRA"),
    "use_dora": PeerKey((LLAMAFACTORY, TRL, UNSLOTH), "adapter.use_dora", "DoRA"),
    "model.use_dora": PeerKey((TORCHTUNE,), "adapter.use_dora", "DoRA"),
    "peft_use_rslora": PeerKey((AXOLOTL,), "adapter.use_rslora", "rank-stabilised LoRA (alpha/sqrt(r))"),
    "use_rslora": PeerKey((LLAMAFACTORY, TRL, UNSLOTH), "adapter.use_rslora", "rank-stabilised LoRA (alpha/sqrt(r))"),
    "loraplus_lr_ratio": PeerKey(
        (AXOLOTL, LLAMAFACTORY),
        "adapter.loraplus_lr_ratio",
        "LoRA+ (B's learning rate over A's)",
        lambda v: {"adapter.method": "loraplus", "adapter.loraplus_lr_ratio": number(v)},
    ),
    "pissa_init": PeerKey((LLAMAFACTORY,), "adapter.method", "PiSSA initialisation", flag("adapter.method", "pissa")),
    "pissa_iter": PeerKey((LLAMAFACTORY,), "adapter.pissa_niter", "PiSSA's fast-SVD iterations"),
    "lora_modules_to_save": PeerKey(
        (AXOLOTL, TRL), "adapter.modules_to_save", "modules trained in full", modules_to_save
    ),
    "additional_target": PeerKey(
        (LLAMAFACTORY,), "adapter.modules_to_save", "modules trained in full", modules_to_save
    ),
    "use_peft": PeerKey((TRL,), None, "train an adapter: lorafit always does"),
    "lora_model_dir": PeerKey(
        (AXOLOTL,), None, "an adapter to start from: adapter.init_from takes a finished lorafit run directory"
    ),
    "adapter_name_or_path": PeerKey(
        (LLAMAFACTORY,), None, "an adapter to start from: adapter.init_from takes a finished lorafit run directory"
    ),
    # ---- data
    "datasets": PeerKey((AXOLOTL,), "data.train", "the training data"),
    "dataset": PeerKey((LLAMAFACTORY, TORCHTUNE), "data.train", "the training data"),
    "dataset_name": PeerKey((TRL,), "data.train", "the training data (a hub dataset id)"),
    "test_datasets": PeerKey((AXOLOTL,), "data.eval", "the held-out data"),
    "eval_dataset": PeerKey((LLAMAFACTORY,), "data.eval", "the held-out data"),
    "dataset_val": PeerKey((TORCHTUNE,), "data.eval", "the held-out data"),
    "val_set_size": PeerKey((AXOLOTL,), "data.eval_split", "the held-out share of the training data", eval_fraction),
    "val_size": PeerKey((LLAMAFACTORY,), "data.eval_split", "the held-out share of the training data", eval_fraction),
    "chat_template": PeerKey(
        (AXOLOTL,),
        "data.chat_template",
        "the chat template by name",
        lambda v: {"data.chat_template": chat_template_for(v)},
    ),
    "template": PeerKey(
        (LLAMAFACTORY,),
        "data.chat_template",
        "the chat template by name",
        lambda v: {"data.chat_template": chat_template_for(v)},
    ),
    "sample_packing": PeerKey((AXOLOTL,), "data.packing", "packing examples into full sequences"),
    "packing": PeerKey((TRL, LLAMAFACTORY), "data.packing", "packing examples into full sequences"),
    "neat_packing": PeerKey((LLAMAFACTORY,), "data.packing", "packing without cross-attention between examples"),
    "dataset.packed": PeerKey((TORCHTUNE,), "data.packing", "packing examples into full sequences"),
    "train_on_inputs": PeerKey(
        (AXOLOTL,), "data.train_on", "loss on the prompt too", flag("data.train_on", "all", "assistant")
    ),
    "train_on_prompt": PeerKey(
        (LLAMAFACTORY,), "data.train_on", "loss on the prompt too", flag("data.train_on", "all", "assistant")
    ),
    "dataset.train_on_input": PeerKey(
        (TORCHTUNE,), "data.train_on", "loss on the prompt too", flag("data.train_on", "all", "assistant")
    ),
    "completion_only_loss": PeerKey(
        (TRL,), "data.train_on", "loss on the completion only", flag("data.train_on", "assistant", "all")
    ),
    "assistant_only_loss": PeerKey(
        (TRL,), "data.train_on", "loss on assistant turns only", flag("data.train_on", "assistant")
    ),
    "mask_history": PeerKey(
        (LLAMAFACTORY,), "data.train_on", "loss on the last turn only", flag("data.train_on", "last_assistant")
    ),
    "sequence_len": PeerKey((AXOLOTL,), "training.max_length", "the longest example in tokens", max_length),
    "cutoff_len": PeerKey((LLAMAFACTORY,), "training.max_length", "the longest example in tokens", max_length),
    "max_seq_length": PeerKey((TRL, UNSLOTH), "training.max_length", "the longest example in tokens", max_length),
    "max_length": PeerKey((TRL,), "training.max_length", "the longest example in tokens", max_length),
    "tokenizer.max_seq_len": PeerKey((TORCHTUNE,), "training.max_length", "the longest example in tokens", max_length),
    # ---- training
    "learning_rate": PeerKey((AXOLOTL,) + HF, "training.lr", "the peak learning rate", number_into("training.lr")),
    "optimizer.lr": PeerKey((TORCHTUNE,), "training.lr", "the peak learning rate", number_into("training.lr")),
    "micro_batch_size": PeerKey((AXOLOTL,), "training.batch_size", "the micro-batch per device"),
    "per_device_train_batch_size": PeerKey(HF, "training.batch_size", "the micro-batch per device"),
    "batch_size": PeerKey((TORCHTUNE,), "training.batch_size", "the micro-batch per device"),
    "gradient_accumulation_steps": PeerKey(
        (AXOLOTL, TORCHTUNE) + HF, "training.grad_accum", "micro-batches accumulated per optimizer step"
    ),
    "num_epochs": PeerKey(
        (AXOLOTL,), "training.epochs", "passes over the training data", number_into("training.epochs")
    ),
    "num_train_epochs": PeerKey(HF, "training.epochs", "passes over the training data", number_into("training.epochs")),
    "max_steps_per_epoch": PeerKey((TORCHTUNE,), "training.max_steps", "a cap per epoch", max_steps_per_epoch),
    "warmup_steps": PeerKey((AXOLOTL,) + HF, "training.warmup_steps", "learning-rate warmup in steps"),
    "lr_scheduler.num_warmup_steps": PeerKey((TORCHTUNE,), "training.warmup_steps", "learning-rate warmup in steps"),
    "warmup_ratio": PeerKey((AXOLOTL,) + HF, "training.warmup_ratio", "learning-rate warmup as a share of the steps"),
    "lr_scheduler": PeerKey((AXOLOTL,), "training.scheduler", "the learning-rate schedule"),
    "lr_scheduler_type": PeerKey(HF, "training.scheduler", "the learning-rate schedule"),
    "lr_scheduler._component_": PeerKey(
        (TORCHTUNE,),
        "training.scheduler",
        "the learning-rate schedule",
        component(TORCHTUNE_SCHEDULERS, "training.scheduler", "scheduler"),
    ),
    "optimizer": PeerKey((AXOLOTL,), "training.optimizer", "the optimizer"),
    "optim": PeerKey(HF, "training.optimizer", "the optimizer"),
    "optimizer._component_": PeerKey(
        (TORCHTUNE,),
        "training.optimizer",
        "the optimizer",
        component(TORCHTUNE_OPTIMIZERS, "training.optimizer", "optimizer"),
    ),
    "optimizer.weight_decay": PeerKey((TORCHTUNE,), "training.weight_decay", "decoupled weight decay"),
    "optimizer.fused": PeerKey(
        (TORCHTUNE,), "training.optimizer", "the fused AdamW kernel", flag("training.optimizer", "adamw_torch_fused")
    ),
    "clip_grad_norm": PeerKey((TORCHTUNE,), "training.max_grad_norm", "gradient clipping", clip),
    "gradient_checkpointing": PeerKey(
        (AXOLOTL, UNSLOTH) + HF,
        "training.gradient_checkpointing",
        "recomputing activations in backward",
        on_off("training.gradient_checkpointing"),
    ),
    "use_gradient_checkpointing": PeerKey(
        (UNSLOTH,),
        "training.gradient_checkpointing",
        "recomputing activations in backward",
        on_off("training.gradient_checkpointing"),
    ),
    "enable_activation_checkpointing": PeerKey(
        (TORCHTUNE,),
        "training.gradient_checkpointing",
        "recomputing activations in backward",
        on_off("training.gradient_checkpointing"),
    ),
    "bf16": PeerKey((AXOLOTL,) + HF, "training.precision", "bf16 mixed precision", precision("bf16")),
    "fp16": PeerKey((AXOLOTL,) + HF, "training.precision", "fp16 mixed precision", precision("fp16")),
    "tf32": PeerKey((AXOLOTL,) + HF, "training.tf32", "TF32 matmuls on CUDA"),
    "torch_compile": PeerKey((AXOLOTL,) + HF, "training.compile", "torch.compile", on_off("training.compile")),
    "compile": PeerKey((TORCHTUNE,), "training.compile", "torch.compile", on_off("training.compile")),
    "eval_steps": PeerKey((AXOLOTL,) + HF, "training.eval_every", "evaluation every N steps"),
    "run_val_every_n_steps": PeerKey((TORCHTUNE,), "training.eval_every", "evaluation every N steps"),
    "evals_per_epoch": PeerKey(
        (AXOLOTL,), "training.eval_every", "evaluations per epoch", per_epoch("training.eval_every")
    ),
    "eval_strategy": PeerKey(HF, "training.eval_every", "when to evaluate", strategy("training.eval_every")),
    "evaluation_strategy": PeerKey(HF, "training.eval_every", "when to evaluate", strategy("training.eval_every")),
    "save_steps": PeerKey((AXOLOTL,) + HF, "training.save_every", "a checkpoint every N steps"),
    "saves_per_epoch": PeerKey(
        (AXOLOTL,), "training.save_every", "checkpoints per epoch", per_epoch("training.save_every")
    ),
    "save_strategy": PeerKey(HF, "training.save_every", "when to checkpoint", strategy("training.save_every")),
    "save_total_limit": PeerKey((AXOLOTL,) + HF, "training.keep_checkpoints", "checkpoints kept"),
    "stage": PeerKey((LLAMAFACTORY,), "training.objective", "the training objective", stage),
    "rl": PeerKey((AXOLOTL,), "training.objective", "the preference objective", rl),
    "pref_beta": PeerKey((LLAMAFACTORY,), "preference.beta", "the preference loss's beta"),
    "rpo_alpha": PeerKey((AXOLOTL,), "preference.rpo_alpha", "RPO's weight of the NLL term on the chosen side"),
    "pref_ftx": PeerKey((LLAMAFACTORY,), "preference.rpo_alpha", "the weight of the SFT loss on the chosen side"),
    "output_dir": PeerKey((AXOLOTL, TORCHTUNE) + HF, "output.dir", "the run's directory"),
    "report_to": PeerKey(HF, "output.report_to", "the trackers", report_to),
    "wandb_project": PeerKey(
        (AXOLOTL,), "output.report_to", "Weights & Biases logging", lambda v: {"output.report_to": ["wandb"]}
    ),
    # ---- no equivalent
    "deepspeed": PeerKey((AXOLOTL,) + HF, None, LAUNCH),
    "fsdp": PeerKey((AXOLOTL,) + HF, None, LAUNCH),
    "fsdp_config": PeerKey((AXOLOTL,) + HF, None, LAUNCH),
    "fsdp_version": PeerKey((AXOLOTL,), None, LAUNCH),
    "neftune_noise_alpha": PeerKey((AXOLOTL,) + HF, None, "NEFTune embedding noise: lorafit has no equivalent"),
    "special_tokens": PeerKey(
        (AXOLOTL,),
        None,
        "token overrides: lorafit uses the tokenizer's own pad and eos tokens (a chat template ends turns)",
    ),
    "loss._component_": PeerKey(
        (TORCHTUNE,), None, "the loss implementation: training.lm_head chooses lorafit's (auto: chunked on GPUs)"
    ),
    "metric_logger._component_": PeerKey(
        (TORCHTUNE,), None, "the metrics logger: output.report_to names lorafit's trackers"
    ),
    "max_samples": PeerKey(
        (LLAMAFACTORY,),
        None,
        "a cap on rows per dataset: a source's weight keeps a share instead (data.train: [{path: ..., weight: 0.5}])",
    ),
    "eos_token": PeerKey(
        (TRL,), None, "a token override: lorafit uses the tokenizer's own eos (a chat template ends turns)"
    ),
    "pad_token": PeerKey((TRL,), None, "a token override: lorafit uses the tokenizer's own pad token"),
    "per_device_eval_batch_size": PeerKey(HF, None, "lorafit evaluates with training.batch_size"),
    "save_adapter_weights_only": PeerKey(
        (TORCHTUNE,), None, "lorafit's checkpoints hold the adapter and the optimizer state"
    ),
    "lora_on_cpu": PeerKey((AXOLOTL,), None, "memory placement: lorafit's plan (`lorafit plan`) sizes the run instead"),
}
for _key in (
    "do_train",
    "do_eval",
    "plot_loss",
    "overwrite_output_dir",
    "overwrite_cache",
    "preprocessing_num_workers",
    "dataloader_num_workers",
    "dataset_num_proc",
    "dataset_prepared_path",
    "dataset_dir",
    "strict",
    "logging_dir",
    "wandb_entity",
    "wandb_name",
    "wandb_watch",
    "wandb_log_model",
    "hub_model_id",
    "push_to_hub",
    "ddp_timeout",
    "save_safetensors",
    "shuffle",
    "device",
    "log_every_n_steps",
    "log_peak_memory_stats",
    "metric_logger",
    "profiler",
    "loss",
    "tokenizer",
    "tokenizer.path",
    "tokenizer._component_",
    "checkpointer",
    "checkpointer._component_",
    "checkpointer.checkpoint_files",
    "checkpointer.model_type",
    "checkpointer.output_dir",
    "checkpointer.recipe_checkpoint",
    "resume_from_checkpoint",
    "local_rank",
):
    KEYS.setdefault(_key, PeerKey((), None, NO_EFFECT))


# lorafit's keys as the peers' configs spell them at the top level (`seed`, `weight_decay`, ...) are found by
# diagnostics in the schema itself; the importer maps them with these.
KEYS["seed"] = PeerKey((AXOLOTL, LLAMAFACTORY, TORCHTUNE, TRL), "training.seed", "the seed", seed)
# null that means something to the peer (no limit, a random seed): the importer asks these keys about it, and
# leaves other empty keys (the peer's default) out.
NULL_MATTERS = frozenset({"seed", "tokenizer.max_seq_len", "clip_grad_norm"})
for _key, _path in {
    "weight_decay": "training.weight_decay",
    "max_grad_norm": "training.max_grad_norm",
    "logging_steps": "training.logging_steps",
    "group_by_length": "training.group_by_length",
    "max_steps": "training.max_steps",
    "epochs": "training.epochs",
    "trust_remote_code": "model.trust_remote_code",
}.items():
    KEYS.setdefault(_key, PeerKey((AXOLOTL, LLAMAFACTORY, TORCHTUNE, TRL), _path, "the same setting"))


def key_for(loc: tuple) -> tuple[str, PeerKey] | None:
    """The peer key a recipe location spells: its dotted path (torchtune's `model.lora_rank`), else its last part."""
    parts = [str(p) for p in loc if not isinstance(p, int)]
    for name in (".".join(parts), parts[-1] if parts else ""):
        if name in KEYS and KEYS[name].tools:
            return name, KEYS[name]
    return None
