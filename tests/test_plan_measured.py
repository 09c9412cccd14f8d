"""lorafit plan against measured peaks: the estimate must be within 15% of what a run really used.

Each run trains in a fresh process (scripts/plan_check.py): peak RSS is a whole-process figure."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from plan_check import measure  # noqa: E402


def test_plan_matches_a_tiny_run(tiny_recipe):
    predicted, measured = measure(tiny_recipe, [])
    assert predicted == pytest.approx(measured, rel=0.25)  # the tiny model is mostly process overhead


@pytest.mark.slow
def test_plan_matches_the_embedded_model():
    """The quickstart's own micro-batch; scripts/plan_check.py measures 2, 4 and 8 (README's table), a minute
    and a half each, which CI cannot afford."""
    # length grouping puts the longest batch first, so the first steps reach the run's peak
    predicted, measured = measure(ROOT / "recipes" / "quickstart.yaml", ["training.batch_size=4"])
    assert predicted == pytest.approx(measured, rel=0.15)


@pytest.mark.slow
def test_plan_matches_the_embedded_model_uncompiled():
    predicted, measured = measure(
        ROOT / "recipes" / "quickstart.yaml", ["training.batch_size=4", "training.compile=off"]
    )
    assert predicted == pytest.approx(measured, rel=0.15)


def test_plan_matches_a_tiny_dpo_run(tiny_dpo_recipe):
    """DPO's accounting (two rows per pair, TRL's fused log-prob head, the reference on the same weights), on the
    default length-grouped batches, whose first one holds the longest pair."""
    predicted, measured = measure(tiny_dpo_recipe, [])
    assert predicted == pytest.approx(measured, rel=0.25)


@pytest.mark.slow
def test_plan_matches_the_embedded_model_dpo():
    """The preference quickstart's micro-batch from a fresh adapter; scripts/plan_check.py --objective dpo measures
    1, 2 and 4 (README's table)."""
    from bench import DPO_BENCH_OVERRIDES

    predicted, measured = measure(ROOT / "recipes" / "quickstart-dpo.yaml", [*DPO_BENCH_OVERRIDES])
    assert predicted == pytest.approx(measured, rel=0.15)
