"""`lorafit data`: see exactly what will be trained on before spending compute. Tokenizer only.

Shows rendered examples with the trained tokens highlighted, a token-length histogram, counts per
source, and what truncation and masking did, so a wrong template, a wrong mask or a too-short
max_length is caught here rather than after a training run.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lorafit.recipe import Recipe

TRAINED = "bold black on green3"
UNTRAINED = "grey50"
BAR_WIDTH = 40


def highlighted(ids: list[int], labels: list[int], tokenizer):
    """The decoded example as rich Text: spans whose label carries loss get the TRAINED style."""
    from rich.text import Text

    out = Text()
    start = 0
    for end in range(1, len(ids) + 1):
        if end == len(ids) or (labels[end] != -100) != (labels[start] != -100):
            piece = tokenizer.decode(ids[start:end], skip_special_tokens=False)
            # Newlines are shown, so that whether one is trained is visible too.
            out.append(piece.replace("\n", "↵\n"), style=TRAINED if labels[start] != -100 else UNTRAINED)
            start = end
    return out


def histogram(lengths: list[int], limit: int, bins: int = 8) -> list[str]:
    """Text bars of token lengths; examples beyond `limit` (truncated or dropped) get their own bar."""
    if not lengths:
        return []
    fitting = [n for n in lengths if n <= limit]
    over = len(lengths) - len(fitting)
    lines = []
    if fitting:
        lo, hi = min(fitting), max(fitting)
        width = max(1, math.ceil((hi - lo + 1) / bins))
        counts = [0] * bins
        for n in fitting:
            counts[min(bins - 1, (n - lo) // width)] += 1
        rows = []
        for i, count in enumerate(counts):
            first, last = lo + i * width, min(hi, lo + (i + 1) * width - 1)
            if first <= hi:
                rows.append((f"{first:>6}-{last:<6}" if last > first else f"{first:>6}{'':7}", count))
    else:
        rows = []
    if over:
        rows.append((f"> {limit:<11}", over))
    top = max(c for _, c in rows)
    for label, count in rows:
        bar = "█" * max(1 if count else 0, round(BAR_WIDTH * count / top))
        lines.append(f"{label} │{bar} {count}")
    if over:
        lines[-1] += "  (longer than training.max_length)"
    return lines


def report(recipe: Recipe, tokenizer, console, n: int = 3) -> None:
    """Print N rendered examples (trained tokens highlighted), lengths, sources, truncation and masking."""
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    from lorafit.data import preference

    prepared = preference.prepare_for(recipe, tokenizer)
    s = prepared.stats
    console.print(
        f"[bold]data[/]: {s.train_rows} train / {s.eval_rows} held-out examples, format {s.format}"
        + (" (from cache)" if s.cached else ""),
        highlight=False,
    )
    for warning in s.warnings:
        console.print(f"[yellow]warning[/] {warning}", highlight=False)

    table = Table(title="sources", title_justify="left")
    for column in ("source", "format", "rows", "held out", "weight", "train examples"):
        table.add_column(column, justify="left" if column in ("source", "format") else "right")
    for src in s.sources:
        table.add_row(
            src["source"],
            src["format"],
            str(src["rows"]),
            str(src.get("held_out", 0)),
            "eval" if src.get("eval") else f"{src['weight']:g}",
            "-" if src.get("eval") else str(src["train_examples"]),
        )
    console.print(table)

    if s.preference:
        _preference_lines(s.preference, recipe, console)
    shown = min(n, len(prepared.train)) if "input_ids" in prepared.train.column_names else 0  # TRL tokenizes pairs
    for i in range(shown):
        row = prepared.train[i]
        ids, labels = row["input_ids"], row["labels"]
        trained = sum(label != -100 for label in labels[1:])
        where = prepared.train_where[i] if i < len(prepared.train_where) else f"example {i + 1}"
        console.print(
            Panel(
                highlighted(ids, labels, tokenizer),
                title=f"example {i + 1}: {where}",
                subtitle=f"{len(ids)} tokens, {trained} trained",
                title_align="left",
            )
        )
    legend = Text("legend: ")
    legend.append("trained", style=TRAINED)
    legend.append("  ")
    legend.append("not trained (masked)", style=UNTRAINED)
    console.print(legend)

    limit = recipe.training.max_length
    console.print(f"[bold]token lengths[/] (train, before truncation; max_length {limit})", highlight=False)
    for line in histogram(s.lengths, limit):
        console.print(line, highlight=False, markup=False)

    total = max(s.tokens, 1)
    drop_or_cut = (
        f"{s.dropped_long} dropped (data.drop_long)"
        if recipe.data.drop_long
        else (f"{s.truncated} truncated, {s.tokens_lost} tokens lost")
    )
    console.print(
        f"[bold]truncation[/]: {drop_or_cut}\n"
        f"[bold]masking[/]: {s.trained_tokens} of {s.tokens} tokens trained ({100 * s.trained_tokens / total:.1f}%, "
        f"train_on {recipe.data.train_on}), {s.fully_masked} examples fully masked and dropped",
        highlight=False,
    )
    if s.bad_rows:
        console.print(f"[bold]skipped[/]: {s.bad_rows} bad rows (data.on_bad_rows: skip)", highlight=False)
    if s.ignored_fields:
        shown = ", ".join(f"{k} ({v} rows)" for k, v in sorted(s.ignored_fields.items()))
        console.print(
            f"[bold]ignored fields[/]: {shown}; map them with data.fields if they hold training text", highlight=False
        )


def _preference_lines(p: dict, recipe: Recipe, console) -> None:
    """Preference data: pairs, which side is longer, sides cut at max_length, KTO's label balance."""
    if p.get("pairs"):
        console.print(
            f"[bold]pairs[/]: {p['pairs']}; chosen longer in {p['chosen_longer_share']:.0%}; "
            f"{p.get('chosen_truncated', 0)} chosen / {p.get('rejected_truncated', 0)} rejected sides cut at "
            f"max_length {recipe.training.max_length}",
            highlight=False,
        )
    if "desirable" in p or "undesirable" in p:
        console.print(
            f"[bold]KTO labels[/]: {p.get('desirable', 0)} desirable / {p.get('undesirable', 0)} undesirable",
            highlight=False,
        )
