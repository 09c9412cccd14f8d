"""recipe.adapter -> a PEFT model. All adapter math is PEFT's; this module only chooses its knobs.

The families, and what each means for the rest of lorafit:
- LoRA and its variants: lora, dora (magnitude + direction), rslora (scale alpha/sqrt(r)), loraplus (B learns
  faster than A: only the optimizer differs). Initialisations: pissa, olora and corda move the base weight's principal
  part into A and B and leave a residual base; eva and loftq only choose where A and B start. All but loftq merge
  into the original weights.
- ia3: learned scaling vectors on keys, values and the feed-forward input. Merges.
- prompt_tuning, prefix_tuning: learned virtual tokens; the base is untouched and nothing merges.

Residual initialisations change the base weights in memory, so an adapter saved as is would only be right on top of
that residual. `save` converts it (PEFT's path_initial_model_for_weight_conversion) into a plain LoRA of rank 2r
that loads onto the untouched base model, which is what every other command expects.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorafit.core.errors import MissingError, RecipeError
from lorafit.core.methods import (
    DATA_INIT,
    LORA_FAMILY,
    RESIDUAL_INIT,
)
from lorafit.models.targets import check_layers, check_targets, linear_names, no_match, target_modules

if TYPE_CHECKING:
    from lorafit.recipe import Recipe

INITIAL_ADAPTER_ATTR = "lorafit_initial_adapter"  # the residual methods' A0/B0, kept for the conversion in `save`


def _layers(recipe: Recipe) -> list[int] | None:
    layers = recipe.adapter.layers
    return list(range(layers[0], layers[1] + 1)) if layers is not None else None


def _lora_init(recipe: Recipe) -> bool | str:
    a = recipe.adapter
    if a.method == "pissa":
        return "pissa" if a.pissa_niter is None else f"pissa_niter_{a.pissa_niter}"
    if a.method in {"olora", "eva", "corda"}:
        return a.method
    return True  # lora, dora, rslora, loraplus; loftq replaces A and B after wrapping


def _ia3_targets(recipe: Recipe, model) -> tuple[Any, Any]:
    """IA3 target and feed-forward modules; `all-linear` means PEFT's defaults for the architecture."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FEEDFORWARD

    targets = target_modules(recipe)
    if targets == "all-linear":
        return None, None  # PEFT picks keys, values and the feed-forward input per model type
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    known = FEEDFORWARD.get(model_type) or sorted({m for mods in FEEDFORWARD.values() for m in mods})
    if isinstance(targets, str):  # a regex: the feed-forward ones are those PEFT knows as feed-forward
        return targets, list(known)
    return targets, [t for t in targets if t in known or t.rsplit(".", 1)[-1] in known]


def _ties_embeddings(model) -> bool:
    config = getattr(model, "config", None)
    return bool(getattr(config, "tie_word_embeddings", False))


def peft_config(recipe: Recipe, model=None, tokenizer_path: str | None = None):
    """The PEFT config for the recipe (the model, when given, resolves `all-linear` and IA3's defaults)."""
    from peft import IA3Config, LoraConfig, PrefixTuningConfig, PromptTuningConfig, TaskType

    a = recipe.adapter
    method = a.method
    if method in LORA_FAMILY:
        extra: dict[str, Any] = {}
        if method == "eva":
            from peft import EvaConfig

            extra["eva_config"] = EvaConfig(rho=a.eva_rho)
        if method == "corda":
            from peft.tuners.lora.config import CordaConfig

            extra["corda_config"] = CordaConfig(corda_method=a.corda_mode)
        return LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=a.r,
            lora_alpha=a.alpha,
            lora_dropout=a.dropout,
            target_modules=target_modules(recipe, model),
            layers_to_transform=_layers(recipe),
            use_dora=method == "dora" or a.use_dora,
            use_rslora=method == "rslora" or a.use_rslora,
            init_lora_weights=_lora_init(recipe),
            modules_to_save=list(a.modules_to_save) or None,  # a copy: PEFT edits the list it gets
            # a trained copy of a tied lm_head / embed_tokens stays tied to its twin
            ensure_weight_tying=bool(a.modules_to_save) and _ties_embeddings(model),
            **extra,
        )
    if method == "ia3":
        targets, feedforward = _ia3_targets(recipe, model)
        return IA3Config(
            task_type=TaskType.CAUSAL_LM,
            target_modules=targets,
            feedforward_modules=feedforward,
            modules_to_save=list(a.modules_to_save) or None,  # a copy: PEFT edits the list it gets
        )
    if method == "prompt_tuning":
        kwargs = {}
        if a.prompt_init_text:
            kwargs = dict(
                prompt_tuning_init="TEXT",
                prompt_tuning_init_text=a.prompt_init_text,
                tokenizer_name_or_path=tokenizer_path,
            )
        return PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=a.num_virtual_tokens, **kwargs)
    if method == "prefix_tuning":
        return PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=a.num_virtual_tokens)
    raise RecipeError(f"adapter.method {method!r} is not supported")


# ---------------------------------------------------------------- building the PEFT model


def calibration_batches(examples, count: int, batch_size: int, pad_id: int = 0) -> list[dict]:
    """The first `count` tokenized training examples as padded batches (input_ids, attention_mask, labels)."""
    import torch

    rows = [examples[i] for i in range(min(count, len(examples)))]
    batches = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        length = max(len(r["input_ids"]) for r in chunk)

        def pad(seq, value):
            return list(seq) + [value] * (length - len(seq))

        batches.append(
            {
                "input_ids": torch.tensor([pad(r["input_ids"], pad_id) for r in chunk]),
                "attention_mask": torch.tensor([pad([1] * len(r["input_ids"]), 0) for r in chunk]),
                "labels": torch.tensor([pad(r.get("labels", r["input_ids"]), -100) for r in chunk]),
            }
        )
    return batches


def _check_loftq(model) -> None:
    import torch

    if not torch.cuda.is_available():
        raise RecipeError(
            "adapter.method loftq: PEFT 0.21 computes the LoftQ initialisation on CUDA (or XPU) only, and this machine has neither",
            "use method lora or pissa here, or run the recipe on a CUDA machine",
        )
    if not getattr(model, "is_loaded_in_4bit", False):
        raise RecipeError(
            "adapter.method loftq starts LoRA from a 4-bit base's quantisation error",
            "set quantization.load_in_4bit: true",
        )


def wrap(model, recipe: Recipe, model_path: str | None = None, examples=None):
    """The PEFT model for the recipe, initialised as its method says.

    `model_path` is the base model's directory (or hub id): prompt tuning's init text reads its tokenizer, LoftQ its
    full-precision weights. `examples` (tokenized training rows with input_ids/labels) feed EVA's and CorDA's
    data-driven initialisations; other methods ignore them.
    """
    from peft import get_peft_model

    a = recipe.adapter
    check_layers(model, recipe)
    check_targets(model, recipe)
    if a.method == "loftq":
        _check_loftq(model)
    batches = None
    if a.method in DATA_INIT:
        if examples is None or len(examples) == 0:
            raise RecipeError(
                f"adapter.method {a.method} initialises the adapter from training examples, and none were given",
                "lorafit train passes them; from Python call adapters.wrap(model, recipe, examples=tokenized_rows)",
            )
        # CorDA's covariance hook takes one sequence at a time; EVA wants several for a stable SVD.
        pad_id = getattr(model.config, "pad_token_id", None) or 0
        batches = calibration_batches(examples, a.init_examples, 1 if a.method == "corda" else 4, pad_id)
    config = peft_config(recipe, model, model_path)
    try:
        if a.method == "corda":
            try:
                from peft.tuners.lora.corda import preprocess_corda
            except ImportError as exc:  # PEFT 0.21's corda module imports `attrs`, which PEFT does not require
                raise MissingError(f"CorDA needs the package '{exc.name}'", "pip install attrs") from None
            preprocess_corda(
                model, config, run_model=lambda: [model(input_ids=b["input_ids"].to(model.device)) for b in batches]
            )
        with warnings.catch_warnings():
            # "PiSSA/OLoRA/CorDA changes the base weights ... consider converting": `save` does exactly that.
            warnings.filterwarnings("ignore", message=".*changes the base weights.*")
            peft_model = get_peft_model(model, config, low_cpu_mem_usage=a.method == "eva")
    except ValueError as exc:
        from peft.utils.error import NoMatchingPeftModuleError

        text = str(exc)
        if (
            isinstance(exc, NoMatchingPeftModuleError)
            or "not found in the base model" in text
            or "Target modules" in text
        ):
            raise no_match(model, recipe) from None
        if "specify `target_modules`" in text:
            raise RecipeError(
                f"PEFT has no default {a.method} targets for model type {getattr(model.config, 'model_type', '?')!r}",
                f"list them in adapter.target_modules; its linear layers are: {', '.join(linear_names(model))}",
            ) from None
        raise
    if a.method == "eva":
        from peft import initialize_lora_eva_weights

        initialize_lora_eva_weights(peft_model, batches, show_progress_bar=False)
    if a.method == "loftq":
        from peft.utils.loftq_utils import replace_lora_weights_loftq

        local = model_path if model_path and Path(model_path).is_dir() else None
        replace_lora_weights_loftq(peft_model, model_path=local)
    if a.method in RESIDUAL_INIT:
        from peft import get_peft_model_state_dict

        initial = {k: v.detach().clone() for k, v in get_peft_model_state_dict(peft_model).items()}
        setattr(peft_model, INITIAL_ADAPTER_ATTR, initial)
    return peft_model


def continue_from(model, recipe: Recipe):
    """The base with adapter.init_from's adapter loaded trainable (PEFT's name for it: default): training goes on
    from the parent run's weights. Its shape is the parent's; a recipe that says another r or alpha is refused
    rather than silently ignored."""
    import json

    from peft import PeftModel

    from lorafit.runs import lineage

    path = lineage.adapter_dir(Path(recipe.adapter.init_from))
    try:
        config = json.loads((path / "adapter_config.json").read_text())
    except (OSError, ValueError) as exc:
        raise MissingError(f"adapter.init_from: cannot read {path / 'adapter_config.json'} ({exc})") from None
    a = recipe.adapter
    theirs = {"r": config.get("r"), "alpha": config.get("lora_alpha")}
    for knob, value in theirs.items():
        if value is not None and float(value) != float(getattr(a, knob)):
            raise RecipeError(
                f"adapter.{knob} is {getattr(a, knob):g} but the adapter of adapter.init_from has {knob} {value:g}: "
                "a continued adapter keeps its parent's shape",
                f"set adapter.{knob}: {value:g} (the parent's)",
            )
    return PeftModel.from_pretrained(model, str(path), is_trainable=True)


def save(model, directory: str | Path, state_dict: dict | None = None) -> None:
    """Save the adapter so that it loads onto the untouched base with plain PEFT (PeftModel.from_pretrained).

    For pissa/olora/corda the trained A, B and their starting values A0, B0 are combined into one LoRA of rank 2r
    whose update is A·B - A0·B0 (PEFT's own conversion); the in-memory model is left as it was. `state_dict`:
    the full state dict FSDP / DeepSpeed gathered (PEFT keeps the adapter's entries); PEFT converts only from
    the model itself, so training refuses those methods under sharding (train.trainer.check_sharded_save).
    """
    initial = getattr(model, INITIAL_ADAPTER_ATTR, None) if hasattr(model, "peft_config") else None
    if initial is None:
        # the trained adapter only: a preference run also holds TRL's frozen reference copy ("ref")
        only = {"selected_adapters": ["default"]} if len(getattr(model, "peft_config", {})) > 1 else {}
        model.save_pretrained(str(directory), safe_serialization=True, state_dict=state_dict, **only)
        return
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory(prefix="lorafit-init-") as tmp:
        init_dir = Path(tmp) / "initial"
        init_dir.mkdir()
        save_file({k: v.contiguous() for k, v in initial.items()}, str(init_dir / "adapter_model.safetensors"))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*(will be ignored when|changes the base weights).*")
            model.save_pretrained(
                str(directory), safe_serialization=True, path_initial_model_for_weight_conversion=str(init_dir)
            )


# ---------------------------------------------------------------- reporting


def matched_modules(model) -> dict[str, int]:
    """How many modules of each name carry an adapter, e.g. {'q_proj': 30, ...}."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    counts: dict[str, int] = {}
    for name, module in model.named_modules():
        if isinstance(module, BaseTunerLayer):
            short = name.rsplit(".", 1)[-1]
            counts[short] = counts.get(short, 0) + 1
    return counts


def summary(model) -> dict[str, Any]:
    """Matched modules and parameter counts (PEFT's count, which sizes 4-bit weights correctly)."""
    if hasattr(model, "get_nb_trainable_parameters"):
        trainable, total = model.get_nb_trainable_parameters()
    else:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
    return {
        "matched_modules": matched_modules(model),
        "trainable_params": int(trainable),
        "total_params": int(total),
        "trainable_share": trainable / total if total else 0.0,
    }


def report(model, recipe: Recipe) -> str:
    """One line for the console, e.g.
    `adapter: lora on 210 modules (q_proj x30, ...); trainable 4,884,480 of 139,399,488 params (3.50%)`."""
    a = recipe.adapter
    s = summary(model)
    matched = s["matched_modules"]
    if matched:
        where = f"{sum(matched.values())} modules ({', '.join(f'{k} x{v}' for k, v in sorted(matched.items()))})"
        if a.layers is not None:
            where += f" in layers {a.layers[0]}..{a.layers[1]}"
    else:
        where = f"{a.num_virtual_tokens} virtual tokens"
    if a.modules_to_save:
        where += f", plus full copies of {', '.join(a.modules_to_save)}"
    return (
        f"adapter: {a.method} on {where}; trainable {s['trainable_params']:,} of {s['total_params']:,} params "
        f"({100 * s['trainable_share']:.2f}%)"
    )


# ---------------------------------------------------------------- optimizer


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
        # PEFT sets each group's weight decay from this keyword; a plain weight_decay would be ignored.
        loraplus_weight_decay=recipe.training.weight_decay,
        **{k: v for k, v in optimizer_kwargs.items() if k not in ("lr", "weight_decay")},
    )
