"""How a peer's value becomes lorafit's settings: one converter per kind of peer key, used by the key table."""

from __future__ import annotations

from typing import Any, Callable

from lorafit.core.chat_templates import CHAT_TEMPLATES
from lorafit.recipe.peers.spec import Unmapped


def number(value: Any) -> Any:
    """`2e-4` as YAML 1.1 reads it (a string) is a number to the peers' own parsers."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def number_into(path: str) -> Callable[[Any], dict[str, Any]]:
    return lambda v: {path: number(v)}


def flag(path: str, on: Any, off: Any = None) -> Callable[[Any], dict[str, Any]]:
    """A peer's boolean that sets a lorafit field to `on` (and to `off` when false; nothing when `off` is None)."""

    def convert(v: Any) -> dict[str, Any]:
        if v in (True, "true", "True"):
            return {path: on}
        if v in (False, None, "false", "False"):
            return {} if off is None else {path: off}
        raise Unmapped(f"expected true or false, got {v!r}")

    return convert


def names(value: Any) -> list[str]:
    """LLaMA-Factory's comma strings (`q_proj,v_proj`) and lists alike."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return [str(v) for v in value or []]


def targets(v: Any) -> dict[str, Any]:
    """LLaMA-Factory's `all` and comma strings, as the schema reads them (all-linear, a list)."""
    if v == "all":
        return {"adapter.target_modules": "all-linear"}
    if isinstance(v, str) and "," in v:
        return {"adapter.target_modules": names(v)}
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


def eval_fraction(v: Any) -> dict[str, Any]:
    v = number(v)
    if isinstance(v, (int, float)) and 0 <= v < 1:
        return {"data.eval_split": v}
    if isinstance(v, (int, float)) and v >= 1:
        raise Unmapped(
            f"{v:g} held-out rows: lorafit holds out a fraction (data.eval_split: rows / total, e.g. 0.05), "
            "or give the held-out rows as data.eval"
        )
    raise Unmapped(f"expected a fraction or a row count, got {v!r}")


def per_epoch(path: str) -> Callable[[Any], dict[str, Any]]:
    """axolotl's evals_per_epoch / saves_per_epoch: N per epoch is lorafit's `1/N epoch`."""

    def convert(v: Any) -> dict[str, Any]:
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise Unmapped(f"expected a positive count per epoch, got {v!r}")
        return {path: f"{round(1 / v, 4):g}epoch"}

    return convert


def strategy(path: str) -> Callable[[Any], dict[str, Any]]:
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


def precision(kind: str) -> Callable[[Any], dict[str, Any]]:
    # `auto`, not the named precision: auto is bf16 (or fp16) on the GPUs that have it and fp32 on a CPU, where a
    # peer config's bf16: true would be refused.
    def convert(v: Any) -> dict[str, Any]:
        if v in (True, "true", "auto"):
            return {"training.precision": "auto"}
        if v in (False, None, "false"):
            return {}
        raise Unmapped(f"expected true, false or auto, got {v!r}")

    return convert


def dtype(v: Any) -> dict[str, Any]:
    """torchtune's and TRL's `dtype`: bf16 / bfloat16 and the like. The training precision, `auto` for the half
    ones (see precision)."""
    if v in ("bf16", "bfloat16", "fp16", "float16", "auto"):
        return {"training.precision": "auto"}
    if v in ("fp32", "float32"):
        return {"training.precision": "fp32"}
    raise Unmapped(f"dtype {v!r}: expected bf16, fp16 or fp32")


def model_dtype(v: Any) -> dict[str, Any]:
    # The same reasoning as precision: auto is the peer's bf16 wherever bf16 exists.
    if v in ("auto", "bfloat16", "bf16", "float16", "fp16", None):
        return {"model.dtype": "auto"}
    if v in ("float32", "fp32"):
        return {"model.dtype": "float32"}
    raise Unmapped(f"dtype {v!r}: model.dtype takes auto, float32, bfloat16 or float16")


def quantization_bit(v: Any) -> dict[str, Any]:
    if v == 4:
        return {"quantization.load_in_4bit": True}
    if v == 8:
        return {"quantization.load_in_8bit": True}
    if v is None:
        return {}
    raise Unmapped(f"{v}-bit: bitsandbytes loads in 4 or 8 bits here (quantization.load_in_4bit / load_in_8bit)")


def finetuning_type(v: Any) -> dict[str, Any]:
    if v == "lora":
        return {"adapter.method": "lora"}
    raise Unmapped(f"finetuning_type {v!r}: lorafit trains adapters only (lora, dora, ia3, ...), never all weights")


def on_off(path: str) -> Callable[[Any], dict[str, Any]]:
    def convert(v: Any) -> dict[str, Any]:
        if v in (True, "unsloth", "true"):  # unsloth's own checkpointing is a kind of gradient checkpointing
            return {path: "on"}
        if v in (False, None, "false"):
            return {path: "off"}
        raise Unmapped(f"expected true or false, got {v!r}")

    return convert


def report_to(v: Any) -> dict[str, Any]:
    items = names(v) if isinstance(v, (str, list)) else []
    if "all" in items:
        raise Unmapped("`all` trackers: name them in output.report_to (tensorboard, mlflow, wandb, trackio)")
    return {"output.report_to": items or ["none"]}


def torchtune_modules(v: Any) -> dict[str, Any]:
    """torchtune's attention module names are Llama's own; its output_proj is Hugging Face's o_proj."""
    hf = {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "output_proj": "o_proj"}
    unknown = [n for n in names(v) if n not in hf]
    if unknown:
        raise Unmapped(f"torchtune modules {unknown}: lorafit knows q_proj, k_proj, v_proj, output_proj (o_proj)")
    return {"adapter.target_modules": [hf[n] for n in names(v)]}


def torchtune_builder(v: Any) -> dict[str, Any]:
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


def component(table: dict[str, str], path: str, what: str) -> Callable[[Any], dict[str, Any]]:
    def convert(v: Any) -> dict[str, Any]:
        if v in table:
            return {path: table[v]}
        raise Unmapped(f"{what} {v}: lorafit knows {', '.join(table)}")

    return convert


def max_steps_per_epoch(v: Any) -> dict[str, Any]:
    if v is None:
        return {}
    raise Unmapped("steps per epoch are not capped here: training.max_steps caps the whole run")


def clip(v: Any) -> dict[str, Any]:
    return {"training.max_grad_norm": 0.0 if v is None else number(v)}  # torchtune's null: no clipping


def max_length(v: Any) -> dict[str, Any]:
    if v is None:
        raise Unmapped("no length limit: lorafit always has one (training.max_length, 512 unless set)")
    return {"training.max_length": v}


def stage(v: Any) -> dict[str, Any]:
    if v in ("sft", "dpo", "kto"):
        return {"training.objective": v}
    if v == "pt":
        raise Unmapped("pre-training on raw text: data.format: text trains every token of each document")
    raise Unmapped(f"stage {v!r}: lorafit trains sft, dpo, kto, orpo and simpo")


def rl(v: Any) -> dict[str, Any]:
    if v in ("dpo", "kto", "orpo", "simpo"):
        return {"training.objective": v}
    raise Unmapped(f"rl {v!r}: lorafit trains sft, dpo, kto, orpo and simpo")


def modules_to_save(v: Any) -> dict[str, Any]:
    return {"adapter.modules_to_save": names(v)}


def seed(v: Any) -> dict[str, Any]:
    if v is None:
        raise Unmapped(
            "a random seed: lorafit runs are seeded so they can be reproduced (training.seed, 42 unless set)"
        )
    return {"training.seed": v}
