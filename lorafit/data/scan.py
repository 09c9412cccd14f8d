"""Reading and validating all data: every source parsed with file:line problems, rendered through the chat
template into (text, trained) segments, split into train and held-out rows, and weighted per source."""

from __future__ import annotations

import random
from collections import Counter
from typing import TYPE_CHECKING

from lorafit.core.errors import DataError
from lorafit.data import formats, sources
from lorafit.data.results import DataStats, Example
from lorafit.data.sources import Row

if TYPE_CHECKING:
    from lorafit.recipe import Recipe

MAX_SHOWN = 20


def _read(resolved: list[sources.Source], recipe: Recipe, problems: list[str], stats: DataStats) -> None:
    """Parse every source into canonical rows: format detected per source, data.fields applied."""
    for src in resolved:
        for part in src.parts:
            stats.files[part.name] = part.digest
            src.rows.extend(sources.read_rows(part, problems))
        fields = src.spec.fields or recipe.data.fields
        fmt = recipe.data.format if recipe.data.format != "auto" else _detect(src.rows, fields)
        src.format, src.names = fmt, formats.names_for(fmt, fields)
        used = {src.names[k] for k in formats.FORMAT_KEYS[fmt] + formats.EXTRA_KEYS}
        for row in src.rows:
            for key in row.record:
                if key not in used:
                    stats.ignored_fields[key] = stats.ignored_fields.get(key, 0) + 1
            row.record = formats.canonical(row.record, fmt, src.names)
            row.format = fmt


def check_readable(recipe: Recipe) -> None:
    """Read every data file of the recipe without a tokenizer: file-level problems (not found, not UTF-8, not Parquet)
    and records that do not parse raise here, before a command spends time loading a model."""
    problems: list[str] = []
    for which in ("train", "eval"):
        for spec in recipe.data.sources(which):
            for part in sources.resolve(spec, which).parts:
                sources.read_rows(part, problems)
    raise_or_skip(problems, recipe, DataStats())


def _detect(rows: list[Row], fields) -> str:
    """The most common format among the first rows, so one malformed first record does not decide."""
    found: dict[str, int] = {}
    for row in rows[:20]:
        try:
            fmt = formats.detect_format(row.record, fields)
        except DataError:
            continue
        found[fmt] = found.get(fmt, 0) + 1
    if found:
        return max(found, key=found.get)
    if not rows:
        return "messages"  # nothing to detect; an empty source only counts zero rows
    try:
        return formats.detect_format(rows[0].record, fields)  # raises: say where
    except DataError as exc:
        raise DataError(f"{rows[0].source}:{rows[0].line}: {exc.message}", exc.hint) from None


def _examples(
    rows: list[Row], names_of: dict, template: str, recipe: Recipe, tokenizer, problems: list[str], index: int = 0
):
    """Render rows into Examples; invalid rows become file:line problems. Returns (examples, valid rows)."""
    out, valid = [], []
    for row in rows:
        try:
            names = names_of.get(row.source, formats.IDENTITY)  # only words the errors in the user's key names
            segments = formats.render(
                row.record, row.format, tokenizer, recipe.data.train_on, template, names, recipe.data.prompt_style
            )
        except (ValueError, DataError) as exc:
            problems.append(f"{row.source}:{row.line}: {exc}")
            continue
        bos = formats.plain_text(row.format, recipe.data.prompt_style) and formats.adds_bos(tokenizer)
        out.append(Example(segments, f"{row.source}:{row.line}", index, bos))
        valid.append(row)
    return out, valid


def weigh(
    train_src: list, per_source: list[list], eval_src: list, held: list, recipe: Recipe, stats: DataStats
) -> list:
    """Each training source's examples repeated or cut by its weight, and every source's line in the stats
    (rows, held out, weight, training examples). Shared by SFT and preference data."""
    held_per_part = Counter(r.source for r in held)
    train: list = []
    for i, (src, examples) in enumerate(zip(train_src, per_source)):
        weighted = sources.weighted(examples, src.spec.weight, f"{recipe.training.seed}:{i}")
        if examples and not weighted:
            stats.warnings.append(
                f"{src.name}: weight {src.spec.weight} leaves none of its {len(examples)} examples in training"
            )
        train += weighted
        stats.sources.append(
            {
                "source": src.name,
                "format": src.format,
                "rows": len(src.rows),
                "held_out": sum(held_per_part[p.name] for p in src.parts),
                "weight": src.spec.weight,
                "train_examples": len(weighted),
            }
        )
    for src in eval_src:
        stats.sources.append(
            {
                "source": src.name,
                "format": src.format,
                "rows": len(src.rows),
                "eval": True,
                "held_out": sum(held_per_part[p.name] for p in src.parts),
            }
        )
    return train


def raise_or_skip(problems: list[str], recipe: Recipe, stats: DataStats) -> None:
    if not problems:
        return
    if recipe.data.on_bad_rows == "skip":
        stats.bad_rows += len(problems)
        return
    shown = "\n".join(problems[:MAX_SHOWN])
    more = f"\n... and {len(problems) - MAX_SHOWN} more" if len(problems) > MAX_SHOWN else ""
    raise DataError(
        f"{len(problems)} bad record(s):\n{shown}{more}",
        "fix the lines above, or set data.on_bad_rows: skip to drop them",
    )


def split_held_out(resolved: list[sources.Source], recipe: Recipe) -> tuple[list[list[Row]], list[Row]]:
    """Per-source train rows and the held-out rows: one seeded split over all sources together."""
    per_source = [src.rows for src in resolved]
    if recipe.data.eval is not None or not recipe.data.eval_split:
        return per_source, []
    total = sum(len(rows) for rows in per_source)
    order = list(range(total))
    random.Random(recipe.training.seed).shuffle(order)
    held = set(order[: max(1, round(total * recipe.data.eval_split))])
    train, eval_rows, offset = [], [], 0
    for rows in per_source:
        train.append([r for i, r in enumerate(rows) if offset + i not in held])
        eval_rows.extend(r for i, r in enumerate(rows) if offset + i in held)
        offset += len(rows)
    return train, eval_rows


def resolve(recipe: Recipe, tokenizer) -> tuple[list[sources.Source], list[sources.Source], str, str | None]:
    """The train and eval sources (files found, digests taken) and the chat template with its warning: what both
    the cache key and the scan need, so they are found once."""
    template, warning = formats.resolve_chat_template(recipe.data.chat_template, tokenizer)
    train_src = [sources.resolve(s, "train") for s in recipe.data.sources("train")]
    eval_src = [sources.resolve(s, "eval") for s in recipe.data.sources("eval")]
    return train_src, eval_src, template, warning


def scan(recipe: Recipe, tokenizer, answer=None) -> tuple[list[Example], list[Example], list[Row], DataStats]:
    """Read and validate all data, render it, split and weight it. Raises DataError with file:line problems.

    Returns train examples (weighted), held-out examples, the held-out rows (canonical records,
    for generation metrics) and the statistics.
    """
    return scan_resolved(recipe, tokenizer, *resolve(recipe, tokenizer), answer)


def _preserved(recipe: Recipe, tokenizer, template: str, n_train: int, answer, stats: DataStats) -> list[Example]:
    """data.preserve: the base model's answers to general prompts, preserve_ratio per training example."""
    from lorafit.core.errors import MissingError
    from lorafit.data import preserve
    from lorafit.models import resolve_model_path

    path = preserve.prompts_file(recipe)
    if not path.is_file():
        raise MissingError(
            f"data.preserve: {path} does not exist", "use `general` (lorafit's prompts) or a chat JSONL path"
        )
    wanted = max(1, round(recipe.data.preserve_ratio * n_train))
    picked = preserve.pick(preserve.read_prompts(path), wanted, recipe.training.seed)
    records, unusable = preserve.records(recipe, resolve_model_path(recipe), picked, template, answer)
    name = f"preserve:{recipe.data.preserve}"
    rows = [Row(name, i + 1, rec, "messages") for i, rec in enumerate(records)]
    problems: list[str] = []
    examples, _ = _examples(rows, {}, template, recipe, tokenizer, problems)
    stats.sources.append(
        {
            "source": name,
            "format": "messages",
            "rows": len(picked),
            "held_out": 0,
            "weight": recipe.data.preserve_ratio,
            "train_examples": len(examples),
        }
    )
    if unusable and answer is None:
        stats.warnings.append(
            f"data.preserve: {unusable} of {wanted} base-model answers are not generated yet "
            "(lorafit train generates and caches them)"
        )
    elif unusable + len(problems):
        stats.warnings.append(
            f"data.preserve: {unusable + len(problems)} of {wanted} prompts left out (the base's "
            f"answer did not end within {preserve.NEW_TOKENS} tokens, or could not be rendered)"
        )
    return examples


def scan_resolved(recipe, tokenizer, train_src, eval_src, template, warning, answer=None):
    """`scan` over sources already resolved (`resolve`)."""
    stats = DataStats()
    problems: list[str] = []
    everything = train_src + eval_src
    _read(everything, recipe, problems, stats)
    stats.rows = sum(len(s.rows) for s in everything)
    if not stats.rows and not problems:
        raise DataError(f"no records in {', '.join(s.name for s in train_src)}")
    fmts = {s.format for s in everything if s.rows}
    stats.format = next(iter(fmts)) if len(fmts) == 1 else "mixed"
    if warning and fmts & set(formats.CHAT_FORMATS):
        stats.warnings.append(warning)

    names_of = {p.name: s.names for s in everything for p in s.parts}
    train_rows, held_rows = split_held_out(train_src, recipe)
    if eval_src:
        held_rows = [r for s in eval_src for r in s.rows]
    per_source = [
        _examples(rows, names_of, template, recipe, tokenizer, problems, i)[0] for i, rows in enumerate(train_rows)
    ]
    held_out, eval_rows = _examples(held_rows, names_of, template, recipe, tokenizer, problems)
    raise_or_skip(problems, recipe, stats)

    train = weigh(train_src, per_source, eval_src, eval_rows, recipe, stats)
    if not train:
        raise DataError("no usable training records left", "check data.train and data.on_bad_rows")
    if recipe.data.preserve:
        train += _preserved(recipe, tokenizer, template, len(train), answer, stats)
    stats.train_rows, stats.eval_rows = len(train), len(held_out)
    return train, held_out, eval_rows, stats
