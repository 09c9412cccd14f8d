"""`lorafit merge`: fold an adapter into its base (and prove it), or combine adapters into a new one."""

from __future__ import annotations

import time
from pathlib import Path

from lorafit import runs
from lorafit.core import methods
from lorafit.core.errors import LorafitError, RecipeError

MERGED = "merged"
# The merge and its check run in float32, which reorders the same sums: differences stay at rounding level.
TOLERANCE = 1e-3
DTYPES = ("auto", "float32", "bfloat16", "float16")  # what the merged model is saved in; auto: the base's own


class MergeCheckFailed(LorafitError):
    exit_code = 1


def _probe_inputs(recipe, tokenizer):
    """A few held-out prompts to compare logits on (fixed text if the run had none)."""
    import torch

    from lorafit import data

    try:
        _, held_out, _, _ = data.scan(recipe, tokenizer)
    except LorafitError:
        held_out = []
    texts = ["".join(t for t, _ in ex.segments) for ex in held_out[:4]] or ["Hello, how can I help you today?"]
    batch = tokenizer(
        texts, return_tensors="pt", padding=True, add_special_tokens=False, truncation=True, max_length=256
    )
    return {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}


def saved_dtype(recipe, dtype: str) -> str:
    """`auto`: the base checkpoint's dtype, so a bf16 7B model merges into 14 GB of bf16, not 28 GB of fp32."""
    if dtype != "auto":
        return dtype
    from transformers import PretrainedConfig

    from lorafit import models

    config, _ = PretrainedConfig.get_config_dict(
        models.resolve_model_path(recipe),
        revision=recipe.model.revision,
        trust_remote_code=recipe.model.trust_remote_code,
    )
    name = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    return name if name in DTYPES else "float32"


def merge(run_dir: Path, dtype: str = "auto", force: bool = False) -> dict:
    """Merge in float32 (never into 4-bit weights), verify the logits, then save atomically in `dtype`."""
    import torch

    from lorafit import models

    if dtype not in DTYPES:
        raise RecipeError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    recipe, record = runs.load_run(run_dir)
    runs.refuse_worse_than_base(run_dir, record, "merge", force)
    if recipe.adapter.method not in methods.MERGEABLE:
        why = (
            "adds virtual tokens, not weight deltas"
            if recipe.adapter.method in methods.PROMPT_LEARNING
            else "was fitted to the 4-bit base's quantization error, so merging into full-precision weights would be wrong"
        )
        raise RecipeError(
            f"{recipe.adapter.method} {why}, so it cannot be merged into the base",
            "serve it as a PEFT adapter: lorafit export RUN --format peft",
        )
    started = time.perf_counter()
    saved = saved_dtype(recipe, dtype)  # before minutes of merging: a config that cannot be read fails now
    model, tokenizer = models.load_with_adapter(recipe, runs.adapter_path(run_dir), full_precision=True)
    inputs = _probe_inputs(recipe, tokenizer)
    with torch.no_grad():
        with_adapter = model(**inputs).logits
        with model.disable_adapter():
            base = model(**inputs).logits
    merged = model.merge_and_unload()
    with torch.no_grad():
        merged_logits = merged(**inputs).logits
    mask = inputs["attention_mask"].bool()
    diff = (merged_logits - with_adapter)[mask].abs().max().item()
    moved = (merged_logits - base)[mask].abs().max().item()
    tol = TOLERANCE
    if diff > tol:
        raise MergeCheckFailed(
            f"merged logits differ from base+adapter by {diff:.2e} (tolerance {tol:.0e}); nothing was written"
        )
    if moved <= tol:
        raise MergeCheckFailed(
            f"the merged model equals the base (max logit change {moved:.2e}): the adapter did not merge"
        )
    merged = merged.to(getattr(torch, saved))  # verified in float32 above; this only rounds the weights
    target = Path(run_dir) / MERGED
    with runs.atomic_dir(target, owned=True) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    report = {
        "path": str(target),
        "max_logit_diff_vs_adapter": diff,
        "max_logit_change_vs_base": moved,
        "tolerance": tol,
        "dtype": saved,
        "seconds": round(time.perf_counter() - started, 2),
    }
    runs.update_run_json(run_dir, merge=report)
    return report


def combine(
    run_dirs: list[Path], weights: list[float], combination: str, out: Path, density: float = 0.5, force: bool = False
) -> Path:
    """A new adapter from adapters of the same base, by PEFT's add_weighted_adapter."""
    from lorafit import models

    if len(weights) != len(run_dirs):
        raise RecipeError(f"--weights has {len(weights)} values for {len(run_dirs)} runs", "give one weight per run")
    runs.check_replaceable(Path(out))
    loaded = [runs.load_run(d) for d in run_dirs]
    for d, (_, record) in zip(run_dirs, loaded):
        runs.refuse_worse_than_base(d, record, "merge", force)
    recipes = [recipe for recipe, _ in loaded]
    bases = {r.model.name for r in recipes}
    if len(bases) != 1:
        raise RecipeError(f"adapters from different base models cannot be combined: {sorted(bases)}")
    if any(r.adapter.method not in {"lora", "loraplus"} or r.adapter.use_rslora or r.adapter.use_dora for r in recipes):
        # add_weighted_adapter keeps use_rslora with lora_alpha = new rank (scale sqrt(r), not 1), and gives
        # DoRA a fresh magnitude vector: both would combine into something none of the runs learned.
        raise RecipeError(
            "only plain LoRA adapters (lora, loraplus; no rsLoRA or DoRA) can be combined",
            "merge each run into the base instead (lorafit merge RUN_DIR)",
        )
    from peft import PeftModel
    from transformers import AutoTokenizer

    first = runs.adapter_path(run_dirs[0])
    model = PeftModel.from_pretrained(models.load_model(recipes[0], full_precision=True), str(first), adapter_name="a0")
    tokenizer = AutoTokenizer.from_pretrained(str(first))
    names = ["a0"]
    for i, run_dir in enumerate(run_dirs[1:], 1):
        model.load_adapter(str(runs.adapter_path(run_dir)), adapter_name=f"a{i}")
        names.append(f"a{i}")
    kwargs = {"density": density} if combination.startswith(("ties", "dare")) else {}
    try:
        model.add_weighted_adapter(names, weights, "combined", combination_type=combination, **kwargs)
    except ValueError as exc:
        raise RecipeError(
            f"cannot combine with {combination}: {exc}", "use --combination cat or svd for adapters of different ranks"
        ) from None
    model.set_adapter("combined")
    for name in names:
        model.delete_adapter(name)
    with runs.atomic_dir(Path(out)) as tmp:
        model.save_pretrained(tmp, selected_adapters=["combined"], safe_serialization=True)
        nested = tmp / "combined"
        if nested.is_dir():  # PEFT writes non-default adapters into a sub-folder
            for f in nested.iterdir():
                f.replace(tmp / f.name)
            nested.rmdir()
        tokenizer.save_pretrained(tmp)
    return Path(out)
