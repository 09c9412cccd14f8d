"""`lorafit import`: a peer tool's config (axolotl, LLaMA-Factory, torchtune, TRL) as a lorafit recipe.

Every key goes through the peer table (recipe/peers/) that recipe diagnostics use, so an import and an error message
never disagree about what a peer setting means. The recipe is validated before it is written: a setting lorafit
refuses is left out and reported, never written half-right. Dataset references become data.train sources; the
peer's defaults that differ from lorafit's and change what is trained (no held-out split, no warmup, the length
limit) are written out too, marked as such. Stdlib + yaml + pydantic only: nothing heavy loads.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from lorafit.core.errors import RecipeError
from lorafit.recipe import peers
from lorafit.recipe.import_datasets import Imported, axolotl_datasets, llamafactory_datasets, short, torchtune_dataset
from lorafit.recipe.parsing import parse_yaml_text
from lorafit.recipe.schema import Recipe

TOOLS = {"axolotl": peers.AXOLOTL, "llamafactory": peers.LLAMAFACTORY, "torchtune": peers.TORCHTUNE, "trl": peers.TRL}
SECTIONS = ("model", "data", "adapter", "quantization", "training", "preference", "output")
# torchtune's config sections whose keys the table names dotted (`optimizer.lr`).
TORCHTUNE_SECTIONS = (
    "model",
    "tokenizer",
    "checkpointer",
    "optimizer",
    "lr_scheduler",
    "loss",
    "metric_logger",
    "profiler",
)
# The peers' defaults that differ from lorafit's and change what is trained, written out when a config leaves
# them unset: none of them holds data out unless told, none warms up unless told, and each has its own limits.
PEER_DEFAULTS: dict[str, dict[str, tuple[Any, str]]] = {
    "axolotl": {
        "data.eval_split": (0, "val_set_size: 0"),
        "training.warmup_ratio": (0.0, "no warmup"),
        "training.max_length": (2048, "sequence_len: 2048"),
        "training.epochs": (1, "num_epochs: 1"),
    },
    "llamafactory": {
        "data.eval_split": (0, "val_size: 0"),
        "training.warmup_ratio": (0.0, "warmup_steps: 0"),
        "training.max_length": (2048, "cutoff_len: 2048"),
        "training.scheduler": ("linear", "lr_scheduler_type: linear"),
        "training.lr": (5.0e-5, "learning_rate: 5.0e-5"),
    },
    "torchtune": {
        "data.eval_split": (0, "no dataset_val"),
        "training.warmup_ratio": (0.0, "no lr_scheduler: no warmup"),
        "training.scheduler": ("constant", "no lr_scheduler"),
    },
    "trl": {
        "data.eval_split": (0, "no dataset_test_split evaluation"),
        "training.warmup_ratio": (0.0, "warmup_steps: 0"),
        "training.max_length": (1024, "max_length: 1024"),
        "training.scheduler": ("linear", "lr_scheduler_type: linear"),
        "training.lr": (2.0e-5, "learning_rate: 2.0e-5"),
    },
}


def detect(config: dict) -> str:
    """Which tool a config is for, from its keys."""
    if any(isinstance(v, dict) and "_component_" in v for v in config.values()) or "checkpointer" in config:
        return "torchtune"
    if {"base_model", "micro_batch_size", "sequence_len", "datasets"} & set(config) or "adapter" in config:
        return "axolotl"
    if {"stage", "finetuning_type", "cutoff_len", "template", "lora_target", "dataset"} & set(config):
        return "llamafactory"
    if {"dataset_name", "use_peft", "model_name_or_path"} & set(config):
        return "trl"
    raise RecipeError(
        "cannot tell which tool this config is for from its keys",
        "name it: lorafit import CONFIG --from axolotl | llamafactory | torchtune | trl",
    )


def _flatten(config: dict, tool: str) -> list[tuple[str, Any]]:
    """(key, value) pairs in file order; torchtune's sections dotted (`optimizer.lr`), its dataset kept whole."""
    out = []
    for key, value in config.items():
        if tool == "torchtune" and key in TORCHTUNE_SECTIONS and isinstance(value, dict):
            out += [(f"{key}.{sub}", v) for sub, v in value.items()]
        else:
            out.append((key, value))
    return out


def convert(config: dict, tool: str, base: Path, out_dir: Path, dataset_info: Path | None = None) -> Imported:
    """The config's settings as lorafit's, with what could not be mapped."""
    imported = Imported(tool)
    data_keys = {
        "axolotl": ("datasets", "test_datasets"),
        "llamafactory": ("dataset", "eval_dataset"),
        "torchtune": ("dataset", "dataset_val"),
        "trl": ("dataset_name",),
    }[tool]
    trl_data: dict[str, Any] = {}
    for key, value in _flatten(config, tool):
        if (value is None and key not in peers.NULL_MATTERS) or value == "":
            continue  # a key left empty is the peer's default, and so lorafit's (or PEER_DEFAULTS)
        origin = f"{key}: {short(value)}"
        if key in data_keys:
            target = "data.eval" if key in ("test_datasets", "eval_dataset", "dataset_val") else "data.train"
            if tool == "axolotl":
                found = axolotl_datasets(value, imported, base, out_dir, key)
            elif tool == "llamafactory":
                info = dataset_info or base / config.get("dataset_dir", "data") / "dataset_info.json"
                found = llamafactory_datasets(value, imported, info, out_dir, key)
            elif tool == "torchtune":
                found = torchtune_dataset(value, imported, base, out_dir, key)
            else:
                found = [value]
            if found:
                imported.set(target, found if len(found) > 1 else found[0], origin)
            continue
        if tool == "trl" and key in ("dataset_config", "dataset_train_split", "dataset_test_split"):
            trl_data[key] = value
            continue
        if tool == "llamafactory" and key == "dataset_dir":
            continue  # read with `dataset`
        peer = peers.KEYS.get(key) or (
            peers.KEYS.get(key.split(".", 1)[0]) if tool == "torchtune" and "." in key else None
        )
        if peer is None:
            imported.skip(key, value, "not a setting lorafit knows; nothing is set for it")
            continue
        try:
            for path, v in peer.settings(value).items():
                imported.set(path, v, origin)
        except peers.Unmapped as exc:
            imported.skip(key, value, str(exc))
    if trl_data and "data.train" in imported.settings:
        _trl_splits(imported, trl_data, config)
    for path, (value, origin) in PEER_DEFAULTS[tool].items():
        if path == "data.eval_split" and "data.eval" in imported.settings:
            continue
        if path == "training.warmup_ratio" and "training.warmup_steps" in imported.settings:
            continue
        if path not in imported.settings:
            imported.set(path, value, f"{TOOLS[tool]}'s default: {origin}")
    if "data.eval" in imported.settings:
        imported.set("data.eval_split", None, "held-out data given")
    return imported


def _trl_splits(imported: Imported, trl: dict, config: dict) -> None:
    hub_id = imported.settings["data.train"]
    source = {"path": hub_id}
    if trl.get("dataset_config"):
        source["subset"] = trl["dataset_config"]
    if trl.get("dataset_train_split") and trl["dataset_train_split"] != "train":
        source["split"] = trl["dataset_train_split"]
    if len(source) > 1:
        imported.set("data.train", source, "; ".join(f"{k}: {v}" for k, v in trl.items() if k != "dataset_test_split"))
    if trl.get("dataset_test_split") and config.get("eval_strategy", "no") != "no":
        held = {"path": hub_id, "split": trl["dataset_test_split"]}
        if trl.get("dataset_config"):
            held["subset"] = trl["dataset_config"]
        imported.set("data.eval", held, f"dataset_test_split: {trl['dataset_test_split']}")


def _nested(settings: dict[str, Any]) -> dict:
    out: dict = {}
    for path, value in settings.items():
        section, name = path.split(".", 1)
        out.setdefault(section, {})[name] = value
    return out


def validated(imported: Imported) -> Recipe:
    """The recipe the settings make; a setting lorafit refuses is dropped and reported with the reason."""
    imported.settings.setdefault("data.train", "data/train.jsonl")
    if "data.train" not in imported.origins:
        imported.skip("(datasets)", "", "no dataset found in the config: data.train is a placeholder to replace")
    for _ in range(len(imported.settings) + 1):
        try:
            return Recipe.model_validate(_nested(imported.settings))
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = [str(p) for p in err["loc"] if isinstance(p, str)][:2]
            msg = err["msg"].removeprefix("Value error, ")
            path = ".".join(loc) if len(loc) == 2 else next(iter(re.findall(r"\b[a-z_]+\.[a-z_0-9]+\b", msg)), "")
            if path not in imported.settings or path == "data.train":
                raise RecipeError(f"the imported recipe does not validate: {msg}") from None
            origin = imported.origins.pop(path, path)
            value = imported.settings.pop(path)
            imported.skip(origin.split(":", 1)[0], value, f"lorafit refuses {path}: {msg}")
    raise RecipeError("the imported recipe does not validate")


def to_yaml(imported: Imported, recipe: Recipe, source: str, out: str) -> str:
    """The recipe as YAML: the fields the config set (or whose peer default differs), each with its origin."""
    lines = [
        f"# Imported from {source} ({TOOLS[imported.tool]}) by `lorafit import`; each value's origin is on its line.",
        f"# Run: lorafit validate {out}",
    ]
    by_section: dict[str, list[str]] = {}
    for path in imported.settings:
        by_section.setdefault(path.split(".", 1)[0], []).append(path)
    dumped = recipe.model_dump(mode="json")
    for section in SECTIONS:
        paths = by_section.get(section)
        if not paths:
            continue
        lines.append(f"{section}:")
        order = list(type(getattr(recipe, section)).model_fields)
        for path in sorted(paths, key=lambda p: order.index(p.split(".", 1)[1])):
            name = path.split(".", 1)[1]
            value = dumped[section][name]
            if path in ("data.train", "data.eval"):  # the sources as the config gave them, without every default
                spec = getattr(recipe.data, name)
                items = [
                    s if isinstance(s, str) else s.model_dump(mode="json", exclude_defaults=True)
                    for s in (spec if isinstance(spec, list) else [spec])
                ]
                value = items if isinstance(spec, list) else items[0]
            comment = f"  # {imported.origins.get(path, '')}".rstrip(" #")
            if isinstance(value, (dict, list)) and any(
                isinstance(v, (dict, list)) for v in (value.values() if isinstance(value, dict) else value)
            ):
                lines.append(f"  {name}:{comment}")
                block = yaml.safe_dump(value, sort_keys=False, default_flow_style=False, allow_unicode=True)
                lines += ["    " + line for line in block.rstrip("\n").splitlines()]
            else:
                scalar = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=1 << 16)
                scalar = scalar.strip().removesuffix("...").strip()
                lines.append(f"  {name}: {scalar}{comment}")
    return "\n".join(lines) + "\n"


def import_config(
    path: Path, tool: str | None, out: Path | None, dataset_info: Path | None = None
) -> tuple[str, Imported]:
    """(recipe YAML, the import's record) for a peer config file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        from lorafit.core.errors import MissingError

        raise MissingError(f"cannot read {path}: {exc.strerror or exc}", "check the path") from None
    config = parse_yaml_text(text, str(path))
    if not isinstance(config, dict):
        raise RecipeError(f"{path}: a config is a mapping of keys, got {type(config).__name__}")
    tool = tool or detect(config)
    if tool not in TOOLS:
        raise RecipeError(f"--from {tool!r}: not a tool lorafit imports", f"use one of: {', '.join(TOOLS)}")
    out_dir = (out.parent if out else Path.cwd()).resolve()
    imported = convert(config, tool, path.parent, out_dir, dataset_info)
    recipe = validated(imported)
    return to_yaml(imported, recipe, str(path), str(out or "recipe.yaml")), imported
