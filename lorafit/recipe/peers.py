"""What other fine-tuning tools call lorafit's settings, and what each of their settings means here.

One table for two readers: recipe diagnostics (an unknown key or value that is a peer's spelling gets the lorafit
field and what the peer setting means, instead of a string-similar guess) and `lorafit import`, which converts a
peer config with the same entries. The facts are from the peers' documented options (axolotl, LLaMA-Factory,
torchtune, TRL, unsloth); no code of theirs is used. Stdlib only: `lorafit validate` reads it before anything heavy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from lorafit.core.chat_templates import CHAT_TEMPLATES

AXOLOTL, LLAMAFACTORY, TORCHTUNE, TRL, UNSLOTH = "axolotl", "LLaMA-Factory", "torchtune", "TRL", "unsloth"
HF = (LLAMAFACTORY, TRL)  # both take transformers' TrainingArguments names as they are


class Unmapped(Exception):
    """A peer setting lorafit has no field for; the message says what lorafit does instead."""


@dataclass(frozen=True)
class PeerValue:
    """A peer's value of a lorafit field: the lorafit settings it stands for (None: no equivalent)."""

    tools: tuple[str, ...]
    settings: dict[str, Any] | None
    means: str


@dataclass(frozen=True)
class PeerKey:
    """A peer's key: the lorafit field it sets and what it means there."""

    tools: tuple[str, ...]
    field: str | None  # None: lorafit has no equivalent; `means` says what it does instead
    means: str
    convert: Callable[[Any], dict[str, Any]] | None = None  # value -> {lorafit path: value}; else {field: value}

    def settings(self, value: Any) -> dict[str, Any]:
        """The lorafit settings this key with this value stands for; Unmapped when there are none."""
        if self.field is None:
            raise Unmapped(self.means)
        try:
            raw = self.convert(value) if self.convert else {self.field: value}
        except (TypeError, ValueError, AttributeError):  # a value of a shape the peer never writes
            raise Unmapped(f"{value!r} is not a value this setting takes") from None
        out: dict[str, Any] = {}
        for path, v in raw.items():
            out.update(translate_value(path, v))
        return out


def tool_names(tools: tuple[str, ...]) -> str:
    return " / ".join(tools)


def _number(value: Any) -> Any:
    """`2e-4` as YAML 1.1 reads it (a string) is a number to the peers' own parsers."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _number_into(path: str) -> Callable[[Any], dict[str, Any]]:
    return lambda v: {path: _number(v)}


def _flag(path: str, on: Any, off: Any = None) -> Callable[[Any], dict[str, Any]]:
    """A peer's boolean that sets a lorafit field to `on` (and to `off` when false; nothing when `off` is None)."""

    def convert(v: Any) -> dict[str, Any]:
        if v in (True, "true", "True"):
            return {path: on}
        if v in (False, None, "false", "False"):
            return {} if off is None else {path: off}
        raise Unmapped(f"expected true or false, got {v!r}")

    return convert


def _names(value: Any) -> list[str]:
    """LLaMA-Factory's comma strings (`q_proj,v_proj`) and lists alike."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return [str(v) for v in value or []]


def _targets(v: Any) -> dict[str, Any]:
    """LLaMA-Factory's `all` and comma strings, as the schema reads them (all-linear, a list)."""
    if v == "all":
        return {"adapter.target_modules": "all-linear"}
    if isinstance(v, str) and "," in v:
        return {"adapter.target_modules": _names(v)}
    return {"adapter.target_modules": v}


# Peer template names for lorafit's (data.chat_template); None is the model's own.
TEMPLATE_NAMES = {
    "tokenizer_default": None,  # axolotl: the tokenizer's own template
    "phi_3": "phi3",
    "phi": "phi3",
    "qwen": "qwen2",
    "qwen_25": "qwen2",
    "qwen2": "qwen2",
    "llama2": "llama2",
    "llama3": "llama3",
    "gemma": "gemma",
    "gemma3": "gemma3",
}


def chat_template_for(name: Any) -> str | None:
    """A peer's template name as lorafit's named template (or None: the model's own); Unmapped when lorafit has
    no template of that name."""
    if name is None:
        return None
    mapped = TEMPLATE_NAMES.get(name, name)
    if mapped is None or mapped in CHAT_TEMPLATES:
        return mapped
    raise Unmapped(
        f"no named template {name!r} here (named: {', '.join(CHAT_TEMPLATES)}); data.chat_template: null, the "
        "default, uses the model's own template"
    )


def _eval_fraction(v: Any) -> dict[str, Any]:
    v = _number(v)
    if isinstance(v, (int, float)) and 0 <= v < 1:
        return {"data.eval_split": v}
    if isinstance(v, (int, float)) and v >= 1:
        raise Unmapped(
            f"{v:g} held-out rows: lorafit holds out a fraction (data.eval_split: rows / total, e.g. 0.05), "
            "or give the held-out rows as data.eval"
        )
    raise Unmapped(f"expected a fraction or a row count, got {v!r}")


def _per_epoch(path: str) -> Callable[[Any], dict[str, Any]]:
    """axolotl's evals_per_epoch / saves_per_epoch: N per epoch is lorafit's `1/N epoch`."""

    def convert(v: Any) -> dict[str, Any]:
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise Unmapped(f"expected a positive count per epoch, got {v!r}")
        return {path: f"{round(1 / v, 4):g}epoch"}

    return convert


def _strategy(path: str) -> Callable[[Any], dict[str, Any]]:
    """transformers' eval_strategy / save_strategy: `epoch` is `1epoch`, `no` is 0, `steps` is set by *_steps."""

    def convert(v: Any) -> dict[str, Any]:
        if v == "epoch":
            return {path: "1epoch"}
        if v in ("no", False, None):
            return {path: 0}
        if v == "steps":
            return {}
        raise Unmapped(f"strategy {v!r}: lorafit evaluates and saves by steps or by epoch fractions")

    return convert


def _precision(kind: str) -> Callable[[Any], dict[str, Any]]:
    # `auto`, not the named precision: auto is bf16 (or fp16) on the GPUs that have it and fp32 on a CPU, where a
    # peer config's bf16: true would be refused.
    def convert(v: Any) -> dict[str, Any]:
        if v in (True, "true", "auto"):
            return {"training.precision": "auto"}
        if v in (False, None, "false"):
            return {}
        raise Unmapped(f"expected true, false or auto, got {v!r}")

    return convert


def _dtype(v: Any) -> dict[str, Any]:
    """torchtune's and TRL's `dtype`: bf16 / bfloat16 and the like. The training precision, `auto` for the half
    ones (see _precision)."""
    if v in ("bf16", "bfloat16", "fp16", "float16", "auto"):
        return {"training.precision": "auto"}
    if v in ("fp32", "float32"):
        return {"training.precision": "fp32"}
    raise Unmapped(f"dtype {v!r}: expected bf16, fp16 or fp32")


def _model_dtype(v: Any) -> dict[str, Any]:
    # The same reasoning as _precision: auto is the peer's bf16 wherever bf16 exists.
    if v in ("auto", "bfloat16", "bf16", "float16", "fp16", None):
        return {"model.dtype": "auto"}
    if v in ("float32", "fp32"):
        return {"model.dtype": "float32"}
    raise Unmapped(f"dtype {v!r}: model.dtype takes auto, float32, bfloat16 or float16")


def _quantization_bit(v: Any) -> dict[str, Any]:
    if v == 4:
        return {"quantization.load_in_4bit": True}
    if v == 8:
        return {"quantization.load_in_8bit": True}
    if v is None:
        return {}
    raise Unmapped(f"{v}-bit: bitsandbytes loads in 4 or 8 bits here (quantization.load_in_4bit / load_in_8bit)")


def _finetuning_type(v: Any) -> dict[str, Any]:
    if v == "lora":
        return {"adapter.method": "lora"}
    raise Unmapped(f"finetuning_type {v!r}: lorafit trains adapters only (lora, dora, ia3, ...), never all weights")


def _on_off(path: str) -> Callable[[Any], dict[str, Any]]:
    def convert(v: Any) -> dict[str, Any]:
        if v in (True, "unsloth", "true"):  # unsloth's own checkpointing is a kind of gradient checkpointing
            return {path: "on"}
        if v in (False, None, "false"):
            return {path: "off"}
        raise Unmapped(f"expected true or false, got {v!r}")

    return convert


def _report_to(v: Any) -> dict[str, Any]:
    items = _names(v) if isinstance(v, (str, list)) else []
    if "all" in items:
        raise Unmapped("`all` trackers: name them in output.report_to (tensorboard, mlflow, wandb, trackio)")
    return {"output.report_to": items or ["none"]}


def _torchtune_modules(v: Any) -> dict[str, Any]:
    """torchtune's attention module names are Llama's own; its output_proj is Hugging Face's o_proj."""
    names = {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "output_proj": "o_proj"}
    unknown = [n for n in _names(v) if n not in names]
    if unknown:
        raise Unmapped(f"torchtune modules {unknown}: lorafit knows q_proj, k_proj, v_proj, output_proj (o_proj)")
    return {"adapter.target_modules": [names[n] for n in _names(v)]}


def _torchtune_builder(v: Any) -> dict[str, Any]:
    """`torchtune.models.llama3_2.qlora_llama3_2_1b`: which adapter, from the builder's name."""
    name = str(v).rsplit(".", 1)[-1]
    if name.startswith("qlora_"):
        return {"adapter.method": "lora", "quantization.load_in_4bit": True}
    if name.startswith("lora_"):
        return {"adapter.method": "lora"}
    raise Unmapped(f"model builder {v}: not a LoRA or QLoRA builder, and lorafit trains adapters only")


TORCHTUNE_OPTIMIZERS = {
    "torch.optim.AdamW": "adamw_torch",
    "torch.optim.SGD": "sgd",
    "bitsandbytes.optim.AdamW8bit": "adamw_8bit",
    "bitsandbytes.optim.PagedAdamW8bit": "paged_adamw_8bit",
    "bitsandbytes.optim.PagedAdamW": "paged_adamw_32bit",
    "bitsandbytes.optim.PagedAdamW32bit": "paged_adamw_32bit",
}
TORCHTUNE_SCHEDULERS = {
    "torchtune.training.lr_schedulers.get_cosine_schedule_with_warmup": "cosine",
    "torchtune.modules.get_cosine_schedule_with_warmup": "cosine",
}


def _component(table: dict[str, str], path: str, what: str) -> Callable[[Any], dict[str, Any]]:
    def convert(v: Any) -> dict[str, Any]:
        if v in table:
            return {path: table[v]}
        raise Unmapped(f"{what} {v}: lorafit knows {', '.join(table)}")

    return convert


def _max_steps_per_epoch(v: Any) -> dict[str, Any]:
    if v is None:
        return {}
    raise Unmapped("steps per epoch are not capped here: training.max_steps caps the whole run")


def _clip(v: Any) -> dict[str, Any]:
    return {"training.max_grad_norm": 0.0 if v is None else _number(v)}  # torchtune's null: no clipping


def _max_length(v: Any) -> dict[str, Any]:
    if v is None:
        raise Unmapped("no length limit: lorafit always has one (training.max_length, 512 unless set)")
    return {"training.max_length": v}


def _stage(v: Any) -> dict[str, Any]:
    if v in ("sft", "dpo", "kto"):
        return {"training.objective": v}
    if v == "pt":
        raise Unmapped("pre-training on raw text: data.format: text trains every token of each document")
    raise Unmapped(f"stage {v!r}: lorafit trains sft, dpo, kto, orpo and simpo")


def _rl(v: Any) -> dict[str, Any]:
    if v in ("dpo", "kto", "orpo", "simpo"):
        return {"training.objective": v}
    raise Unmapped(f"rl {v!r}: lorafit trains sft, dpo, kto, orpo and simpo")


def _modules_to_save(v: Any) -> dict[str, Any]:
    return {"adapter.modules_to_save": _names(v)}


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
    "torch_dtype": PeerKey((TRL,), "model.dtype", "the weights' dtype", _model_dtype),
    "dtype": PeerKey((TORCHTUNE, TRL, UNSLOTH), "training.precision", "the training dtype", _dtype),
    "attn_implementation": PeerKey((TRL,), "model.attn_implementation", "the attention kernel"),
    "flash_attention": PeerKey(
        (AXOLOTL,),
        "model.attn_implementation",
        "FlashAttention-2",
        _flag("model.attn_implementation", "flash_attention_2"),
    ),
    "sdp_attention": PeerKey(
        (AXOLOTL,), "model.attn_implementation", "PyTorch's fused attention", _flag("model.attn_implementation", "sdpa")
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
        (LLAMAFACTORY,), "quantization.load_in_4bit", "the base's bitsandbytes bits", _quantization_bit
    ),
    "bnb_4bit_quant_type": PeerKey((TRL,), "quantization.quant_type", "the 4-bit data type (nf4, fp4)"),
    "quantization_type": PeerKey((LLAMAFACTORY,), "quantization.quant_type", "the 4-bit data type (nf4, fp4)"),
    "bnb_4bit_use_double_quant": PeerKey((TRL,), "quantization.double_quant", "4-bit double quantization"),
    "use_bnb_nested_quant": PeerKey((TRL,), "quantization.double_quant", "4-bit double quantization"),
    "double_quantization": PeerKey((LLAMAFACTORY,), "quantization.double_quant", "4-bit double quantization"),
    "bnb_4bit_compute_dtype": PeerKey((TRL,), "quantization.compute_dtype", "the 4-bit matmuls' dtype"),
    # ---- adapter
    "adapter": PeerKey((AXOLOTL,), "adapter.method", "the adapter (lora, qlora)"),
    "finetuning_type": PeerKey((LLAMAFACTORY,), "adapter.method", "what is trained", _finetuning_type),
    "lora_r": PeerKey((AXOLOTL, TRL), "adapter.r", "the LoRA rank"),
    "lora_rank": PeerKey((LLAMAFACTORY,), "adapter.r", "the LoRA rank"),
    "model.lora_rank": PeerKey((TORCHTUNE,), "adapter.r", "the LoRA rank"),
    "r": PeerKey((UNSLOTH,), "adapter.r", "the LoRA rank"),
    "lora_alpha": PeerKey((AXOLOTL, LLAMAFACTORY, TRL, UNSLOTH), "adapter.alpha", "the LoRA scaling numerator"),
    "model.lora_alpha": PeerKey((TORCHTUNE,), "adapter.alpha", "the LoRA scaling numerator"),
    "lora_dropout": PeerKey((AXOLOTL, LLAMAFACTORY, TRL, UNSLOTH), "adapter.dropout", "dropout on the adapter input"),
    "model.lora_dropout": PeerKey((TORCHTUNE,), "adapter.dropout", "dropout on the adapter input"),
    "lora_target_modules": PeerKey((AXOLOTL, TRL), "adapter.target_modules", "the modules adapted", _targets),
    "lora_target": PeerKey(
        (LLAMAFACTORY,), "adapter.target_modules", "the modules adapted (`all`: every linear layer)", _targets
    ),
    "target_modules": PeerKey((UNSLOTH,), "adapter.target_modules", "the modules adapted", _targets),
    "lora_target_linear": PeerKey(
        (AXOLOTL,),
        "adapter.target_modules",
        "every linear layer",
        _flag("adapter.target_modules", "all-linear"),
    ),
    "model.lora_attn_modules": PeerKey(
        (TORCHTUNE,), "adapter.target_modules", "the attention modules adapted", _torchtune_modules
    ),
    "model.apply_lora_to_mlp": PeerKey(
        (TORCHTUNE,),
        "adapter.target_modules",
        "the feed-forward modules adapted too (w1, w2, w3: gate_proj, down_proj, up_proj)",
        _flag("adapter.target_modules", ["gate_proj", "up_proj", "down_proj"]),
    ),
    "model.apply_lora_to_output": PeerKey(
        (TORCHTUNE,),
        None,
        "LoRA on the output projection: lorafit adapts no output layer; adapter.modules_to_save: [lm_head] trains it in full",
    ),
    "model._component_": PeerKey(
        (TORCHTUNE,), "adapter.method", "the model builder (lora_* / qlora_*)", _torchtune_builder
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
        lambda v: {"adapter.method": "loraplus", "adapter.loraplus_lr_ratio": _number(v)},
    ),
    "pissa_init": PeerKey((LLAMAFACTORY,), "adapter.method", "PiSSA initialisation", _flag("adapter.method", "pissa")),
    "pissa_iter": PeerKey((LLAMAFACTORY,), "adapter.pissa_niter", "PiSSA's fast-SVD iterations"),
    "lora_modules_to_save": PeerKey(
        (AXOLOTL, TRL), "adapter.modules_to_save", "modules trained in full", _modules_to_save
    ),
    "additional_target": PeerKey(
        (LLAMAFACTORY,), "adapter.modules_to_save", "modules trained in full", _modules_to_save
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
    "val_set_size": PeerKey((AXOLOTL,), "data.eval_split", "the held-out share of the training data", _eval_fraction),
    "val_size": PeerKey((LLAMAFACTORY,), "data.eval_split", "the held-out share of the training data", _eval_fraction),
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
        (AXOLOTL,), "data.train_on", "loss on the prompt too", _flag("data.train_on", "all", "assistant")
    ),
    "train_on_prompt": PeerKey(
        (LLAMAFACTORY,), "data.train_on", "loss on the prompt too", _flag("data.train_on", "all", "assistant")
    ),
    "dataset.train_on_input": PeerKey(
        (TORCHTUNE,), "data.train_on", "loss on the prompt too", _flag("data.train_on", "all", "assistant")
    ),
    "completion_only_loss": PeerKey(
        (TRL,), "data.train_on", "loss on the completion only", _flag("data.train_on", "assistant", "all")
    ),
    "assistant_only_loss": PeerKey(
        (TRL,), "data.train_on", "loss on assistant turns only", _flag("data.train_on", "assistant")
    ),
    "mask_history": PeerKey(
        (LLAMAFACTORY,), "data.train_on", "loss on the last turn only", _flag("data.train_on", "last_assistant")
    ),
    "sequence_len": PeerKey((AXOLOTL,), "training.max_length", "the longest example in tokens", _max_length),
    "cutoff_len": PeerKey((LLAMAFACTORY,), "training.max_length", "the longest example in tokens", _max_length),
    "max_seq_length": PeerKey((TRL, UNSLOTH), "training.max_length", "the longest example in tokens", _max_length),
    "max_length": PeerKey((TRL,), "training.max_length", "the longest example in tokens", _max_length),
    "tokenizer.max_seq_len": PeerKey((TORCHTUNE,), "training.max_length", "the longest example in tokens", _max_length),
    # ---- training
    "learning_rate": PeerKey((AXOLOTL,) + HF, "training.lr", "the peak learning rate", _number_into("training.lr")),
    "optimizer.lr": PeerKey((TORCHTUNE,), "training.lr", "the peak learning rate", _number_into("training.lr")),
    "micro_batch_size": PeerKey((AXOLOTL,), "training.batch_size", "the micro-batch per device"),
    "per_device_train_batch_size": PeerKey(HF, "training.batch_size", "the micro-batch per device"),
    "batch_size": PeerKey((TORCHTUNE,), "training.batch_size", "the micro-batch per device"),
    "gradient_accumulation_steps": PeerKey(
        (AXOLOTL, TORCHTUNE) + HF, "training.grad_accum", "micro-batches accumulated per optimizer step"
    ),
    "num_epochs": PeerKey(
        (AXOLOTL,), "training.epochs", "passes over the training data", _number_into("training.epochs")
    ),
    "num_train_epochs": PeerKey(
        HF, "training.epochs", "passes over the training data", _number_into("training.epochs")
    ),
    "max_steps_per_epoch": PeerKey((TORCHTUNE,), "training.max_steps", "a cap per epoch", _max_steps_per_epoch),
    "warmup_steps": PeerKey((AXOLOTL,) + HF, "training.warmup_steps", "learning-rate warmup in steps"),
    "lr_scheduler.num_warmup_steps": PeerKey((TORCHTUNE,), "training.warmup_steps", "learning-rate warmup in steps"),
    "warmup_ratio": PeerKey((AXOLOTL,) + HF, "training.warmup_ratio", "learning-rate warmup as a share of the steps"),
    "lr_scheduler": PeerKey((AXOLOTL,), "training.scheduler", "the learning-rate schedule"),
    "lr_scheduler_type": PeerKey(HF, "training.scheduler", "the learning-rate schedule"),
    "lr_scheduler._component_": PeerKey(
        (TORCHTUNE,),
        "training.scheduler",
        "the learning-rate schedule",
        _component(TORCHTUNE_SCHEDULERS, "training.scheduler", "scheduler"),
    ),
    "optimizer": PeerKey((AXOLOTL,), "training.optimizer", "the optimizer"),
    "optim": PeerKey(HF, "training.optimizer", "the optimizer"),
    "optimizer._component_": PeerKey(
        (TORCHTUNE,),
        "training.optimizer",
        "the optimizer",
        _component(TORCHTUNE_OPTIMIZERS, "training.optimizer", "optimizer"),
    ),
    "optimizer.weight_decay": PeerKey((TORCHTUNE,), "training.weight_decay", "decoupled weight decay"),
    "optimizer.fused": PeerKey(
        (TORCHTUNE,), "training.optimizer", "the fused AdamW kernel", _flag("training.optimizer", "adamw_torch_fused")
    ),
    "clip_grad_norm": PeerKey((TORCHTUNE,), "training.max_grad_norm", "gradient clipping", _clip),
    "gradient_checkpointing": PeerKey(
        (AXOLOTL, UNSLOTH) + HF,
        "training.gradient_checkpointing",
        "recomputing activations in backward",
        _on_off("training.gradient_checkpointing"),
    ),
    "use_gradient_checkpointing": PeerKey(
        (UNSLOTH,),
        "training.gradient_checkpointing",
        "recomputing activations in backward",
        _on_off("training.gradient_checkpointing"),
    ),
    "enable_activation_checkpointing": PeerKey(
        (TORCHTUNE,),
        "training.gradient_checkpointing",
        "recomputing activations in backward",
        _on_off("training.gradient_checkpointing"),
    ),
    "bf16": PeerKey((AXOLOTL,) + HF, "training.precision", "bf16 mixed precision", _precision("bf16")),
    "fp16": PeerKey((AXOLOTL,) + HF, "training.precision", "fp16 mixed precision", _precision("fp16")),
    "tf32": PeerKey((AXOLOTL,) + HF, "training.tf32", "TF32 matmuls on CUDA"),
    "torch_compile": PeerKey((AXOLOTL,) + HF, "training.compile", "torch.compile", _on_off("training.compile")),
    "compile": PeerKey((TORCHTUNE,), "training.compile", "torch.compile", _on_off("training.compile")),
    "eval_steps": PeerKey((AXOLOTL,) + HF, "training.eval_every", "evaluation every N steps"),
    "run_val_every_n_steps": PeerKey((TORCHTUNE,), "training.eval_every", "evaluation every N steps"),
    "evals_per_epoch": PeerKey(
        (AXOLOTL,), "training.eval_every", "evaluations per epoch", _per_epoch("training.eval_every")
    ),
    "eval_strategy": PeerKey(HF, "training.eval_every", "when to evaluate", _strategy("training.eval_every")),
    "evaluation_strategy": PeerKey(HF, "training.eval_every", "when to evaluate", _strategy("training.eval_every")),
    "save_steps": PeerKey((AXOLOTL,) + HF, "training.save_every", "a checkpoint every N steps"),
    "saves_per_epoch": PeerKey(
        (AXOLOTL,), "training.save_every", "checkpoints per epoch", _per_epoch("training.save_every")
    ),
    "save_strategy": PeerKey(HF, "training.save_every", "when to checkpoint", _strategy("training.save_every")),
    "save_total_limit": PeerKey((AXOLOTL,) + HF, "training.keep_checkpoints", "checkpoints kept"),
    "stage": PeerKey((LLAMAFACTORY,), "training.objective", "the training objective", _stage),
    "rl": PeerKey((AXOLOTL,), "training.objective", "the preference objective", _rl),
    "pref_beta": PeerKey((LLAMAFACTORY,), "preference.beta", "the preference loss's beta"),
    "rpo_alpha": PeerKey((AXOLOTL,), "preference.rpo_alpha", "RPO's weight of the NLL term on the chosen side"),
    "pref_ftx": PeerKey((LLAMAFACTORY,), "preference.rpo_alpha", "the weight of the SFT loss on the chosen side"),
    "output_dir": PeerKey((AXOLOTL, TORCHTUNE) + HF, "output.dir", "the run's directory"),
    "report_to": PeerKey(HF, "output.report_to", "the trackers", _report_to),
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
def _seed(v: Any) -> dict[str, Any]:
    if v is None:
        raise Unmapped(
            "a random seed: lorafit runs are seeded so they can be reproduced (training.seed, 42 unless set)"
        )
    return {"training.seed": v}


KEYS["seed"] = PeerKey((AXOLOTL, LLAMAFACTORY, TORCHTUNE, TRL), "training.seed", "the seed", _seed)
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

# Peer values of lorafit fields, by field and by the value as the peer writes it (compared lower-case).
_NO_SCHEDULER = "no equivalent schedule: lorafit has cosine, linear, constant and constant_with_warmup"
_NO_OPTIMIZER = (
    "no equivalent optimizer: lorafit has adamw_torch(_fused), adamw_8bit, paged_adamw_8bit/32bit, adafactor, sgd"
)
VALUES: dict[str, dict[str, PeerValue]] = {
    "adapter.method": {
        "qlora": PeerValue(
            (AXOLOTL,),
            {"adapter.method": "lora", "quantization.load_in_4bit": True},
            "QLoRA, which is LoRA on a 4-bit base",
        ),
        "full": PeerValue((LLAMAFACTORY,), None, "full fine-tuning: lorafit trains adapters only"),
        "freeze": PeerValue((LLAMAFACTORY,), None, "training some layers in full: lorafit trains adapters only"),
    },
    "training.optimizer": {
        "adamw": PeerValue((TORCHTUNE,), {"training.optimizer": "adamw_torch"}, "PyTorch's AdamW"),
        "adamw_hf": PeerValue(HF, {"training.optimizer": "adamw_torch"}, "AdamW"),
        "adamw_apex_fused": PeerValue(HF, {"training.optimizer": "adamw_torch_fused"}, "a fused AdamW"),
        "adamw_bnb_8bit": PeerValue(HF, {"training.optimizer": "adamw_8bit"}, "bitsandbytes' 8-bit AdamW"),
        "paged_adamw": PeerValue(HF, {"training.optimizer": "paged_adamw_32bit"}, "bitsandbytes' paged AdamW"),
        **{
            name: PeerValue((AXOLOTL,) + HF, None, _NO_OPTIMIZER)
            for name in (
                "lion_8bit",
                "lion_32bit",
                "paged_lion_8bit",
                "paged_lion_32bit",
                "galore_adamw",
                "ademamix",
                "muon",
                "schedule_free_adamw",
                "adopt_adamw",
                "lomo",
                "adalomo",
                "came_pytorch",
            )
        },
    },
    "training.scheduler": {
        name: PeerValue((AXOLOTL,) + HF, None, _NO_SCHEDULER)
        for name in (
            "cosine_with_restarts",
            "cosine_with_min_lr",
            "polynomial",
            "inverse_sqrt",
            "reduce_lr_on_plateau",
            "warmup_stable_decay",
            "one_cycle",
            "rex",
        )
    },
    "model.dtype": {
        "bf16": PeerValue((TORCHTUNE,), {"model.dtype": "bfloat16"}, "bfloat16"),
        "fp16": PeerValue((TORCHTUNE,), {"model.dtype": "float16"}, "float16"),
        "fp32": PeerValue((TORCHTUNE,), {"model.dtype": "float32"}, "float32"),
    },
    "training.precision": {
        "bfloat16": PeerValue(HF, {"training.precision": "bf16"}, "bf16 mixed precision"),
        "float16": PeerValue(HF, {"training.precision": "fp16"}, "fp16 mixed precision"),
        "float32": PeerValue(HF, {"training.precision": "fp32"}, "full precision"),
    },
    "model.attn_implementation": {
        "fa2": PeerValue((LLAMAFACTORY,), {"model.attn_implementation": "flash_attention_2"}, "FlashAttention-2"),
        "disabled": PeerValue((LLAMAFACTORY,), {"model.attn_implementation": "eager"}, "plain attention"),
    },
    "data.format": {
        "chat_template": PeerValue((AXOLOTL,), {"data.format": "messages"}, "chat data rendered by the chat template"),
        "completion": PeerValue((AXOLOTL,), {"data.format": "text"}, "raw text, every token trained"),
        "conversation": PeerValue((AXOLOTL,), {"data.format": "sharegpt"}, "ShareGPT conversations"),
    },
}


def translate_value(path: str, value: Any) -> dict[str, Any]:
    """A lorafit field's value as a peer writes it, as lorafit's settings; Unmapped when lorafit has none."""
    found = VALUES.get(path, {}).get(str(value).lower()) if isinstance(value, str) else None
    if found is None:
        return {path: value}
    if found.settings is None:
        raise Unmapped(found.means)
    return dict(found.settings)


def key_for(loc: tuple) -> tuple[str, PeerKey] | None:
    """The peer key a recipe location spells: its dotted path (torchtune's `model.lora_rank`), else its last part."""
    parts = [str(p) for p in loc if not isinstance(p, int)]
    for name in (".".join(parts), parts[-1] if parts else ""):
        if name in KEYS and KEYS[name].tools:
            return name, KEYS[name]
    return None


def value_for(path: str, value: Any) -> PeerValue | None:
    """The peer meaning of a value a lorafit field refused (`adapter.method: qlora`)."""
    return VALUES.get(path, {}).get(value.lower()) if isinstance(value, str) else None
