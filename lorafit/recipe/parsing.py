"""YAML text as data, bounded, with the line of every key: so that every error can point at the line to fix."""

from __future__ import annotations

import re
from typing import Any

import yaml

from lorafit.core.errors import RecipeError

# A recipe is a few hundred values in a few KB. These bounds are far above any real recipe and far below what
# stalls a login node: anchors and aliases share nodes, so ten lines of YAML can stand for billions of values
# ("billion laughs"), and every walk over the composed graph or the loaded data (the line index, merging,
# pydantic) pays for each of them. They are checked on the parser's events, before any graph is built.
MAX_RECIPE_BYTES = 1 << 20  # per file, and for a whole extends chain
MAX_VALUES = 100_000  # scalars and collections after alias expansion, for a whole extends chain
MAX_DEPTH = 64  # nesting of mappings and lists
MAX_EXTENDS = 16  # recipes in one extends chain


def _count_values(text: str, source: str, budget: int) -> int:
    """How many values the YAML stands for once aliases are expanded; RecipeError past `budget`, deeper than
    MAX_DEPTH, or for an alias inside its own anchor. Linear in the text: the parser is a loop, not a recursion."""
    # PyYAML's scanner holds one possible key per open flow bracket and rescans them all at every token, so
    # `[[[[...` costs quadratic time before the parser's first event: count brackets first (quotes ignored,
    # which only overcounts unbalanced brackets in strings; no recipe has 2 x MAX_DEPTH of those open).
    depth = 0
    for match in re.finditer(r"[\[\]{}]", text):
        depth = depth + 1 if match.group() in "[{" else max(0, depth - 1)
        if depth > 2 * MAX_DEPTH:
            line = text.count("\n", 0, match.start()) + 1
            raise RecipeError(
                f"{source}:{line}: nested more than {MAX_DEPTH} levels deep (a recipe needs 3 or 4)",
                "check the brackets and indentation",
            )
    sizes: dict[str, int] = {}  # anchor -> expanded values of its node
    stack: list[list] = []  # [anchor, values so far] per open mapping / list
    total = 0

    def where(event: yaml.Event) -> str:
        return f"{source}:{event.start_mark.line + 1}"

    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.ScalarEvent, yaml.AliasEvent, yaml.CollectionStartEvent)):
            if isinstance(event, yaml.AliasEvent):
                if any(frame[0] == event.anchor for frame in stack):
                    raise RecipeError(
                        f"{where(event)}: the alias *{event.anchor} is inside its own anchor &{event.anchor} (a value that contains itself)",
                        "write the value out instead of the alias",
                    )
                n = sizes.get(event.anchor, 1)
            else:
                n = 1
            total += n
            if total > budget:
                what = f" through the alias *{event.anchor}" if isinstance(event, yaml.AliasEvent) else ""
                chain = " together with the recipes it extends" if budget < MAX_VALUES else ""
                raise RecipeError(
                    f"{where(event)}: the recipe stands for more than {MAX_VALUES:,} values{what}{chain} once anchors and aliases "
                    f"are expanded (a recipe needs a few hundred); refusing to read it",
                    "write the values out, or share a base recipe with `extends` instead of nested aliases",
                )
            if isinstance(event, yaml.CollectionStartEvent):
                if len(stack) >= MAX_DEPTH:
                    raise RecipeError(
                        f"{where(event)}: nested more than {MAX_DEPTH} levels deep (a recipe needs 3 or 4)",
                        "check the brackets and indentation",
                    )
                stack.append([event.anchor, n])
                continue
            if isinstance(event, yaml.ScalarEvent) and event.anchor:
                sizes[event.anchor] = 1
            if stack:
                stack[-1][1] += n
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, n = stack.pop()
            if anchor:
                sizes[anchor] = n
            if stack:
                stack[-1][1] += n
    return total


def _line_index(root: yaml.Node | None) -> dict[tuple, int]:
    """Map each key path in a composed YAML document to its 1-based line number (bounded by `_count_values` first)."""
    index: dict[tuple, int] = {}

    def walk(node: yaml.Node, path: tuple) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if not isinstance(key, yaml.ScalarNode):
                    continue  # a list or mapping as a key: the schema refuses it, at the parent's line
                sub = path + (key.value,)
                index[sub] = key.start_mark.line + 1
                walk(value, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                index[path + (i,)] = item.start_mark.line + 1
                walk(item, path + (i,))

    if root is not None:
        walk(root, ())
    return index


def parse_with_lines(text: str, source: str, budget: int = MAX_VALUES) -> tuple[Any, dict[tuple, int], int]:
    """The document, the line of every key path, and its expanded value count. YAML errors pass through."""
    values = _count_values(text, source, budget)
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        lines = _line_index(root)  # before constructing: merge keys (<<) are flattened in place by the constructor
        data = loader.construct_document(root) if root is not None else None
    finally:
        loader.dispose()
    return data, lines, values


def yaml_error(exc: yaml.YAMLError, source: str, text: str = "") -> RecipeError:
    """A YAML error as a RecipeError at its line, so a syntax slip reads like any other recipe error."""
    if isinstance(exc, yaml.reader.ReaderError):  # a control character: the reader knows its position, not its line
        line = text[: exc.position].count("\n") + 1 if text else None
        where = f"{source}:{line}" if line else source
        char = exc.character if isinstance(exc.character, str) else chr(exc.character)
        return RecipeError(
            f"{where}: not valid YAML: the control character {char!r} is not allowed in YAML text",
            "remove it (write \\t, \\0 ... inside a double-quoted string if you mean one)",
        )
    mark = getattr(exc, "problem_mark", None)
    where = f"{source}:{mark.line + 1}" if mark else source
    return RecipeError(
        f"{where}: not valid YAML: {getattr(exc, 'problem', None) or exc}", "check indentation and quoting"
    )


def parse_yaml_text(text: str, source: str) -> Any:
    """YAML text as data, within the loader's bounds; RecipeError for anything that is not valid YAML."""
    try:
        return parse_with_lines(text, source)[0]
    except yaml.YAMLError as exc:
        raise yaml_error(exc, source, text) from None
