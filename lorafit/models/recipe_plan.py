"""The memory plan of the run a recipe describes, and `lorafit plan`'s printout of it.

plan.py holds the arithmetic; this module maps a recipe (its method, objective, reference, device and dtype rule)
onto it. Stdlib and rich only, like plan.py."""

from __future__ import annotations

from lorafit.core.device import DeviceInfo, compute_dtype_name, dtype_bytes, of_kind
from lorafit.core.methods import LORA_FAMILY
from lorafit.models.plan import (
    ModelShape,
    Plan,
    compare_methods,
    estimate,
    format_bytes,
    max_batch_size,
    resolve_targets,
)


def plannable_targets(shape: ModelShape, targets):
    """The recipe's targets, or all-linear (an upper bound) for regexes and names the plan cannot see;
    whether targets exist is the adapter's check, with its own clear error."""
    try:
        resolve_targets(shape, targets)
        return targets
    except ValueError:
        return "all-linear"


def recipe_settings(
    recipe,
    config: dict,
    device: DeviceInfo | str,
    seq_len: int | None = None,
    gradient_checkpointing: bool | None = None,
    trained_fraction: float = 1.0,
) -> dict:
    """`estimate`'s arguments for the run a recipe describes (seq_len: the longest batch expected, default
    max_length; trained_fraction: the share of tokens that are trained, from the data when it has been read).
    `device`: the detected device, or its kind; the weights are counted at the dtype training will use
    (device.compute_dtype_name, the rule training itself follows)."""
    from lorafit.core.device import cxx_compiler
    from lorafit.models.loss import resolve

    info = of_kind(device) if isinstance(device, str) else device

    t, a, q = recipe.training, recipe.adapter, recipe.quantization
    lora_like = a.method in LORA_FAMILY  # every method that trains A and B of rank r
    # A preference step runs each micro-batch's chosen and rejected sides as one batch of twice the rows (KTO: its
    # completions and their KL partners), with dropout off (TRL's disable_dropout); the reference forward runs
    # without grad, so its activations are freed layer by layer and only its log-probs stay. DPO and KTO score
    # through TRL's fused log-prob head; ORPO and SimPO (trl.experimental) through the full logits.
    preference = t.objective != "sft"
    fused = t.objective in ("dpo", "kto")
    return dict(
        method="lora",  # PEFT methods other than LoRA train far fewer parameters; LoRA's figure bounds them
        r=a.r if lora_like else 1,
        targets=plannable_targets(ModelShape.from_config(config), a.target_modules),
        dora=a.method == "dora",
        weight_bytes=dtype_bytes(compute_dtype_name(t.precision, recipe.model.dtype, info)),
        load_in_4bit=q.load_in_4bit,
        double_quant=q.double_quant,
        optimizer=t.optimizer,
        batch_size=t.batch_size * (2 if preference else 1),
        seq_len=min(seq_len or t.max_length, t.max_length),
        gradient_checkpointing=(t.gradient_checkpointing == "on")
        if gradient_checkpointing is None
        else gradient_checkpointing,
        lora_dropout=a.dropout if lora_like and not preference else 0.0,
        device=info.kind,
        lm_head="logprob" if fused else "full" if preference else resolve(t.lm_head, info.kind, a.method),
        trained_fraction=trained_fraction,
        compiled=t.compile == "on" and cxx_compiler() is not None,  # without a compiler the run stays eager
        reference=reference_kind(recipe),
    )


def reference_kind(recipe) -> str:
    """How a DPO / KTO run holds its reference (estimate's `reference`); `none` for the other objectives."""
    p = recipe.preference
    if recipe.training.objective not in ("dpo", "kto"):
        return "none"
    if p.precompute_ref_log_probs:
        return "precomputed"
    if recipe.adapter.init_from is None and p.reference in ("init", "base"):
        return "disabled"  # train/preference.py reference_model: TRL switches the fresh adapter off
    return "adapter" if p.reference == "init" else "model"


def for_recipe(recipe, config: dict, device: DeviceInfo | str, **kw) -> Plan:
    """The plan of the run a recipe describes; keywords as in `recipe_settings`."""
    return estimate(ModelShape.from_config(config), **recipe_settings(recipe, config, device, **kw))


def show(recipe, config: dict, console, seq_len: int | None = None, trained_fraction: float = 1.0) -> Plan:
    """Print the plan for this machine: breakdown, fit, largest micro-batch, and full vs LoRA vs QLoRA.
    `config`: the model's config.json (models.model_config)."""
    from rich.table import Table

    from lorafit.core import device as devices
    from lorafit.models.loss import resolve

    info = devices.detect()
    shape = ModelShape.from_config(config)
    settings = recipe_settings(recipe, config, info, seq_len=seq_len, trained_fraction=trained_fraction)
    p = estimate(shape, **settings)
    table = Table(
        title=f"memory plan: {recipe.model.name}, micro-batch {recipe.training.batch_size} x {settings['seq_len']} tokens on {info.name}"
    )
    table.add_column("part")
    table.add_column("size", justify="right")
    for part in (
        "weights",
        "quant_constants",
        "adapter",
        "gradients",
        "optimizer",
        "activations",
        "logits",
        "overhead",
        "total",
    ):
        table.add_row(part, format_bytes(getattr(p, part)))
    console.print(table)
    fits = p.total <= info.memory_bytes
    per_batch = {k: v for k, v in settings.items() if k != "batch_size"}
    largest = max_batch_size(shape, info.memory_bytes, limit=4096, **per_batch)
    console.print(
        f"{'[green]fits' if fits else '[red]does not fit'}[/]: {format_bytes(p.total)} of {format_bytes(info.memory_bytes)} available; "
        f"largest micro-batch that fits: {largest}; trainable {p.trainable_params:,} of {p.total_params:,} params",
        highlight=False,
    )
    compare = Table(title="the same run under full fine-tuning, LoRA and QLoRA (16-bit weights, as on a GPU)")
    for col in ("method", "model state", "total at this batch"):
        compare.add_column(col, justify="right" if col != "method" else "left")
    gpu = {
        **settings,
        "weight_bytes": 2,
        "device": "cuda",
        "lm_head": settings["lm_head"]
        if recipe.training.objective != "sft"
        else resolve(recipe.training.lm_head, "cuda", recipe.adapter.method),
    }
    for name in ("method", "load_in_4bit"):
        gpu.pop(name)
    for name, plan in compare_methods(shape, **gpu).items():
        compare.add_row(name, format_bytes(plan.model_state), format_bytes(plan.total))
    console.print(compare)
    return p
