"""What preparing data hands on: rendered examples, the statistics of the run's data, the tokenized datasets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lorafit.data.sources import Row


@dataclass
class Example:
    segments: list[tuple[str, bool]]  # (text, carries loss)
    where: str  # file:line
    source: int = 0  # index into data.train / data.eval
    bos: bool = False  # starts with the BOS id (text / prompt_completion rows of a tokenizer that adds one)


@dataclass
class DataStats:
    files: dict[str, str] = field(default_factory=dict)  # path -> sha256 (hub: name -> fingerprint)
    sources: list[dict] = field(default_factory=list)  # per data.train/data.eval entry: rows, weight, counts
    rows: int = 0
    bad_rows: int = 0
    format: str = ""  # one format, or "mixed"
    train_rows: int = 0  # after weights
    eval_rows: int = 0
    truncated: int = 0
    tokens_lost: int = 0
    dropped_long: int = 0
    fully_masked: int = 0
    lengths: list[int] = field(default_factory=list)  # train example lengths before truncation
    tokens: int = 0  # train tokens after truncation
    trained_tokens: int = 0
    most_trained: int = 0  # the largest trained-token count of one train example
    ignored_fields: dict[str, int] = field(default_factory=dict)  # record keys no format uses -> rows
    warnings: list[str] = field(default_factory=list)  # for the CLI to show (e.g. no chat template)
    preference: dict[str, Any] = field(default_factory=dict)  # preference data: pairs, length bias, KTO labels
    cached: bool = False
    seconds: float = 0.0

    def plan_inputs(self, max_length: int, packing: bool = False) -> dict[str, Any]:
        """What the memory plan needs from the data: the longest example (it bounds the padded batch) and
        the share of its positions the trained-positions LM head may score. The plan's batch is micro-batch
        x longest positions, so most_trained / longest bounds any batch's trained positions from above.
        Packed rows are filled up to max_length, with any mix of examples: the whole row may be trained."""
        if packing:
            return {"seq_len": max_length, "trained_fraction": 1.0}
        longest = max(self.lengths, default=None)
        if longest and self.most_trained:
            fraction = min(1.0, self.most_trained / min(longest, max_length))  # examples are cut to max_length
        else:  # a tokenization cache written before most_trained was counted
            fraction = self.trained_tokens / self.tokens if self.tokens else 1.0
        return {"seq_len": longest, "trained_fraction": fraction}

    def summary(self) -> dict[str, Any]:
        lengths = sorted(self.lengths)
        pct = (lambda q: lengths[min(len(lengths) - 1, int(q * len(lengths)))]) if lengths else (lambda q: 0)
        return {
            "files": self.files,
            "sources": self.sources,
            "format": self.format,
            "rows": self.rows,
            "bad_rows_skipped": self.bad_rows,
            "train_rows": self.train_rows,
            "eval_rows": self.eval_rows,
            "truncated": self.truncated,
            "tokens_lost_to_truncation": self.tokens_lost,
            "dropped_long": self.dropped_long,
            "fully_masked": self.fully_masked,
            "tokens": {"min": pct(0), "median": pct(0.5), "p95": pct(0.95), "max": pct(1), "total": self.tokens},
            "trained_tokens": self.trained_tokens,
            "most_trained_tokens": self.most_trained,
            "ignored_fields": self.ignored_fields,
            "warnings": self.warnings,
            **({"preference": self.preference} if self.preference else {}),
            "cached": self.cached,
            "seconds": round(self.seconds, 2),
        }


@dataclass
class Prepared:
    train: Any  # datasets.Dataset with input_ids, labels
    eval: Any | None
    stats: DataStats
    eval_rows: list[Row]  # held-out rows (canonical records), for generation metrics
    train_where: list[str] = field(default_factory=list)  # file:line of each train example
