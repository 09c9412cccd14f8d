"""A recipe file merged over the recipes it `extends`, each one's data paths resolved against its own file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from lorafit.core.errors import MissingError, RecipeError
from lorafit.core.textfiles import describe_bytes, encoding_fix
from lorafit.recipe.diagnostics import short_repr
from lorafit.recipe.parsing import MAX_EXTENDS, MAX_RECIPE_BYTES, MAX_VALUES, parse_with_lines, yaml_error


def _exists(path: Path) -> bool:
    """Path.exists that answers False for names the OS cannot even look up (too long, NUL byte)."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def resolve_paths(data: dict, base: Path) -> None:
    """Local data paths are relative to the recipe file, so a recipe works from any directory; they are stored
    absolute (a recipe given as a relative path would otherwise leave them relative to where it was run)."""
    base = Path(os.path.abspath(base))
    section = data.get("data")
    if not isinstance(section, dict):
        return

    def fix(v: Any) -> Any:
        if isinstance(v, str) and not Path(v).is_absolute() and _exists(base / v):
            return str(base / v)
        if isinstance(v, dict) and isinstance(v.get("path"), str):
            return {**v, "path": fix(v["path"])}
        return v

    for key in ("train", "eval"):
        if key in section:
            value = section[key]
            section[key] = [fix(v) for v in value] if isinstance(value, list) else fix(value)
    if section.get("preserve") not in (None, "general"):
        section["preserve"] = fix(section["preserve"])


def _read_layer(path: Path, budget: dict[str, int]) -> tuple[dict, dict[tuple, tuple[str, int]]]:
    """One recipe file as a mapping, and the (file, line) of every key in it; `budget` is what is left of
    MAX_RECIPE_BYTES and MAX_VALUES for the extends chain this file is part of."""
    try:
        size = path.stat().st_size
        if size > budget["bytes"]:
            whole = "" if budget["bytes"] == MAX_RECIPE_BYTES else " together with the recipes it extends"
            raise RecipeError(
                f"{path}: {size:,} bytes{whole} is more than a recipe can be ({MAX_RECIPE_BYTES:,} bytes at most)",
                "pass the recipe's .yaml file (data belongs in data.train, not in the recipe)",
            )
        raw = path.read_bytes()
    except OSError as exc:
        raise MissingError(f"{path}: cannot read it ({exc.strerror})", "check the path and its permissions") from None
    budget["bytes"] -= len(raw)
    try:
        text = raw.decode("utf-8-sig")  # a BOM from a Windows editor is fine
    except UnicodeDecodeError:
        kind = describe_bytes(raw)
        fix = (
            encoding_fix(kind, str(path))
            if kind.startswith(("UTF-", "text in"))
            else "pass the recipe's .yaml file (saved as UTF-8)"
        )
        raise RecipeError(f"{path}: not a text file (a recipe is YAML in UTF-8; this looks like {kind})", fix) from None
    try:
        data, lines, values = parse_with_lines(text, str(path), budget["values"])
    except yaml.YAMLError as exc:
        raise yaml_error(exc, str(path), text) from None
    budget["values"] -= values
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of sections (model, data, adapter, ...)")
    return data, {key: (str(path), line) for key, line in lines.items()}


def _merge(base: dict, over: dict) -> dict:
    """Deep merge: mappings merge key by key, anything else (lists included) is replaced by `over`."""
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _merge_lines(base: dict[tuple, Any], lines: dict[tuple, Any], data: dict) -> dict[tuple, Any]:
    """Where each merged key came from: the extending file wins, and a value it replaces whole hides the base's sub-keys."""
    out = dict(base)
    for key in lines:
        node: Any = data
        for part in key:  # the index's keys are YAML's text (`1`, `<<`); the data's may differ (1, merged away)
            if isinstance(node, dict):
                node = node.get(part)
            elif isinstance(node, list) and isinstance(part, int) and part < len(node):
                node = node[part]
            else:
                node = None
        if not isinstance(node, dict):
            for sub in [k for k in out if len(k) > len(key) and k[: len(key)] == key]:
                del out[sub]
    out.update(lines)
    return out


def load_layers(
    path: Path, chain: tuple[Path, ...] = (), budget: dict[str, int] | None = None
) -> tuple[dict, dict[tuple, tuple[str, int]]]:
    """A recipe merged over the chain of recipes it `extends`, each one's data paths resolved against its own file.

    A base's output.dir is not inherited: every recipe file gets its own run directory unless it names one.
    The whole chain shares one budget of bytes and values, and holds at most MAX_EXTENDS recipes."""
    budget = budget if budget is not None else {"bytes": MAX_RECIPE_BYTES, "values": MAX_VALUES}
    data, lines = _read_layer(path, budget)
    resolve_paths(data, path.parent)
    if "extends" not in data:
        return data, lines
    parent = data.pop("extends")
    where = f"{path}:{lines.pop(('extends',), (path, '?'))[1]}"
    if not isinstance(parent, str) or not parent.strip():
        raise RecipeError(
            f"{where}: extends: expected the path of one base recipe, got {short_repr(parent)}",
            "e.g. extends: base.yaml (relative to this file)",
        )
    seen = chain + (path,)
    if len(seen) >= MAX_EXTENDS:
        raise RecipeError(
            f"{where}: extends: a chain of more than {MAX_EXTENDS} recipes ({seen[0]} -> ... -> {path} -> {parent})",
            "extend a base recipe directly instead of through a long chain",
        )
    try:
        base_path = Path(os.path.normpath(path.parent / Path(parent).expanduser()))
        known = {p.resolve() for p in seen}
        cycle = base_path.resolve() in known
        found = base_path.is_file()
    except (OSError, RuntimeError, ValueError):  # a name the OS cannot look up, an unknown ~user, a symlink loop
        raise MissingError(
            f"{where}: extends: base recipe not found: {short_repr(parent, limit=400)}",
            "the path is relative to the recipe that names it",
        ) from None
    if cycle:
        shown = " -> ".join(str(p) for p in seen + (base_path,))
        raise RecipeError(
            f"{where}: extends cycle: {shown}", "remove the `extends` that leads back to a recipe already in the chain"
        )
    if not found:
        raise MissingError(
            f"{where}: extends: base recipe not found: {base_path}", "the path is relative to the recipe that names it"
        )
    base, base_lines = load_layers(base_path, seen, budget)
    if isinstance(base.get("output"), dict):
        base["output"] = {k: v for k, v in base["output"].items() if k != "dir"}
        base_lines = {k: v for k, v in base_lines.items() if k[:2] != ("output", "dir")}
    return _merge(base, data), _merge_lines(base_lines, lines, data)
