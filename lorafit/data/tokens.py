"""Rendered examples as input_ids and labels (-100 where no loss), truncated or dropped at training.max_length."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lorafit.data.results import DataStats, Example

if TYPE_CHECKING:
    from lorafit.recipe import Recipe


def tokenize_many(examples: list[list[tuple[str, bool]]], tokenizer) -> list[tuple[list[int], list[int]]]:
    """input_ids and labels (-100 where no loss) for many rendered examples, in one batched tokenizer call.

    Each example is tokenized whole, exactly as inference will see the text, and a token carries loss when
    any of its characters lies in a trained segment. Tokenizing segment by segment would differ wherever a
    tokenizer treats the start of a text specially: SentencePiece's prefix space would put a '▁' that never
    occurs at inference in front of every segment (Llama 2, Mistral v0.1). Templates write their own special
    tokens, so the tokenizer adds none."""
    if not getattr(tokenizer, "is_fast", False):  # no character offsets: segment by segment
        return _tokenize_segments(examples, tokenizer)
    texts = ["".join(text for text, _ in segments) for segments in examples]
    if not texts:
        return []
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for segments, ids, offsets in zip(examples, encoded["input_ids"], encoded["offset_mapping"]):
        spans, at = [], 0
        for text, trained in segments:
            if trained:
                spans.append((at, at + len(text)))
            at += len(text)
        labels = [
            token if any(start < b and a < stop for a, b in spans) else -100  # overlaps a trained span
            for token, (start, stop) in zip(ids, offsets)
        ]
        out.append((list(ids), labels))
    return out


def _tokenize_segments(examples: list[list[tuple[str, bool]]], tokenizer) -> list[tuple[list[int], list[int]]]:
    """The fallback for tokenizers without offsets: each segment on its own, so no token straddles a boundary."""
    texts = [text for segments in examples for text, _ in segments]
    pieces = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    out, k = [], 0
    for segments in examples:
        ids: list[int] = []
        labels: list[int] = []
        for _, trained in segments:
            piece = pieces[k]
            k += 1
            ids.extend(piece)
            labels.extend(piece if trained else [-100] * len(piece))
        out.append((ids, labels))
    return out


def tokenize(segments: list[tuple[str, bool]], tokenizer) -> tuple[list[int], list[int]]:
    """input_ids and labels (-100 where no loss) for one rendered example."""
    return tokenize_many([segments], tokenizer)[0]


def encode(examples: list[Example], tokenizer, recipe: Recipe, stats: DataStats, count: bool) -> dict[str, list]:
    """Columns input_ids, labels and where for a dataset; `count` adds the train split's lengths to `stats`."""
    columns: dict[str, list] = {"input_ids": [], "labels": [], "where": []}
    limit = recipe.training.max_length
    # Repeated examples (weights > 1) are the same objects: tokenize each once.
    unique = list({id(ex): ex for ex in examples}.values())
    encoded = dict(zip(map(id, unique), tokenize_many([ex.segments for ex in unique], tokenizer)))
    for ex in examples:
        ids, labels = encoded[id(ex)]
        if ex.bos:
            ids, labels = [tokenizer.bos_token_id, *ids], [-100, *labels]
        if count:
            stats.lengths.append(len(ids))
        if len(ids) > limit:
            if recipe.data.drop_long:
                stats.dropped_long += count
                continue
            if count:
                stats.truncated += 1
                stats.tokens_lost += len(ids) - limit
            ids, labels = ids[:limit], labels[:limit]
        # Labels are shifted inside the model, so the first position never counts.
        if all(label == -100 for label in labels[1:]):
            stats.fully_masked += count
            continue
        if count:
            stats.tokens += len(ids)
            trained = sum(label != -100 for label in labels[1:])
            stats.trained_tokens += trained
            stats.most_trained = max(stats.most_trained, trained)
        columns["input_ids"].append(ids)
        columns["labels"].append(labels)
        columns["where"].append(ex.where)
    return columns
