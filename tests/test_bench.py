"""scripts/bench.py end to end in a tiny configuration: the report exists and is sane (no speed assertion)."""

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_reports_both_sides(tiny_recipe):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "bench.py"),
            "--recipe",
            str(tiny_recipe),
            "--steps",
            "3",
            "--repeats",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in (
        "lorafit_tok_s",
        "trl_tok_s",
        "speedup",
        "lorafit_peak_mb",
        "trl_peak_mb",
        "memory_ratio",
        "lorafit_first_step_s",
        "trl_first_step_s",
        "lorafit_loss",
        "trl_loss",
    ):
        assert summary[key] > 0, key
    assert summary["steps"] == 3 and summary["repeats"] == 1
    assert "tokens/s" in proc.stderr


def test_bench_dpo_runs_trl_and_lorafit_on_the_same_pairs(tiny_dpo_recipe):
    """--objective dpo: TRL's DPOTrainer and lorafit side by side. With random batches on both sides (length
    grouping off) they train on the same pairs in the same order, so the chosen + rejected tokens each side
    counts must be equal: the counting is the same."""
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "bench.py"),
            "--objective",
            "dpo",
            "--recipe",
            str(tiny_dpo_recipe),
            "--steps",
            "3",
            "--repeats",
            "1",
            "--set",
            "training.group_by_length=false",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["objective"] == "dpo" and summary["steps"] == 3
    for key in ("lorafit_tok_s", "trl_tok_s", "lorafit_peak_mb", "trl_peak_mb", "lorafit_tokens"):
        assert summary[key] > 0, key
    assert summary["lorafit_tokens"] == summary["trl_tokens"]
    # a fresh adapter starts equal to its reference: both sides' first DPO loss is ln 2, and they stay close
    assert abs(summary["lorafit_loss"] - summary["trl_loss"]) < 0.2
    table = proc.stderr[proc.stderr.index("tokens/s") :]
    assert all(re.search(rf"│\s*{side}\s*│", table) for side in ("trl", "lorafit", "ratio")), table


def test_bench_refuses_an_objective_the_recipe_does_not_train(tiny_recipe):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--objective", "dpo", "--recipe", str(tiny_recipe)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and "--objective sft" in proc.stderr
