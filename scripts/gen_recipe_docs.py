"""Regenerate the recipe reference in README.md from the schema's field descriptions, and the table of peer
tools' keys from lorafit/recipe/peers/keys.py.

python scripts/gen_recipe_docs.py          # rewrite the section between the markers
python scripts/gen_recipe_docs.py --check  # exit 1 when README.md is stale (a test runs this)
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import get_args

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydantic import BaseModel  # noqa: E402

from lorafit.recipe import Recipe, peers  # noqa: E402

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- recipe-reference:start -->", "<!-- recipe-reference:end -->"
PEERS_START, PEERS_END = "<!-- peer-keys:start -->", "<!-- peer-keys:end -->"


def _type(annotation) -> str:
    text = str(annotation).replace("typing.", "")
    text = text.replace("<class '", "").replace("'>", "").replace("NoneType", "null")
    text = re.sub(r"\blorafit\.recipe\.[a-z_]+\.", "lorafit.recipe.", text)  # the name it is imported by, not its file
    return text.replace("|", "\\|")  # a bare | would split the Markdown table cell


def _default(field) -> str:
    if field.is_required():
        return "*required*"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", exclude_defaults=True)
    return f"`{json.dumps(value)}`"


def reference() -> str:
    out = []
    for section, sfield in Recipe.model_fields.items():
        model: type[BaseModel] = next(  # `PreferenceSection | None`: the section's model
            (
                a
                for a in (sfield.annotation, *get_args(sfield.annotation))
                if isinstance(a, type) and issubclass(a, BaseModel)
            )
        )
        out += [
            f"#### `{section}`: {sfield.description}",
            "",
            "| field | type | default | meaning |",
            "|---|---|---|---|",
        ]
        for name, field in model.model_fields.items():
            meaning = (field.description or "").replace("|", "\\|")
            out.append(f"| `{section}.{name}` | `{_type(field.annotation)}` | {_default(field)} | {meaning} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def peer_keys() -> str:
    """One row per lorafit field (or "no equivalent"), the peer keys that set it, by tool."""
    rows: dict[str, list[str]] = {}
    for key, peer in peers.KEYS.items():
        if not peer.tools:
            continue
        target = f"`{peer.field}`" if peer.field else "no equivalent"
        rows.setdefault(target, []).append(f"`{key}` ({', '.join(peer.tools)})")
    out = ["| lorafit | peer keys (tools) |", "|---|---|"]
    out += [
        f"| {target} | {'; '.join(keys)} |"
        for target, keys in sorted(rows.items(), key=lambda r: (r[0] == "no equivalent", r[0]))
    ]
    out += ["", "| lorafit field | peer values (tools) | in lorafit |", "|---|---|---|"]
    grouped: dict[tuple[str, str], list[str]] = {}  # one row per meaning: the no-equivalent optimizers together
    for path, values in peers.VALUES.items():
        for value, peer in values.items():
            means = (
                " + ".join(f"`{p}: {json.dumps(v)}`" for p, v in peer.settings.items()) if peer.settings else peer.means
            )
            grouped.setdefault((path, means.replace("|", "/")), []).append(f"`{value}` ({', '.join(peer.tools)})")
    out += [f"| `{path}` | {', '.join(values)} | {means} |" for (path, means), values in grouped.items()]
    return "\n".join(out) + "\n"


def _between(text: str, start: str, end: str, body: str) -> str:
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}{end}{tail}"


def render(readme: str) -> str:
    return _between(_between(readme, START, END, reference()), PEERS_START, PEERS_END, peer_keys())


def main() -> int:
    current = README.read_text()
    fresh = render(current)
    if "--check" in sys.argv:
        if fresh != current:
            print("README.md's recipe reference or peer-key table is stale: run python scripts/gen_recipe_docs.py")
            return 1
        return 0
    README.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
