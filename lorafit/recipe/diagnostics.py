"""Validation errors as `file:line: field: problem; fix` lines, with did-you-mean suggestions."""

from __future__ import annotations

import difflib
import re
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from lorafit.recipe.schema import Recipe


def short_repr(value: Any, limit: int = 80) -> str:
    """A value as a message quotes it, cut short: a pasted file must not flood the terminal."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models a field's type can hold: `Source` in `str | Source | list[str | Source]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return list(dict.fromkeys(m for arg in get_args(annotation) for m in _models_in(arg)))


def _section_fields(loc: tuple) -> list[str]:
    """Known field names at a location, for did-you-mean suggestions."""
    model: type[BaseModel] = Recipe
    for part in loc:
        if isinstance(part, int):
            continue  # a list index: the same model
        field = model.model_fields.get(str(part))
        inner = _models_in(field.annotation) if field else []
        if len(inner) != 1:
            break
        model = inner[0]
    return list(model.model_fields)


def _fix_for(err: dict, loc: tuple) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        name = str(loc[-1])
        close = difflib.get_close_matches(name, _section_fields(loc[:-1]), n=1, cutoff=0.5)
        return f"did you mean '{close[0]}'?" if close else f"known fields: {', '.join(_section_fields(loc[:-1]))}"
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        given = str(err.get("input"))[:100]
        options = [o.strip(" '") for o in expected.replace(" or ", ",").split(",") if o.strip()]
        close = difflib.get_close_matches(given, options, n=1, cutoff=0.5)
        return f"did you mean '{close[0]}'?" if close else f"use one of: {expected}"
    if kind == "missing":
        return "add it to the recipe"
    if kind == "finite_number":
        return "give a finite number (.inf and .nan are not values a run can use)"
    return "see `lorafit schema` for the field's type and meaning"


def format_errors(exc: ValidationError, lines: dict[tuple, int], source: str) -> str:
    out = []
    seen = set()
    for err in exc.errors():
        # Drop pydantic's union-branch markers such as 'str' / 'list[str]' from the location.
        loc = tuple(
            p
            for p in err["loc"]
            if not (isinstance(p, str) and ("[" in p or p in {"str", "int", "float", "bool", "list"}))
        )
        dotted = ".".join(str(p) for p in loc) or "(recipe)"
        if dotted in seen and err["type"] != "extra_forbidden":
            continue
        seen.add(dotted)
        msg = err["msg"].removeprefix("Value error, ")
        # A rule across sections names its fields in the message: point at the first one the YAML sets.
        keys = [loc[:i] for i in range(len(loc), 0, -1)] or [
            tuple(name.split(".")) for name in re.findall(r"\b[a-z_]+\.[a-z_0-9]+\b", msg)
        ]
        line = next((lines[key] for key in keys if key in lines), None)
        # A line is a number in `source`, or (file, number) when the key came from a recipe it extends.
        where = f"{line[0]}:{line[1]}" if isinstance(line, tuple) else f"{source}:{line}" if line else source
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        shows_value = loc and err["type"] not in ("missing", "extra_forbidden")
        value = f" (got {short_repr(err.get('input'))})" if shows_value else ""
        out.append(f"{where}: {dotted}: {msg}{value}; {_fix_for(err, loc)}")
    return "\n".join(out)
