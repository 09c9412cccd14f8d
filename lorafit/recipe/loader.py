"""Reading a recipe: its file and the ones it extends, --set overrides, validation, and the checks that need the
model's config or the machine. Nothing heavy is imported: `lorafit validate` must answer schema problems instantly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from lorafit.core.errors import MissingError, RecipeError
from lorafit.core.modelinfo import context_limit
from lorafit.recipe.diagnostics import format_errors, short_repr, unknown_key_fix
from lorafit.recipe.extends import load_layers, resolve_paths
from lorafit.recipe.parsing import parse_with_lines, yaml_error
from lorafit.recipe.schema import Recipe


def parse_override(item: str) -> tuple[tuple[str, ...], Any]:
    """`section.field=value` with the value read as a YAML scalar."""
    if "=" not in item:
        raise RecipeError(f"--set {item!r}: expected section.field=value", "e.g. --set training.max_steps=5")
    path, raw = item.split("=", 1)
    keys = tuple(p for p in path.strip().split(".") if p)
    if len(keys) < 2:
        raise RecipeError(f"--set {item!r}: the path needs a section and a field", "e.g. --set training.lr=1e-4")
    model: type[BaseModel] = Recipe
    for depth, key in enumerate(keys):
        fields = model.model_fields
        if key not in fields:
            try:
                value = parse_with_lines(raw, f"--set {item!r}")[0] if raw.strip() else None
            except yaml.YAMLError:
                value = raw
            hint = unknown_key_fix(keys[: depth + 1], value, list(fields))
            if hint.startswith("did you mean"):
                close = hint.split("'")[1]
                hint = f"did you mean '{'.'.join(keys[:depth] + (close,))}'?"
            raise RecipeError(f"--set {item!r}: unknown field '{'.'.join(keys[: depth + 1])}'", hint)
        annotation = fields[key].annotation
        if depth < len(keys) - 1:
            # an optional section (preference: PreferenceSection | None) has the section's sub-fields
            sections = [a for a in get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
            annotation = sections[0] if len(sections) == 1 else annotation
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                raise RecipeError(f"--set {item!r}: '{'.'.join(keys[: depth + 1])}' has no sub-fields")
            model = annotation
    try:
        value = (
            parse_with_lines(raw, f"--set {item!r}")[0] if raw.strip() else None
        )  # bounded: a flow list can hold a bomb
        return keys, value
    except yaml.YAMLError as exc:
        problem = (
            "a control character is not allowed in YAML"
            if isinstance(exc, yaml.reader.ReaderError)
            else getattr(exc, "problem", exc)
        )
        raise RecipeError(
            f"--set {item!r}: the value is not valid YAML ({problem})", "quote it, e.g. --set 'output.tags=[a, b]'"
        ) from None


def _apply(data: dict, keys: tuple[str, ...], value: Any) -> None:
    node = data
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value


def _find_nul(value: Any, path: tuple = ()) -> tuple | None:
    """The key path of the first string (or key) holding a NUL character: no file name or model id has one."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if isinstance(key, str) and "\x00" in key:
            return path + (key,)
        found = _find_nul(item, path + (key,))
        if found is not None:
            return found
    return None


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read (following `extends`), override and validate a recipe; every problem is raised as one RecipeError."""
    path = Path(path)
    try:
        found = path.is_file()
    except OSError:  # e.g. a name too long to look up
        found = False
    if not found:
        raise MissingError(
            f"recipe not found: {short_repr(str(path), limit=400)}",
            "check the path; recipes/quickstart.yaml is a working example",
        )
    data, lines = load_layers(path)
    for item in overrides:
        keys, value = parse_override(item)
        _apply(data, keys, value)
        lines.pop(keys, None)
    nul = _find_nul(data)
    if nul is not None:
        line = lines.get(nul) or next((lines[nul[:i]] for i in range(len(nul), 0, -1) if nul[:i] in lines), None)
        where = f"{line[0]}:{line[1]}" if line else str(path)
        raise RecipeError(
            f"{where}: {'.'.join(map(str, nul)) or '(recipe)'}: a NUL character (\\0) in a string; no path or name has one",
            "remove the \\0 escape from the value",
        )
    resolve_paths(data, path.parent)  # --set data paths, like the recipe's own, are relative to the recipe
    output = data.setdefault("output", {}) if isinstance(data.get("output", {}), dict) else data["output"]
    if isinstance(output, dict) and not output.get("dir"):
        output["dir"] = str(Path("runs") / path.stem)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(format_errors(exc, lines, str(path)), None) from None
    _check_context(recipe, lines.get(("training", "max_length")), str(path))
    return recipe


def _check_context(recipe: Recipe, line: tuple[str, int] | None, source: str) -> None:
    """training.max_length within the model's positions (max_position_embeddings), read from its config.json
    without loading weights or importing torch; models whose config is not on disk are not checked here."""
    found = context_limit(recipe.model.name)
    if found is None:
        return
    limit, origin = found
    wanted = recipe.training.max_length
    if wanted > limit:
        where = f"{line[0]}:{line[1]}" if line else source
        raise RecipeError(
            f"{where}: training.max_length: {wanted:,} tokens is beyond the model's context of {limit:,} positions "
            f"({origin}); no memory plan is made from it",
            f"set training.max_length: {limit} or less (or choose a model with a longer context)",
        )


def recipe_from_yaml_text(text: str, source: str = "recipe.yaml") -> Recipe:
    """Validate a resolved recipe written by an earlier run (paths already absolute or as recorded)."""
    try:
        data, lines, _ = parse_with_lines(text, source)
    except yaml.YAMLError as exc:
        raise yaml_error(exc, source, text) from None
    if not isinstance(data, dict):
        raise RecipeError(
            f"{source}: a recipe is a mapping of sections (model, data, adapter, ...)",
            "the run directory's recipe.yaml was changed; restore it",
        )
    try:
        return Recipe.model_validate(data, context={"saved_run": True})
    except ValidationError as exc:
        raise RecipeError(format_errors(exc, lines, source)) from None


def check_hardware(recipe: Recipe) -> None:
    """Cross-field rules that need to know the machine: kept apart so schema checks stay instant."""
    from lorafit.core import device

    info = device.detect()
    if recipe.training.precision == "bf16" or recipe.model.dtype == "bfloat16":
        if info.kind == "cpu":
            raise RecipeError(
                "bf16 requested but this machine trains on CPU, where bf16 matmuls are many times slower than fp32",
                "use training.precision: auto (fp32 on CPU) and model.dtype: auto",
            )
        if not info.bf16:
            raise RecipeError(
                f"bf16 requested but {info.name} has no bf16 support", "use training.precision: fp16 or auto"
            )
    if (recipe.training.precision == "fp16" or recipe.model.dtype == "float16") and info.kind == "cpu":
        raise RecipeError(
            "fp16 training needs a GPU (mixed precision with loss scaling)",
            "use training.precision: auto and model.dtype: auto (fp32 on CPU)",
        )
