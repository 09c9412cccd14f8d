"""Side-by-side throughput and memory: a plain TRL script vs `lorafit train`, same workload, one invocation.

Both sides get the recipe's model, data, LoRA r/alpha/dropout/targets, learning rate, micro-batch and
max length (and with --objective dpo, beta); the TRL side keeps TRL's other defaults (what a user writes
by hand, in fp32 since this CPU has no fast bf16). Runs alternate A/B for --repeats rounds; each side
reports non-padding tokens/s over steps 2..N (step 1 pays warm-up), time to first step, peak memory (RSS
on CPU, max allocated on CUDA) and final loss. Prints a table, then one JSON line with the medians and ratios.

--objective dpo benchmarks DPO (TRL's DPOTrainer vs `lorafit train` with training.objective dpo) on the
preference quickstart's data. Both sides start from a fresh LoRA adapter (the recipe's adapter.init_from is
dropped, and loraplus, which only changes B's learning rate, becomes lora), so both references are the base
model scored with the adapter disabled. Tokens are the chosen and the rejected rows of every pair, counted
from the attention mask of what reaches the model on both sides.

    python scripts/bench.py                                  # quickstart recipe, 12 steps, 2 rounds
    python scripts/bench.py --recipe my.yaml --steps 20 --repeats 3
    python scripts/bench.py --objective dpo --steps 16       # recipes/quickstart-dpo.yaml
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lorafit.recipe import load_recipe  # noqa: E402
from lorafit.recipe.sections import AdapterSection  # noqa: E402

# What --objective dpo changes on both sides: a fresh adapter (no SFT parent needed), plain LoRA of the same shape,
# and TRL's default loss alone (the TRL script runs sigmoid DPO; the recipe's RPO term is one more sum on each step).
DPO_BENCH_OVERRIDES = [
    "adapter.init_from=null",
    "adapter.init_sha256=null",
    "adapter.method=lora",
    f"adapter.loraplus_lr_ratio={AdapterSection.model_fields['loraplus_lr_ratio'].default}",  # plain LoRA has no B/A ratio: the default reads as unset
    "preference.rpo_alpha=0",
]


def run_trl(recipe, model_path: str, data: str, steps: int) -> dict:
    a, t = recipe.adapter, recipe.training
    targets = a.target_modules if isinstance(a.target_modules, str) else ",".join(a.target_modules)
    objective = ["--objective", t.objective]
    if t.objective == "dpo":
        objective += ["--beta", str(recipe.preference.beta)]
    elif t.objective != "sft":
        raise SystemExit(f"bench.py compares sft and dpo, not {t.objective}")
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "trl_baseline.py"),
        *objective,
        "--model",
        model_path,
        "--data",
        data,
        "--lora-r",
        str(a.r),
        "--lora-alpha",
        str(int(a.alpha)),
        "--lora-dropout",
        str(a.dropout),
        "--target-modules",
        targets,
        "--lr",
        str(t.lr),
        "--batch-size",
        str(t.batch_size),
        "--max-length",
        str(t.max_length),
        "--max-steps",
        str(steps),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"TRL baseline failed:\n{out.stderr[-2000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "tok_s": r["tokens_per_s"],
        "peak_mb": r["peak_rss_mb"],
        "first_step_s": r["time_to_first_step_s"],
        "loss": r["final_loss"],
        "tokens": r["tokens_total"],
    }


def train_record(recipe_path: Path, steps: int, overrides: list[str]) -> dict:
    """run.json of `lorafit train` in a fresh process (peak RSS is a whole-process figure), without held-out
    evaluation (not training throughput, and the TRL script skips it) or trackers (the TRL script logs to none)."""
    with tempfile.TemporaryDirectory(prefix="lorafit-bench-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "lorafit.cli",
            "--quiet",
            "train",
            str(recipe_path),
            "--set",
            f"training.max_steps={steps}",
            "--set",
            f"output.dir={tmp}/run",
            "--set",
            "data.eval=null",
            "--set",
            "data.eval_split=null",
            "--set",
            "output.report_to=[none]",
        ]
        for item in overrides:
            cmd += ["--set", item]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if out.returncode != 0:
            raise SystemExit(f"lorafit failed:\n{out.stderr[-2000:]}")
        return json.loads((Path(tmp) / "run" / "run.json").read_text())


def run_lorafit(recipe_path: Path, steps: int, overrides: list[str]) -> dict:
    t = train_record(recipe_path, steps, overrides)["train"]
    return {
        "tok_s": t["tokens_per_s"],
        "peak_mb": t["peak_memory_mb"],
        "first_step_s": t["time_to_first_step_s"],
        "loss": t["last_logged_loss"],
        "tokens": t["tokens"],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--objective", choices=("sft", "dpo"), default="sft", help="sft, or dpo (TRL's DPOTrainer)")
    p.add_argument("--recipe", type=Path, help="default: recipes/quickstart.yaml (dpo: recipes/quickstart-dpo.yaml)")
    p.add_argument("--steps", type=int, default=12, help="optimizer steps per run (step 1 is excluded from tokens/s)")
    p.add_argument("--repeats", type=int, default=2, help="A/B rounds; medians are reported")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override for both sides")
    args = p.parse_args()
    if args.recipe is None:
        args.recipe = ROOT / "recipes" / ("quickstart-dpo.yaml" if args.objective == "dpo" else "quickstart.yaml")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lorafit import models

    trains = load_recipe(args.recipe, args.overrides).training.objective  # before the DPO overrides, which need dpo
    if trains != args.objective:
        raise SystemExit(f"{args.recipe} trains {trains}; pass --objective {trains}")
    if args.objective == "dpo":
        args.overrides = [*DPO_BENCH_OVERRIDES, *args.overrides]
    recipe = load_recipe(args.recipe, args.overrides)
    model_path = models.resolve_model_path(recipe)  # converts the embedded model once, outside the timings
    train = recipe.data.train
    data = train if isinstance(train, str) else (train[0] if isinstance(train[0], str) else train[0].path)
    results: dict[str, list[dict]] = {"trl": [], "lorafit": []}
    for round_ in range(args.repeats):
        results["trl"].append(run_trl(recipe, model_path, str(data), args.steps))
        results["lorafit"].append(run_lorafit(args.recipe, args.steps, args.overrides))
        print(
            f"round {round_ + 1}/{args.repeats}: trl {results['trl'][-1]['tok_s']} tok/s, "
            f"lorafit {results['lorafit'][-1]['tok_s']} tok/s",
            file=sys.stderr,
        )

    med = {
        side: {k: statistics.median(r[k] for r in runs if r[k] is not None) for k in runs[0]}
        for side, runs in results.items()
    }
    summary = {
        "lorafit_tok_s": round(med["lorafit"]["tok_s"], 2),
        "trl_tok_s": round(med["trl"]["tok_s"], 2),
        "speedup": round(med["lorafit"]["tok_s"] / med["trl"]["tok_s"], 3),
        "lorafit_peak_mb": round(med["lorafit"]["peak_mb"], 1),
        "trl_peak_mb": round(med["trl"]["peak_mb"], 1),
        "memory_ratio": round(med["lorafit"]["peak_mb"] / med["trl"]["peak_mb"], 3),
        "lorafit_first_step_s": round(med["lorafit"]["first_step_s"], 2),
        "trl_first_step_s": round(med["trl"]["first_step_s"], 2),
        "lorafit_loss": round(med["lorafit"]["loss"], 4),
        "trl_loss": round(med["trl"]["loss"], 4),
        "lorafit_tokens": int(med["lorafit"]["tokens"]),
        "trl_tokens": int(med["trl"]["tokens"]),
        "objective": args.objective,
        "steps": args.steps,
        "repeats": args.repeats,
        "recipe": str(args.recipe),
    }
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{args.recipe.name} ({args.objective}): {args.steps} steps x {args.repeats} rounds (medians)")
    for col in ("", "tokens/s", "peak MB", "first step s", "final loss", "tokens"):
        table.add_column(col, justify="right")
    for side in ("trl", "lorafit"):
        m = med[side]
        table.add_row(
            side,
            f"{m['tok_s']:.1f}",
            f"{m['peak_mb']:.0f}",
            f"{m['first_step_s']:.1f}",
            f"{m['loss']:.3f}",
            f"{m['tokens']:.0f}",
        )
    table.add_row("ratio", f"{summary['speedup']:.2f}x", f"{summary['memory_ratio']:.2f}x", "", "", "")
    Console(stderr=True).print(table)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
