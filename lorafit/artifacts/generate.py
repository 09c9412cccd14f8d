"""`lorafit generate`: answer one message with a run's adapter, its merged model or its base."""

from __future__ import annotations

from pathlib import Path

from lorafit.models.generation import chat_prompt, generate


def run(run_dir: Path, prompt: str, *, max_new_tokens: int, base: bool, merged: bool) -> str:
    """Answer one user message with the adapter, the merged model or the base."""
    from lorafit import models, runs
    from lorafit.core.errors import MissingError, RecipeError

    if base and merged:
        raise RecipeError("--base and --merged name two different models", "ask one of them at a time")
    recipe, _ = runs.load_run(run_dir)
    if merged:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(run_dir) / "merged"
        if not (path / "config.json").is_file():
            raise MissingError(f"{path} does not exist", f"run: lorafit merge {run_dir}")
        model, tokenizer = AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    else:
        model, tokenizer = models.load_with_adapter(recipe, runs.adapter_path(run_dir))
    text = chat_prompt(tokenizer, [{"role": "user", "content": prompt}])
    if base:
        with model.disable_adapter():
            return generate(model, tokenizer, [text], max_new_tokens)[0]
    return generate(model, tokenizer, [text], max_new_tokens)[0]
