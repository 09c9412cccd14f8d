"""Training data: read every source, validate line by line, render, mask, split, weight, tokenize.

One direction: sources (files, directories, hub) -> rows with file:line -> canonical records
(data.fields) -> (text, trained) segments from the chat template -> input_ids + labels.
Formats live in formats.py, file and hub reading in sources.py, reading, validating and splitting in scan.py,
tokens and masks in tokens.py. The tokenized result is cached by content (cache.py), so a re-run skips all of this.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from lorafit.core.errors import DataError
from lorafit.data import cache, formats
from lorafit.data.results import DataStats, Example, Prepared
from lorafit.data.scan import check_readable, resolve, scan, scan_resolved
from lorafit.data.tokens import encode, tokenize, tokenize_many

if TYPE_CHECKING:
    from lorafit.recipe import Recipe

__all__ = ["DataStats", "Example", "Prepared", "check_readable", "prepare", "scan", "tokenize", "tokenize_many"]

CACHE_MIN_SECONDS = 2.0  # only data that took this long to prepare is worth a cache entry


def prepare(recipe: Recipe, tokenizer, answer=None) -> Prepared:
    """Tokenized train/eval datasets ready for SFTTrainer (input_ids + labels, already truncated).

    Also installs the chat template used for the masks on `tokenizer`, so the adapter is saved
    with the template it was trained with. `answer` generates the base model's answers for data.preserve
    (lorafit.preserve.base_answerer); without it only answers cached earlier are used.
    """
    from datasets import Dataset

    started = time.perf_counter()
    train_src, eval_src, template, warning = resolve(recipe, tokenizer)
    key = cache.key_for(recipe, tokenizer, template, train_src + eval_src) if recipe.data.cache else None
    hit = cache.load(key)
    if hit is not None:
        hit.stats.seconds = time.perf_counter() - started
        _install_template(tokenizer, recipe, template, hit.stats)
        return hit

    train, held_out, eval_rows, stats = scan_resolved(recipe, tokenizer, train_src, eval_src, template, warning, answer)
    train_cols = encode(train, tokenizer, recipe, stats, count=True)
    if not train_cols["input_ids"]:
        raise DataError(
            f"all {len(train)} training examples have no trainable token (every label is masked)",
            "check data.train_on and the chat template; assistant turns must be present and within training.max_length",
        )
    eval_cols = encode(held_out, tokenizer, recipe, stats, count=False)
    train_where = train_cols.pop("where")
    eval_cols.pop("where")
    prepared = Prepared(
        Dataset.from_dict(train_cols),
        Dataset.from_dict(eval_cols) if eval_cols["input_ids"] else None,
        stats,
        eval_rows,
        train_where,
    )
    stats.seconds = time.perf_counter() - started
    _install_template(tokenizer, recipe, template, stats)
    # Without an answerer, data.preserve may lack answers not generated yet: such a result is not cached.
    if key is not None and stats.seconds >= CACHE_MIN_SECONDS and not (recipe.data.preserve and answer is None):
        cache.store(key, prepared)
    return prepared


def _install_template(tokenizer, recipe: Recipe, template: str, stats: DataStats) -> None:
    """The template that made the masks becomes the tokenizer's (saved with the adapter, used to generate)."""
    if recipe.data.chat_template or stats.format in formats.CHAT_FORMATS or stats.format == "mixed":
        tokenizer.chat_template = template
