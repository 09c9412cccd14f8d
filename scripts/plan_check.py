"""`lorafit plan` against measured peaks: trains a few steps per setting in a fresh process and prints
predicted vs measured peak memory (the figures README.md quotes and plan.py's constants are fitted to).

    python scripts/plan_check.py                                   # quickstart, micro-batch 2/4/8
    python scripts/plan_check.py --batch 4 --set training.compile=off
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lorafit import plan  # noqa: E402
from lorafit.recipe import load_recipe  # noqa: E402


def measure(recipe_path: Path, overrides: list[str], steps: int) -> tuple[float, float]:
    """(predicted MiB, measured peak RSS MiB) for one run; held-out eval off, as in the peak it predicts."""
    overrides = [*overrides, f"training.max_steps={steps}", "data.eval=null", "data.eval_split=null", "output.report_to=[none]"]
    with tempfile.TemporaryDirectory(prefix="lorafit-plan-") as tmp:
        args = [sys.executable, "-m", "lorafit.cli", "--quiet", "train", str(recipe_path), "--set", f"output.dir={tmp}/run"]
        for item in overrides:
            args += ["--set", item]
        out = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
        if out.returncode != 0:
            raise SystemExit(out.stderr[-2000:])
        record = json.loads((Path(tmp) / "run" / "run.json").read_text())
    recipe = load_recipe(recipe_path, overrides)
    tokens = record["data"]["tokens"]
    predicted = plan.for_recipe(recipe, plan.model_config(recipe), "cpu", seq_len=tokens["max"],
                                trained_fraction=record["data"]["most_trained_tokens"] / min(tokens["max"], recipe.training.max_length)).total
    return predicted / 2**20, record["train"]["peak_memory_mb"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "quickstart.yaml")
    p.add_argument("--batch", type=int, action="append", help="micro-batch sizes (default 2, 4, 8)")
    p.add_argument("--steps", type=int, default=3, help="steps per run; length grouping puts the longest batch first")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override")
    args = p.parse_args()
    rows = []
    for batch in args.batch or [2, 4, 8]:
        predicted, measured = measure(args.recipe, [*args.overrides, f"training.batch_size={batch}"], args.steps)
        rows.append({"batch_size": batch, "predicted_mb": round(predicted), "measured_mb": round(measured),
                     "error": round(predicted / measured - 1, 3)})
        print(json.dumps(rows[-1]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
