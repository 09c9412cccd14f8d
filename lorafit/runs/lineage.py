"""A run's parent: adapter.init_from continues a finished run's adapter (an SFT run under a DPO one), and
preference.reference may name a run whose adapter is the frozen reference. Each is recorded by its adapter's
sha256 (in the resolved recipe and run.json), and a run whose parent's adapter is missing or no longer has the
recorded sha256 refuses to start: the lineage is what was trained on, or the run does not happen."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorafit import runs
from lorafit.core.errors import MissingError, RecipeError

if TYPE_CHECKING:
    from lorafit.recipe import Recipe

WEIGHTS = "adapter_model.safetensors"


def adapter_dir(run_dir: Path) -> Path:
    return Path(run_dir) / runs.ADAPTER


def adapter_sha256(run_dir: Path, what: str) -> str:
    """The sha256 of a run's adapter weights; MissingError when the run has none."""
    weights = adapter_dir(run_dir) / WEIGHTS
    if not weights.is_file():
        raise MissingError(
            f"{what}: {run_dir} has no adapter ({weights} not found)",
            "train that run to the end first, or point at a finished run directory",
        )
    h = hashlib.sha256()
    with weights.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _named_run(reference: str | None) -> str | None:
    return reference if reference not in (None, "init", "base") else None


def resolve(recipe: Recipe) -> Recipe:
    """The recipe with its parent run as an absolute path and the parent adapter's sha256 filled in; refuses a
    parent whose adapter is missing, or whose sha256 differs from the one the recipe already records."""
    a = recipe.adapter
    update: dict[str, Any] = {}
    if a.init_from is not None:
        parent = os.path.abspath(os.path.expanduser(a.init_from))
        sha = adapter_sha256(Path(parent), "adapter.init_from")
        if a.init_sha256 is not None and a.init_sha256 != sha:
            raise RecipeError(
                f"adapter.init_from: the adapter of {parent} changed since this run recorded it (sha256 "
                f"{a.init_sha256[:12]}... recorded, {sha[:12]}... now)",
                "restore the parent run's adapter, or start a new run from the adapter as it is now "
                "(remove adapter.init_sha256 and use --no-resume or another output.dir)",
            )
        update["adapter"] = a.model_copy(update={"init_from": parent, "init_sha256": sha})
    named = _named_run(recipe.preference.reference if recipe.preference is not None else None)
    if named is not None:
        reference = os.path.abspath(os.path.expanduser(named))
        adapter_sha256(Path(reference), "preference.reference")
        update["preference"] = recipe.preference.model_copy(update={"reference": reference})
    return recipe.model_copy(update=update) if update else recipe


def record(recipe: Recipe) -> dict[str, Any] | None:
    """run.json's "lineage": the parent run and its adapter's sha256, and the reference of a preference run."""
    a, p = recipe.adapter, recipe.preference
    if a.init_from is None and p is None:
        return None
    out: dict[str, Any] = {}
    if a.init_from is not None:
        out["parent"] = a.init_from
        out["parent_adapter_sha256"] = a.init_sha256
    if p is not None and p.reference is not None:
        reference = p.reference
        if reference == "init":
            reference = "init (base + the parent's adapter)" if a.init_from else "init (the base)"
        out["reference"] = reference
        named = _named_run(p.reference)
        if named is not None:
            out["reference_adapter_sha256"] = adapter_sha256(Path(named), "preference.reference")
    return out or None
