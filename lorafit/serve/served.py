"""Which runs `lorafit serve` serves: run directories, registry names or ids, and `--tag`; each becomes a model named
after its run, and all of them must share one base (one base in memory, an adapter per run)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from lorafit.core.errors import MissingError, RecipeError

if TYPE_CHECKING:
    from lorafit.recipe import Recipe


@dataclass(frozen=True)
class ServedRun:
    name: str  # the model name clients ask for: the run directory's name, as the registry names it
    run_dir: Path
    adapter_dir: Path
    recipe: Recipe
    config: dict = field(repr=False)  # adapter_config.json: what a serving engine sees of the adapter

    @property
    def base(self) -> tuple[str, str | None]:
        """What the base is, comparable across runs: the model (a local directory resolved) and its revision."""
        name = self.recipe.model.name
        if not name.startswith("embedded:") and Path(name).expanduser().is_dir():
            name = str(Path(name).expanduser().resolve())
        return name, self.recipe.model.revision

    @property
    def rank(self) -> int:
        """The largest LoRA rank in the adapter (rank_pattern included): what vLLM's --max-lora-rank must cover."""
        ranks = [self.config.get("r") or 0, *(self.config.get("rank_pattern") or {}).values()]
        return max(int(r) for r in ranks)


def resolve(refs: list[str], tags: list[str]) -> list[ServedRun]:
    """The runs named by directory, registry name or id, and every registered run carrying one of `tags`, once each
    and in that order; RecipeError when two would be served under one name or the runs do not share a base."""
    from lorafit.runs import registry

    dirs: list[Path] = []
    for ref in refs:
        path = Path(ref).expanduser()
        dirs.append(path if path.is_dir() else Path(registry.get(ref)["run_dir"]))
    for tag in tags:
        rows = registry.list_runs(tag=tag)
        if not rows:
            raise MissingError(f"--tag {tag}: no run in the registry carries this tag", "see `lorafit runs list`")
        dirs += [Path(row["run_dir"]) for row in reversed(rows)]  # oldest first, as they were trained
    if not dirs:
        raise RecipeError("nothing to serve", "give run directories or names (lorafit serve runs/a runs/b) or --tag")
    runs: list[ServedRun] = []
    for run_dir in dict.fromkeys(d.resolve() for d in dirs):
        run = load(run_dir)
        twin = next((r for r in runs if r.name == run.name), None)
        if twin is not None:
            raise RecipeError(
                f"two runs would be served as {run.name!r}: {twin.run_dir} and {run.run_dir}",
                "serve runs whose directories have different names (rename or copy one)",
            )
        runs.append(run)
    check_one_base(runs)
    return runs


def load(run_dir: Path) -> ServedRun:
    from lorafit import runs

    recipe, _ = runs.load_run(run_dir)
    adapter_dir = runs.adapter_path(run_dir)
    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    # a copied adapter folder is named by its folder, or by its parent's when it is still called `adapter`
    name = run_dir.parent.name if adapter_dir == run_dir and run_dir.name == runs.ADAPTER else run_dir.name
    return ServedRun(name, Path(run_dir), adapter_dir, recipe, config)


def check_one_base(runs: list[ServedRun]) -> None:
    """One base in memory serves every adapter: a run trained on another model (or revision) is named, with the
    base the others share."""
    first = runs[0]
    for run in runs[1:]:
        if run.base != first.base:
            shown = lambda r: r.base[0] + (f" (revision {r.base[1]})" if r.base[1] else "")  # noqa: E731
            raise RecipeError(
                f"{run.name} was trained on {shown(run)}, not on {shown(first)} like {first.name}: "
                "one server serves the adapters of one base",
                f"serve {run.name} on a server of its own (another --port)",
            )


def base_name(run: ServedRun) -> str:
    """The name clients ask the base by: the embedded model's or hub id as the recipe gives it, a local
    directory's name."""
    name = run.recipe.model.name
    if name.startswith("embedded:") or not Path(name).expanduser().is_dir():
        return name
    return Path(name).expanduser().resolve().name


def adapter_tokenizer(run: ServedRun):
    """The tokenizer saved with the adapter: its chat template and specials are what training saw."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(run.adapter_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
