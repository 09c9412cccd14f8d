"""scripts/bench.py end to end in a tiny configuration: the report exists and is sane (no speed assertion)."""

import json
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
