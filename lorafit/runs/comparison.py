"""`lorafit runs compare`: what differs between registered runs, their recipes and data files, and their
metrics side by side (training figures first, then what `lorafit eval` found)."""

from __future__ import annotations

from typing import Any

import yaml

METRICS = (
    "train_loss",
    "eval_loss_before",
    "eval_loss",
    "steps",
    "tokens",
    "train_seconds",
    "tokens_per_s",
    "peak_memory_mb",
)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def _eval_metrics(row: dict) -> dict[str, Any]:
    """What `lorafit eval` found, flat: what the adapter learned first, then what it broke, then the harness."""
    ev = row.get("eval_metrics") or {}
    out: dict[str, Any] = {}
    for side in ("base", "adapter"):
        out.update({f"eval.{side}.{k}": v for k, v in (ev.get(side) or {}).items()})
    for name, c in (ev.get("categories") or {}).items():
        out.update({f"eval.category.{name}.base": c.get("base"), f"eval.category.{name}.adapter": c.get("adapter")})
    general = ev.get("general") or {}
    out.update(
        {
            f"general.{k}": general.get(k)
            for k in ("kl", "base_loss", "reference_loss", "adapter_loss", "same_answer")
            if k in general
        }
    )
    for task, metrics in (ev.get("harness") or {}).items():
        if isinstance(metrics, dict):
            out.update(
                {
                    f"harness.{task}.{m}.{k}": v.get(k)
                    for m, v in metrics.items()
                    if isinstance(v, dict)
                    for k in ("base", "adapter", "delta")
                }
            )
    return out


def compare(*rows: dict) -> dict:
    """{"recipe": [(key, values)] for every recipe setting that differs, "data": [...], "metrics": [(name, values,
    last - first)]}: one value per run, in the order given."""
    flat = [_flatten(yaml.safe_load(r.get("recipe") or "") or {}) for r in rows]
    keys = list(dict.fromkeys(k for f in flat for k in f if k != "output.dir"))  # every run has its own dir
    recipe = [(k, [f.get(k) for f in flat]) for k in keys if len({repr(f.get(k)) for f in flat}) > 1]
    evals = [_eval_metrics(r) for r in rows]
    names = list(METRICS) + list(dict.fromkeys(k for e in evals for k in e))
    values = [(m, [r.get(m) if m in METRICS else e.get(m) for r, e in zip(rows, evals)]) for m in names]
    number = lambda x: isinstance(x, (int, float)) and not isinstance(x, bool)  # noqa: E731
    delta = lambda v: round(v[-1] - v[0], 6) if number(v[0]) and number(v[-1]) else None  # noqa: E731
    files = [r.get("data_files") for r in rows]
    data = [("data", files)] if len({repr(f) for f in files}) > 1 else []
    return {
        "recipe": recipe,
        "metrics": [(m, v, delta(v)) for m, v in values if any(x is not None for x in v)],
        "data": data,
    }
