"""Regenerate the recipe reference in README.md from the schema's field descriptions.

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

from lorafit.recipe import Recipe  # noqa: E402

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- recipe-reference:start -->", "<!-- recipe-reference:end -->"


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


def render(readme: str) -> str:
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{reference()}{END}{tail}"


def main() -> int:
    current = README.read_text()
    fresh = render(current)
    if "--check" in sys.argv:
        if fresh != current:
            print("README.md's recipe reference is stale: run python scripts/gen_recipe_docs.py")
            return 1
        return 0
    README.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
