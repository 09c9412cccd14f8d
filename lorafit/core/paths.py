"""Where lorafit keeps things outside a run directory: its cache, the run registry, the shipped configs and
resources. Stdlib only, and read at call time, so an environment variable set by a test or a job applies."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent  # lorafit/
RESOURCES = PACKAGE / "resources"  # package data: general prompt sets of `lorafit eval` and data.preserve
GENERAL_EVAL = RESOURCES / "general_eval.jsonl"
GENERAL_PROMPTS = RESOURCES / "general_prompts.jsonl"


def cache_root() -> Path:
    """$LORAFIT_CACHE, else ${XDG_CACHE_HOME:-~/.cache}/lorafit: converted models, data, preserve answers, kernels."""
    base = os.environ.get("LORAFIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "lorafit"
    )
    return Path(base)


def registry_path() -> Path:
    """$LORAFIT_REGISTRY, else the user's data dir: ${XDG_DATA_HOME:-~/.local/share}/lorafit/runs.sqlite."""
    if os.environ.get("LORAFIT_REGISTRY"):
        return Path(os.environ["LORAFIT_REGISTRY"]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base).expanduser() / "lorafit" / "runs.sqlite"


def configs_dir() -> Path | None:
    """configs/ (accelerate, deepspeed, slurm) of the lorafit checkout beside the package, else ./configs;
    None when neither is there."""
    for candidate in (PACKAGE.parent / "configs", Path.cwd() / "configs"):
        if (candidate / "accelerate").is_dir():
            return candidate
    return None
