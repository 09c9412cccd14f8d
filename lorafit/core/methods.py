"""What a recipe may name, and what each name means: adapter method families, target-module sets, optimizers.

Dependency-free (stdlib only) on purpose: the recipe schema, the adapter builder and the memory plan all
read these facts, and `lorafit validate` / `lorafit plan` must not import torch to do so.
"""

from __future__ import annotations

import re

METHODS = (
    "lora",
    "dora",
    "rslora",
    "loraplus",
    "pissa",
    "olora",
    "loftq",
    "eva",
    "corda",
    "ia3",
    "prompt_tuning",
    "prefix_tuning",
)
LORA_FAMILY = frozenset({"lora", "dora", "rslora", "loraplus", "pissa", "olora", "loftq", "eva", "corda"})
RESIDUAL_INIT = frozenset({"pissa", "olora", "corda"})  # rewrite the base weight into a residual
DATA_INIT = frozenset({"eva", "corda"})  # initialise from activations on training examples
PROMPT_LEARNING = frozenset({"prompt_tuning", "prefix_tuning"})
# LoftQ's A·B starts at W - Q(W): it only merges into the dequantized 4-bit weights, never into the original W
# (merging there would add the quantisation error twice), so `lorafit merge` refuses it.
MERGEABLE = (LORA_FAMILY - {"loftq"}) | {"ia3"}
# The adapter starts as a no-op (LoRA's B = 0, IA3's ones): the untrained model computes what the base computes,
# so the held-out loss before training can be measured after it, with the adapter switched off.
STARTS_AS_BASE = (LORA_FAMILY - RESIDUAL_INIT - {"loftq"}) | {"ia3"}

# Linear-layer names of the common decoder families (Llama, Mistral, Qwen, Gemma, SmolLM...).
TARGET_SETS = {
    "attention": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "qv": ("q_proj", "v_proj"),
    "mlp": ("gate_proj", "up_proj", "down_proj"),
}
# What `all-linear` adapts in a Llama-style decoder layer (the plan's reading; PEFT resolves it per model).
ALL_LINEAR = TARGET_SETS["attention"] + TARGET_SETS["mlp"]
TARGET_KEYWORDS = ("all-linear", *TARGET_SETS)

# Optimizers a recipe may name (TRL/transformers `optim` values); the 8-bit and paged ones come from bitsandbytes.
OPTIMIZERS = (
    "adamw_torch",
    "adamw_torch_fused",
    "adamw_8bit",
    "paged_adamw_8bit",
    "paged_adamw_32bit",
    "adafactor",
    "sgd",
)


def is_module_name(target: str) -> bool:
    """`q_proj` or `self_attn.q_proj` are names (suffix match); anything with regex syntax is a pattern."""
    return re.fullmatch(r"[\w.]+", target) is not None


def unmatched_targets(targets: list[str], module_names: list[str]) -> list[str]:
    """The listed target names no module matches, as PEFT matches a list: a module's full name equals the name or
    ends with `.name`. PEFT only refuses a list that matches nothing; a partly wrong one would train less than
    it says."""
    return [t for t in targets if not any(n == t or n.endswith("." + t) for n in module_names)]
