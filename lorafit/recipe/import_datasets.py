"""How `lorafit import` reads a peer's dataset references (axolotl's datasets, LLaMA-Factory's dataset_info.json,
torchtune's builders) as data.train sources, and the record an import fills in."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorafit.core.errors import RecipeError
from lorafit.recipe import peers

# Dataset builders of torchtune's that name a hub dataset and its row shape.
TORCHTUNE_DATASETS = {
    "torchtune.datasets.alpaca_dataset": ("tatsu-lab/alpaca", "alpaca"),
    "torchtune.datasets.alpaca_cleaned_dataset": ("yahma/alpaca-cleaned", "alpaca"),
    "torchtune.datasets.slimorca_dataset": ("Open-Orca/SlimOrca-Dedup", "sharegpt"),
}
AXOLOTL_TYPES = {"alpaca": "alpaca", "chat_template": "messages", "sharegpt": "sharegpt", "completion": "text"}


@dataclass
class Imported:
    """A converted config: lorafit settings with the peer key each came from, and what could not be mapped."""

    tool: str
    settings: dict[str, Any] = field(default_factory=dict)  # lorafit path -> value
    origins: dict[str, str] = field(default_factory=dict)  # lorafit path -> `peer_key: value`
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (peer key, value, what lorafit does)

    def set(self, path: str, value: Any, origin: str) -> None:
        old = self.settings.get(path)
        if path == "adapter.target_modules" and isinstance(old, list) and isinstance(value, list):
            value = old + [v for v in value if v not in old]  # torchtune's attention + mlp lists, axolotl's too
        elif path == "adapter.target_modules" and "all-linear" in (old, value):
            value = "all-linear"
        self.settings[path] = value
        self.origins[path] = f"{self.origins[path]}; {origin}" if path in self.origins and old is not None else origin

    def skip(self, key: str, value: Any, why: str) -> None:
        self.skipped.append((key, short(value), why))


def short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def relative(path: str, base: Path, out_dir: Path) -> str:
    """A data path the peer reads from its own directory, as the recipe (which resolves against its own) needs it."""
    found = (base / path).expanduser()
    if not Path(path).is_absolute() and found.exists():
        return os.path.relpath(found.resolve(), out_dir.resolve())
    return path


def axolotl_datasets(items: Any, imported: Imported, base: Path, out_dir: Path, key: str) -> list:
    sources, formats = [], set()
    for i, item in enumerate(items if isinstance(items, list) else [items]):
        if isinstance(item, str):
            item = {"path": item}
        if not isinstance(item, dict) or "path" not in item:
            imported.skip(f"{key}[{i}]", item, "a dataset without a path: list it in data.train")
            continue
        files = item.get("data_files")
        paths = [files] if isinstance(files, str) else list(files) if files else [item["path"]]
        source: dict[str, Any] = {}
        kind = item.get("type")
        fmt = AXOLOTL_TYPES.get(kind) if isinstance(kind, str) else None
        if kind is not None and fmt is None:
            imported.skip(
                f"{key}[{i}].type", kind, "no lorafit format of that name: data.format auto detects each source"
            )
        if fmt:
            formats.add(fmt)
        fields = {}
        if item.get("field_messages"):
            fields["messages"] = item["field_messages"]
        mapping = item.get("message_property_mappings") or {}
        for ours, theirs in (("role", item.get("message_field_role")), ("content", item.get("message_field_content"))):
            theirs = mapping.get(ours, theirs)
            if theirs and theirs != ours:
                fields[ours] = theirs
        if kind == "completion" and item.get("field"):
            fields["text"] = item["field"]
        roles = item.get("roles")
        if isinstance(roles, dict):
            fields["roles"] = {v: role for role, values in roles.items() for v in (values or []) if v != role}
            if not fields["roles"]:
                del fields["roles"]
        if item.get("split"):
            source["split"] = item["split"]
        if item.get("name"):
            source["subset"] = item["name"]
        if item.get("revision"):
            source["revision"] = item["revision"]
        if fields:
            source["fields"] = fields
        for path in paths:
            sources.append(
                {"path": relative(str(path), base, out_dir), **source} if source else relative(str(path), base, out_dir)
            )
    if len(formats) == 1:
        fmt = formats.pop()
        imported.set("data.format", fmt, f"{key}[].type: {next(k for k, v in AXOLOTL_TYPES.items() if v == fmt)}")
        if fmt == "alpaca":
            imported.set("data.prompt_style", "alpaca", f"{key}[].type: alpaca (the original Alpaca prompt)")
    return sources


def llamafactory_datasets(names: Any, imported: Imported, info_path: Path | None, out_dir: Path, key: str) -> list:
    info: dict = {}
    if info_path is not None and info_path.is_file():
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RecipeError(f"{info_path}: not a readable dataset_info.json ({exc})") from None
    sources, formats = [], set()
    for name in peers.names(names):
        entry = info.get(name)
        if entry is None:
            why = f"not in {info_path}" if info else "no dataset_info.json given (--dataset-info), so kept as written"
            imported.skip(f"{key}: {name}", name, f"LLaMA-Factory dataset name {why}; check data.train")
            sources.append(name)
            continue
        source: dict[str, Any] = {}
        if entry.get("hf_hub_url"):
            path = entry["hf_hub_url"]
        elif entry.get("file_name"):
            path = relative(entry["file_name"], info_path.parent, out_dir)
        else:
            imported.skip(
                f"{key}: {name}", entry, "neither hf_hub_url nor file_name: lorafit reads files and hub datasets"
            )
            continue
        if entry.get("subset"):
            source["subset"] = entry["subset"]
        if entry.get("split"):
            source["split"] = entry["split"]
        fmt = entry.get("formatting", "alpaca")
        columns, tags = entry.get("columns") or {}, entry.get("tags") or {}
        fields: dict[str, Any] = {}
        if fmt == "alpaca":
            for theirs, ours in (
                ("prompt", "instruction"),
                ("query", "input"),
                ("response", "output"),
                ("system", "system"),
            ):
                if columns.get(theirs, ours) != ours:
                    fields[ours] = columns[theirs]
            if columns.get("history"):
                imported.skip(
                    f"{name}.columns.history",
                    columns["history"],
                    "multi-turn history in alpaca rows: use chat rows (messages)",
                )
            formats.add("alpaca")
        elif fmt == "sharegpt":
            openai = tags.get("role_tag") == "role"
            formats.add("messages" if openai else "sharegpt")
            column = columns.get("messages", "conversations")
            if column != ("messages" if openai else "conversations"):
                fields["messages"] = column
            for ours, tag, default in (("role", "role_tag", "from"), ("content", "content_tag", "value")):
                if not openai and tags.get(tag, default) != default:
                    fields[ours] = tags[tag]
            roles = {
                tags[t]: r
                for t, r in (("user_tag", "user"), ("assistant_tag", "assistant"), ("system_tag", "system"))
                if tags.get(t) and tags[t] not in (r, {"user": "human", "assistant": "gpt"}.get(r))
            }
            if roles:
                fields["roles"] = roles
        else:
            imported.skip(f"{name}.formatting", fmt, "LLaMA-Factory formats here are alpaca and sharegpt")
        if fields:
            source["fields"] = fields
        sources.append({"path": path, **source} if source else path)
    if len(formats) == 1:
        fmt = formats.pop()
        imported.set("data.format", fmt, f"{key}: formatting {fmt} in dataset_info.json")
    if "alpaca" in formats or imported.settings.get("data.format") == "alpaca":
        imported.set("data.prompt_style", "llamafactory", f"{key}: LLaMA-Factory's instruction + newline + input")
    return sources


def torchtune_dataset(spec: Any, imported: Imported, base: Path, out_dir: Path, key: str) -> list:
    sources = []
    for i, item in enumerate(spec if isinstance(spec, list) else [spec]):
        if not isinstance(item, dict):
            imported.skip(key, item, "a dataset section with _component_ and source")
            continue
        component = item.get("_component_", "")
        known = TORCHTUNE_DATASETS.get(component)
        files = item.get("data_files")
        path = item.get("source") or (known[0] if known else None)
        if files and path in ("json", "csv", "parquet", "text"):
            path = files if isinstance(files, str) else files[0]
            path = relative(path, base, out_dir)
        if not path:
            imported.skip(
                f"{key}._component_", component, "a dataset builder lorafit does not know: list the data in data.train"
            )
            continue
        source: dict[str, Any] = {}
        if item.get("split") and item["split"] != "train":
            source["split"] = item["split"]
        if item.get("conversation_column"):
            source["fields"] = {"messages": item["conversation_column"]}
        sources.append({"path": path, **source} if source else path)
        fmt = known[1] if known else {"sharegpt": "sharegpt", "openai": "messages"}.get(item.get("conversation_style"))
        if fmt:
            imported.set("data.format", fmt, f"{key}._component_: {component.rsplit('.', 1)[-1]}")
        if fmt == "alpaca":
            imported.set("data.prompt_style", "torchtune", f"{key}._component_: the Alpaca prompt in the user turn")
        for sub in ("packed", "train_on_input"):
            if sub in item:
                for path_, value in peers.KEYS[f"dataset.{sub}"].settings(item[sub]).items():
                    imported.set(path_, value, f"{key}.{sub}: {item[sub]}")
        for sub, value in item.items():
            if sub not in (
                "_component_",
                "source",
                "data_files",
                "split",
                "packed",
                "train_on_input",
                "conversation_column",
                "conversation_style",
            ):
                imported.skip(f"{key}.{sub}", value, "no lorafit equivalent for this dataset option")
    return sources
