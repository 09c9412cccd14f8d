"""Which modules an adapter attaches to: recipe.adapter.target_modules as PEFT receives it, and the checks that
every listed name (or a regex) matches a module of the model, on the loaded model or before any weight loads."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lorafit.core.errors import RecipeError
from lorafit.core.methods import PROMPT_LEARNING, TARGET_SETS, is_module_name, unmatched_targets

if TYPE_CHECKING:
    from lorafit.recipe import Recipe


def linear_names(model) -> list[str]:
    """Short names of the linear layers an adapter can attach to (the output layer excluded, as PEFT does)."""
    import torch

    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module is not output
    }
    return sorted(names)


def target_modules(recipe: Recipe, model=None) -> str | list[str]:
    """What PEFT receives: `all-linear`, a list of names, or a regex string (PEFT full-matches it).

    With a model, `all-linear` becomes the explicit list of its linear layers: PEFT's layer ranges and CorDA only
    understand lists.
    """
    a = recipe.adapter
    targets = a.target_modules
    if isinstance(targets, list):
        return list(targets)
    if targets == "all-linear":
        return (
            linear_names(model) if model is not None and (a.layers is not None or a.method == "corda") else "all-linear"
        )
    if targets in TARGET_SETS:
        return list(TARGET_SETS[targets])
    if is_module_name(targets):
        return [targets]
    return targets


def check_layers(model, recipe: Recipe) -> None:
    layers = recipe.adapter.layers
    count = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    if layers is not None and count is not None and layers[1] >= count:
        raise RecipeError(
            f"adapter.layers {list(layers)} goes past this model's last layer ({count} layers: 0..{count - 1})",
            f"use a range within 0..{count - 1}, e.g. [{max(0, count - 4)}, {count - 1}] for the last four",
        )


def no_match(model, recipe: Recipe) -> RecipeError:
    names = linear_names(model)
    layers = recipe.adapter.layers
    where = f" in layers {layers[0]}..{layers[1]}" if layers is not None else ""
    return RecipeError(
        f"adapter.target_modules {recipe.adapter.target_modules!r} matches no module of this model{where}",
        f"its linear layers are named: {', '.join(names)}; a regex must match the full name, e.g. '.*\\.(q|v)_proj'",
    )


def check_targets(model, recipe: Recipe) -> None:
    """Every listed target name matches a module of the model, and a regex matches one: RecipeError naming the
    ones that do not and the closest real names."""
    import difflib
    import re

    if recipe.adapter.method in PROMPT_LEARNING:
        return
    targets = target_modules(recipe)
    if targets == "all-linear":
        return
    names = [name for name, _ in model.named_modules() if name]
    if isinstance(targets, str):
        if not any(re.fullmatch(targets, name) for name in names):
            raise no_match(model, recipe)
        return
    missing = unmatched_targets(targets, names)
    if not missing:
        return
    if len(missing) == len(targets):
        raise no_match(model, recipe)
    linear = linear_names(model)
    close = {m: difflib.get_close_matches(m, linear, n=2, cutoff=0.3) for m in missing}
    said = "; ".join(f"{m!r}: closest {' or '.join(c)}" if c else f"{m!r}" for m, c in close.items())
    model_type = getattr(getattr(model, "config", None), "model_type", "?")
    raise RecipeError(
        f"adapter.target_modules: {len(missing)} of {len(targets)} listed names match no module of this "
        f"{model_type} model ({said})",
        f"use its linear layers' names: {', '.join(linear)} (or target_modules: all-linear)",
    )


def check_targets_on_config(recipe: Recipe, config: dict) -> None:
    """check_targets before any weight loads: the model built from its config.json on the meta device (no memory,
    no weights). Models whose code is not in transformers are checked when they load instead."""
    if recipe.adapter.method in PROMPT_LEARNING or target_modules(recipe) == "all-linear":
        return
    if recipe.model.trust_remote_code or "model_type" not in config:
        return
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        values = {k: v for k, v in config.items() if k != "model_type"}
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(AutoConfig.for_model(config["model_type"], **values))
    except (ValueError, KeyError, TypeError, ImportError):
        return  # not a causal LM transformers builds from a config: loading it says what is wrong
    check_targets(model, recipe)
