"""`lorafit plan` against measured peaks: trains a few steps per setting in a fresh process and prints
predicted vs measured peak memory (the figures README.md quotes and plan.py's constants are fitted to).

    python scripts/plan_check.py                                   # quickstart, micro-batch 2/4/8
    python scripts/plan_check.py --batch 4 --set training.compile=off
    python scripts/plan_check.py --objective dpo                   # quickstart-dpo, micro-batch 1/2/4 (pairs)

--objective dpo plans and runs the preference quickstart from a fresh adapter (as scripts/bench.py does):
each micro-batch of pairs is twice its rows, chosen and rejected, scored through TRL's fused log-prob head.
Length grouping puts the longest pair in the first batch, so the first steps reach the run's peak.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench import DPO_BENCH_OVERRIDES, train_record  # noqa: E402

from lorafit import models  # noqa: E402
from lorafit.models import recipe_plan  # noqa: E402
from lorafit.recipe import load_recipe  # noqa: E402


def measure(recipe_path: Path, overrides: list[str], steps: int = 3) -> tuple[float, float]:
    """(predicted MiB, measured peak RSS MiB) for one run, planned with what the run's data and set-up turned out to be."""
    record = train_record(recipe_path, steps, overrides)
    ran_eagerly = record["train"]["compiled_layers"] == 0  # training.compile: on without a C++ compiler runs eagerly
    recipe = load_recipe(
        recipe_path,
        [*overrides, "data.eval=null", "data.eval_split=null"] + (["training.compile=off"] if ran_eagerly else []),
    )
    tokens = record["data"]["tokens"]
    predicted = recipe_plan.for_recipe(
        recipe,
        models.model_config(recipe),
        "cpu",
        seq_len=tokens["max"],
        trained_fraction=record["data"]["most_trained_tokens"] / min(tokens["max"], recipe.training.max_length),
    ).total
    return predicted / 2**20, record["train"]["peak_memory_mb"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--objective", choices=("sft", "dpo"), default="sft")
    p.add_argument("--recipe", type=Path, help="default: recipes/quickstart.yaml (dpo: recipes/quickstart-dpo.yaml)")
    p.add_argument("--batch", type=int, action="append", help="micro-batch sizes (default 2, 4, 8; dpo: 1, 2, 4)")
    p.add_argument("--steps", type=int, default=3, help="steps per run; length grouping puts the longest batch first")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override")
    args = p.parse_args()
    dpo = args.objective == "dpo"
    if args.recipe is None:
        args.recipe = ROOT / "recipes" / ("quickstart-dpo.yaml" if dpo else "quickstart.yaml")
    if dpo:
        args.overrides = [*DPO_BENCH_OVERRIDES, *args.overrides]
    rows = []
    for batch in args.batch or ([1, 2, 4] if dpo else [2, 4, 8]):
        predicted, measured = measure(args.recipe, [*args.overrides, f"training.batch_size={batch}"], args.steps)
        rows.append(
            {
                "batch_size": batch,
                "predicted_mb": round(predicted),
                "measured_mb": round(measured),
                "error": round(predicted / measured - 1, 3),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
