"""recipe.adapter -> a PEFT config. All adapter math is PEFT's; this module only chooses its knobs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lorafit.errors import RecipeError

if TYPE_CHECKING:
    from lorafit.recipe import Recipe

# Names for the common decoder families (Llama, Mistral, Qwen, Gemma, SmolLM...).
TARGET_SETS = {
    "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qv": ["q_proj", "v_proj"],
    "mlp": ["gate_proj", "up_proj", "down_proj"],
}
IA3_TARGETS = ["k_proj", "v_proj", "down_proj"]
IA3_FEEDFORWARD = ["down_proj"]
LORA_FAMILY = {"lora", "dora", "rslora", "loraplus", "pissa", "olora"}
MERGEABLE = LORA_FAMILY | {"ia3"}


def target_modules(recipe: Recipe) -> str | list[str]:
    targets = recipe.adapter.target_modules
    if isinstance(targets, list):
        return targets
    if targets == "all-linear":
        return "all-linear"
    if targets in TARGET_SETS:
        return TARGET_SETS[targets]
    return [targets]


def peft_config(recipe: Recipe, tokenizer_path: str | None = None):
    from peft import IA3Config, LoraConfig, PrefixTuningConfig, PromptTuningConfig, TaskType

    a = recipe.adapter
    method = a.method
    if method in LORA_FAMILY:
        init = {"pissa": "pissa_niter_4", "olora": "olora"}.get(method, True)
        return LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=a.r,
            lora_alpha=a.alpha,
            lora_dropout=a.dropout,
            target_modules=target_modules(recipe),
            use_dora=method == "dora",
            use_rslora=method == "rslora" or a.use_rslora,
            init_lora_weights=init,
            modules_to_save=a.modules_to_save or None,
        )
    if method == "ia3":
        targets = target_modules(recipe)
        return IA3Config(
            task_type=TaskType.CAUSAL_LM,
            target_modules=IA3_TARGETS if targets == "all-linear" else targets,
            feedforward_modules=[m for m in IA3_FEEDFORWARD if targets == "all-linear" or m in targets],
            modules_to_save=a.modules_to_save or None,
        )
    if method == "prompt_tuning":
        kwargs = {}
        if a.prompt_init_text:
            kwargs = dict(prompt_tuning_init="TEXT", prompt_tuning_init_text=a.prompt_init_text, tokenizer_name_or_path=tokenizer_path)
        return PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=a.num_virtual_tokens, **kwargs)
    if method == "prefix_tuning":
        return PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=a.num_virtual_tokens)
    raise RecipeError(f"adapter.method {method!r} is not supported")


def matched_modules(model) -> dict[str, int]:
    """How many modules of each name carry an adapter, e.g. {'q_proj': 30, ...}."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    counts: dict[str, int] = {}
    for name, module in model.named_modules():
        if isinstance(module, BaseTunerLayer):
            short = name.rsplit(".", 1)[-1]
            counts[short] = counts.get(short, 0) + 1
    return counts


def wrap(model, recipe: Recipe, tokenizer_path: str | None = None):
    """The PEFT model, with a clear error when the targets match nothing."""
    from peft import get_peft_model

    try:
        return get_peft_model(model, peft_config(recipe, tokenizer_path))
    except ValueError as exc:
        if "not found in the base model" in str(exc) or "Target modules" in str(exc):
            names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m).__name__.endswith("Linear")})
            raise RecipeError(
                f"adapter.target_modules {recipe.adapter.target_modules!r} matches no module of this model",
                f"its linear layers are named: {', '.join(names)}",
            ) from None
        raise


def optimizer_for(model, recipe: Recipe, args):
    """LoRA+ needs its own parameter groups (B learns ratio x faster than A); others use the Trainer's."""
    if recipe.adapter.method != "loraplus":
        return None
    from peft.optimizers import create_loraplus_optimizer
    from transformers import Trainer

    optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    return create_loraplus_optimizer(
        model=model,
        optimizer_cls=optimizer_cls,
        lr=recipe.training.lr,
        loraplus_lr_ratio=recipe.adapter.loraplus_lr_ratio,
        weight_decay=recipe.training.weight_decay,
        **{k: v for k, v in optimizer_kwargs.items() if k not in ("lr", "weight_decay")},
    )
