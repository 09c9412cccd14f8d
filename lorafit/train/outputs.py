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
    lines += [
        "",
        "```python",
        "from peft import AutoPeftModelForCausalLM",
        'model = AutoPeftModelForCausalLM.from_pretrained("PATH/TO/adapter")',
        "```",
        "",
    ]
    return "\n".join(lines)


def save_adapter(
    model, tokenizer, recipe: Recipe, run_dir: Path, base_model: str, metrics: dict, state_dict=None
) -> Path:
    """state_dict: the full weights gathered from FSDP / DeepSpeed ZeRO shards (None: read them from `model`)."""
    from lorafit.models import adapters

    target = run_dir / runs.ADAPTER
    with runs.atomic_dir(target, owned=True) as tmp:
        adapters.save(model, tmp, state_dict)  # pissa/olora/corda: converted to a LoRA for the untouched base
        tokenizer.save_pretrained(tmp)
        (tmp / "README.md").write_text(model_card(recipe, base_model, metrics))
    return target
