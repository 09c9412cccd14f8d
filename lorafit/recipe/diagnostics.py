"""Validation errors as `file:line: field: problem; fix` lines, with did-you-mean suggestions.

A suggestion comes from what the key or value means before how it is spelled: a field of another section points
there, a peer tool's spelling (recipe/peers/) names the lorafit field and what the peer setting means here, and only
then string similarity over lorafit's own names.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from lorafit.recipe import peers
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


def _yaml(value: Any) -> str:
    """A value as a recipe writes it: `true`, `0.0002`, `[q_proj, v_proj]`, `all-linear`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    return str(value)


def settings_text(settings: dict[str, Any]) -> str:
    return " + ".join(f"{path}: {_yaml(value)}" for path, value in settings.items())


def _sections_with(name: str) -> list[str]:
    """The recipe sections that have a field of this name (`lr` -> training)."""
    out = []
    for section, field in Recipe.model_fields.items():
        inner = _models_in(field.annotation)
        if len(inner) == 1 and name in inner[0].model_fields:
            out.append(section)
    return out


def _wrong_section(loc: tuple) -> str | None:
    """`lr` at the top level, or `training.load_in_4bit`: a lorafit field written in the wrong section."""
    if not 1 <= len(loc) <= 2 or not all(isinstance(p, str) for p in loc):
        return None
    here = loc[0] if len(loc) == 2 else None
    if len(loc) == 2 and here not in Recipe.model_fields:
        return None
    homes = [s for s in _sections_with(str(loc[-1])) if s != here]
    if not homes:
        return None
    name = loc[-1]
    where = " or ".join(f"{s}.{name}" for s in homes)
    return f"{name} is a field of the {' or '.join(homes)} section: move it there ({where})"


def peer_fix(loc: tuple, value: Any) -> str | None:
    """What a peer tool's key means in lorafit, with the setting to write instead (`learning_rate` -> training.lr)."""
    found = peers.key_for(loc)
    if found is None:
        return None
    name, peer = found
    who = f"{name} ({peers.tool_names(peer.tools) or 'another tool'})"
    try:
        settings = peer.settings(value)
    except peers.Unmapped as exc:
        return f"{who} is {peer.means}; {exc}" if peer.field else f"{who}: {exc}; remove it"
    if not settings:
        return f"{who} is {peer.means}, off as given, which lorafit's default already is: remove it"
    return f"{who} is {peer.means}: write {settings_text(settings)}"


def unknown_key_fix(loc: tuple, value: Any, fields: list[str]) -> str:
    """The fix for an unknown key: its section, its peer meaning, or the closest lorafit name."""
    fix = _wrong_section(loc) or peer_fix(loc, value)
    if fix:
        return fix
    close = difflib.get_close_matches(str(loc[-1]), fields, n=1, cutoff=0.5)
    return f"did you mean '{close[0]}'?" if close else f"known fields: {', '.join(fields)}"


def _fix_for(err: dict, loc: tuple) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return unknown_key_fix(loc, err.get("input"), _section_fields(loc[:-1]))
    if kind == "literal_error":
        dotted = ".".join(str(p) for p in loc)
        given = err.get("input")
        peer = peers.value_for(dotted, given)
        if peer is not None:
            who = f"{given!r} ({peers.tool_names(peer.tools)})"
            return (
                f"{who} is {peer.means}: write {settings_text(peer.settings)}"
                if peer.settings
                else f"{who}: {peer.means}"
            )
        expected = err.get("ctx", {}).get("expected", "")
        options = [o.strip(" '") for o in expected.replace(" or ", ",").split(",") if o.strip()]
        close = difflib.get_close_matches(str(given)[:100], options, n=1, cutoff=0.5)
        return f"did you mean '{close[0]}'?" if close else f"use one of: {expected}"
    if kind in ("model_type", "model_attributes_type") and len(loc) == 1:
        fix = peer_fix(loc, err.get("input"))
        if fix:
            return fix
    if kind == "missing":
        return "add it to the recipe"
    if kind == "finite_number":
        return "give a finite number (.inf and .nan are not values a run can use)"
    if kind in ("value_error", "assertion_error"):
        return ""  # lorafit's own rules say their fix in the message
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
        fix = _fix_for(err, loc)
        out.append(f"{where}: {dotted}: {msg}{value}" + (f"; {fix}" if fix else ""))
    return "\n".join(out)
