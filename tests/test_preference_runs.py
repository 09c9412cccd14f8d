"""Everything else keeps working on a preference run (DPO mostly, KTO where cheap): resume equals an uninterrupted
run and is refused on a changed recipe, signals, the NaN guard, `lorafit launch` on 2 CPU ranks, the sbatch
script, QLoRA, merge and export of a DPO run chained onto an SFT run, TensorBoard, the registry's lineage, and
`lorafit reproduce`. Each follows the SFT test of the same behaviour (test_faults, test_ddp, test_qlora,
test_artifacts, test_tracking, test_registry, test_reproduce)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from lorafit.cli import app

from conftest import pair_records, run_train, tiny_recipe_text, write_jsonl

runner = CliRunner()
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
WAIT_S = 600  # for a subprocess to import, load and reach a step: generous, for a loaded machine
PROBE = [[3, 10, 20, 30, 40, 50]]


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def flat(output: str) -> str:
    return " ".join(output.split())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def assert_same_adapter(a: Path, b: Path, atol: float = 1e-5) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert (wa[key] - wb[key]).abs().max().item() < atol, key


def recipe_file(root: Path, model_dir: Path, name: str, objective: str = "dpo", **sections) -> Path:
    """A fast preference recipe writing to root/name: no held-out split unless `data` says so."""
    data_file = root / "pairs.jsonl"
    if not data_file.exists():
        write_jsonl(data_file, pair_records(32))
    training = {"objective": objective, "max_steps": 10, "logging_steps": 1, "group_by_length": False}
    training.update(sections.pop("training", {}))
    data = {"eval_split": None, **sections.pop("data", {})}
    path = root / f"{name}.yaml"
    path.write_text(tiny_recipe_text(model_dir, data_file, root / name, training=training, data=data, **sections))
    return path


def wait_for_step(metrics: Path, step: int, deadline: float) -> bool:
    def logged() -> int:
        steps = []
        for line in metrics.read_text().splitlines() if metrics.exists() else []:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if "loss" in row:
                steps.append(row["step"])
        return max(steps, default=-1)

    while time.time() < deadline and logged() < step:
        time.sleep(0.02)
    return logged() >= step


def train_until_signalled(recipe: Path, run_dir: Path, signum: int, at_step: int = 2) -> subprocess.CompletedProcess:
    """`lorafit train RECIPE` in a subprocess, sent `signum` once it has logged `at_step`."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "lorafit.cli", "train", str(recipe)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    if not wait_for_step(run_dir / "metrics.jsonl", at_step, time.time() + WAIT_S):
        proc.kill()
        pytest.fail(f"no step {at_step} logged within {WAIT_S} s: {proc.communicate()[1][-3000:]}")
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=WAIT_S)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def assert_interrupted_with_a_checkpoint(run_dir: Path, steps: int) -> dict:
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "interrupted"
    stopped = record["interrupted_at_step"]
    assert 1 <= stopped < steps
    checkpoint = Path(record["checkpoint"])
    assert checkpoint.name == f"checkpoint-{stopped}" and (checkpoint / "lorafit-complete.json").is_file()
    assert (checkpoint / "adapter_model.safetensors").is_file() and (checkpoint / "optimizer.pt").is_file()
    assert not (run_dir / "adapter").exists()
    return record


# ---------------------------------------------------------------- the SFT parent and a DPO run chained onto it


@pytest.fixture(scope="module")
def chained(tmp_path_factory, tiny_model_dir, trained_run) -> Path:
    """A DPO run continuing the module's SFT run (adapter.init_from), with a held-out split, through the CLI."""
    root = tmp_path_factory.mktemp("chained")
    recipe = recipe_file(
        root,
        tiny_model_dir,
        "dpo",
        adapter={"init_from": str(trained_run)},
        data={"eval_split": 0.25},
        training={"max_steps": 4, "seed": 3},
        output={"tags": ["pref"]},
    )
    result = run_train(recipe)
    assert result.exit_code == 0, result.output
    return root / "dpo"


# ---------------------------------------------------------------- resume, signals, the NaN guard


def test_dpo_resume_after_sigterm_matches_uninterrupted_and_refuses_a_changed_recipe(tmp_path, tiny_model_dir):
    straight = recipe_file(tmp_path, tiny_model_dir, "straight")
    assert run_train(straight).exit_code == 0
    expected = losses(tmp_path / "straight")
    assert sorted(expected) == list(range(1, 11))

    recipe = recipe_file(tmp_path, tiny_model_dir, "resumed")
    run_dir = tmp_path / "resumed"
    stopped = train_until_signalled(recipe, run_dir, signal.SIGTERM)
    assert stopped.returncode == 6, stopped.stderr[-3000:]
    assert "run the same command again to resume" in stopped.stderr
    assert_interrupted_with_a_checkpoint(run_dir, 10)

    for change, message in (
        ("preference.beta=0.2", "preference.beta: 0.1 -> 0.2"),
        ("preference.loss_type=hinge", "preference.loss_type: 'sigmoid' -> 'hinge'"),
        ("training.objective=kto", "training.objective: 'dpo' -> 'kto'"),
    ):
        refused = run_train(recipe, change)
        assert refused.exit_code == 2, refused.output
        assert message in flat(refused.output) and "--force" in refused.output

    again = run_train(recipe)
    assert again.exit_code == 0, again.output
    assert "resuming from" in again.output
    got = losses(run_dir)
    assert sorted(got) == sorted(expected)  # each step once
    for step in expected:
        assert abs(got[step] - expected[step]) < 1e-4, (step, got[step], expected[step])
    assert_same_adapter(run_dir, tmp_path / "straight")
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "finished" and record["train"]["steps"] == 10


def test_sigint_stops_a_kto_run_with_a_complete_checkpoint(tmp_path, tiny_model_dir):
    from lorafit.runs import registry

    recipe = recipe_file(tmp_path, tiny_model_dir, "kto", objective="kto", training={"max_steps": 40})
    run_dir = tmp_path / "kto"
    stopped = train_until_signalled(recipe, run_dir, signal.SIGINT, at_step=1)
    assert stopped.returncode == 6, stopped.stderr[-3000:]
    assert "stopped by signal SIGINT" in stopped.stderr and "run the same command again to resume" in stopped.stderr
    assert_interrupted_with_a_checkpoint(run_dir, 40)
    row = registry.get(str(run_dir))
    assert (row["status"], row["exit_code"], row["objective"]) == ("interrupted", 6, "kto")


@pytest.mark.parametrize("objective", ["dpo", "kto"])
def test_nan_guard_stops_a_preference_run_without_a_checkpoint_after_it(tmp_path, tiny_model_dir, objective):
    training = {"lr": 1.0e30, "save_every": 1, "max_grad_norm": 0.0, "max_steps": 6}
    recipe = recipe_file(tmp_path, tiny_model_dir, "nan", objective=objective, training=training)
    result = run_train(recipe)
    assert result.exit_code == 5, result.output
    assert "NaN/inf at step" in result.output and "lower training.lr" in result.output
    record = json.loads((tmp_path / "nan" / "run.json").read_text())
    assert record["status"] == "diverged" and record["divergence"]["kind"] == "nan"
    bad = record["failed_step"]
    saved = [int(p.name.split("-")[1]) for p in (tmp_path / "nan" / "checkpoints").glob("checkpoint-*")]
    assert all(step < bad for step in saved)
    assert not (tmp_path / "nan" / "adapter").exists()


# ---------------------------------------------------------------- launch, SLURM


def test_launch_two_cpu_ranks_match_one_process_on_dpo(tmp_path, tiny_model_dir):
    """As test_ddp: 2 ranks x micro-batch 2 see the examples 1 process x micro-batch 4 sees, so the DPO losses
    and the adapter agree to float32 round-off; a rank training alone would drift off at the first step."""
    recipe = recipe_file(tmp_path, tiny_model_dir, "unused", training={"max_steps": 6, "batch_size": 2})
    single = tmp_path / "single"
    result = run_train(recipe, f"output.dir={single}", "training.batch_size=4")
    assert result.exit_code == 0, result.output
    out = tmp_path / "launched"
    proc = subprocess.run(
        [sys.executable, "-m", "lorafit.cli", "launch", str(recipe), "--gpus", "2", "--set", f"output.dir={out}"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=2 * WAIT_S,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got, want = losses(out), losses(single)
    assert sorted(got) == sorted(want) == list(range(1, 7)), "rank 0 alone writes metrics.jsonl"
    for step in want:
        assert abs(got[step] - want[step]) < 1e-5, (step, got[step], want[step])
    # Adam turns the gradients' all-reduce round-off into ~1e-5 of weight (seen: 1.02e-5 after 6 steps); a rank
    # training alone is off by a whole step of lr 5e-3
    assert_same_adapter(out, single, atol=1e-4)
    record = json.loads((out / "run.json").read_text())
    assert record["world_size"] == 2 and record["parallelism"] == "MULTI_CPU" and record["status"] == "finished"


def test_slurm_script_for_a_chained_dpo_recipe(tmp_path, tiny_model_dir, trained_run):
    recipe = recipe_file(tmp_path, tiny_model_dir, "dpo", adapter={"init_from": str(trained_run)})
    out = tmp_path / "job.sbatch"
    result = runner.invoke(
        app,
        [
            "slurm",
            str(recipe),
            "--nodes",
            "2",
            "--gpus-per-node",
            "4",
            "--set",
            "preference.beta=0.2",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert subprocess.run(["bash", "-n", str(out)], capture_output=True).returncode == 0
    assert f"RECIPE={recipe.resolve()}" in text and "SET_ARGS=(--set preference.beta=0.2)" in text
    assert "#SBATCH --signal=USR1@120" in text and 'scontrol requeue "$SLURM_JOB_ID"' in text
    bad = runner.invoke(
        app, ["slurm", str(recipe), "--nodes", "1", "--gpus-per-node", "1", "--set", "preference.bta=1"]
    )
    assert bad.exit_code == 2 and "bta" in bad.output  # the recipe is checked before a script is written


# ---------------------------------------------------------------- QLoRA


def test_qlora_dpo_trains_on_a_4bit_base(tmp_path, tiny_model_dir):
    bnb = pytest.importorskip("bitsandbytes")
    from rich.console import Console

    from lorafit.recipe import load_recipe
    from lorafit.train import pipeline as train

    recipe = recipe_file(
        tmp_path,
        tiny_model_dir,
        "qlora",
        quantization={"load_in_4bit": True},
        training={"max_steps": 8, "optimizer": "paged_adamw_8bit"},
    )
    result = train.run(load_recipe(recipe), console=Console(quiet=True), quiet=True)
    seen = list(losses(tmp_path / "qlora").values())
    assert len(seen) == 8 and all(math.isfinite(x) for x in seen)
    assert seen[0] == pytest.approx(math.log(2), abs=1e-3)  # the policy starts as its reference
    assert sum(seen[-3:]) / 3 < seen[0] - 0.01, seen  # and the loss moves
    model = result.model
    assert set(model.peft_config) == {"default", "ref"}
    base = model.get_base_model().model.layers[0].self_attn.q_proj.get_base_layer()
    assert isinstance(base, bnb.nn.Linear4bit) and base.weight.quant_state.quant_type == "nf4"
    assert all(".default." in n for n, p in model.named_parameters() if p.requires_grad)
    assert result.record["status"] in ("finished", "worse_than_base")
    saved = weights(tmp_path / "qlora")
    assert saved and all("lora_" in k for k in saved)


# ---------------------------------------------------------------- merge, export


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor(PROBE)).logits


def _merged_logits(folder: Path) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    return _logits(AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval())


def test_merge_and_export_of_a_chained_dpo_run(chained, trained_run, tiny_model_dir, tmp_path):
    """The final adapter of a run chained with init_from holds the whole update (SFT, then DPO): merged alone
    into the base it gives the adapter's logits, not the SFT parent's."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    shutil.copytree(chained, run)
    result = runner.invoke(app, ["merge", str(run)])
    assert result.exit_code == 0, result.output
    report = json.loads((run / "run.json").read_text())["merge"]
    assert report["max_logit_diff_vs_adapter"] < 1e-3 < report["max_logit_change_vs_base"]

    base = lambda: AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()  # noqa: E731
    adapter = _logits(PeftModel.from_pretrained(base(), str(run / "adapter")).eval())
    parent = _logits(PeftModel.from_pretrained(base(), str(trained_run / "adapter")).eval())
    merged = _merged_logits(run / "merged")
    torch.testing.assert_close(merged, adapter, atol=1e-4, rtol=1e-4)
    assert (merged - parent).abs().max() > 1e-4, "DPO moved the model away from its SFT parent"

    peft_out = tmp_path / "peft"
    exported = runner.invoke(app, ["export", str(run), "--format", "peft", "--out", str(peft_out)])
    assert exported.exit_code == 0, exported.output
    assert not (peft_out / "ref").exists(), "TRL's reference adapter is not exported"
    config = json.loads((peft_out / "adapter_config.json").read_text())
    reloaded = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"], dtype=torch.float32), str(peft_out)
    ).eval()
    torch.testing.assert_close(_logits(reloaded), adapter, atol=1e-5, rtol=1e-5)

    merged_out = tmp_path / "merged-export"
    exported = runner.invoke(app, ["export", str(run), "--format", "merged", "--out", str(merged_out)])
    assert exported.exit_code == 0, exported.output
    torch.testing.assert_close(_merged_logits(merged_out), adapter, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- tracking, registry, reproduce


def test_tensorboard_holds_the_dpo_metrics(chained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lorafit.train import tracking

    acc = EventAccumulator(str(chained / tracking.TENSORBOARD_DIR))
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    for name in ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "logps/chosen"):
        assert f"train/{name}" in scalars, (name, sorted(scalars))
    assert {"eval/loss", "eval/rewards/accuracies"} <= scalars, sorted(scalars)
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4]
    assert all(0 <= e.value <= 1 for e in acc.Scalars("train/rewards/accuracies"))
    rows = [json.loads(line) for line in (chained / "metrics.jsonl").read_text().splitlines()]
    assert any("rewards/margins" in row for row in rows)  # and metrics.jsonl keeps them too


def test_registry_records_the_objective_and_lineage(chained, trained_run):
    from lorafit.runs import registry

    parent_sha = sha256(trained_run / "adapter" / "adapter_model.safetensors")
    row = registry.get(str(chained))
    assert row["status"] in ("finished", "worse_than_base") and row["tags"] == ["pref"]
    assert (row["objective"], row["parent"], row["parent_adapter_sha256"]) == ("dpo", str(trained_run), parent_sha)
    assert row["reference"] == "init"
    assert registry.get(str(trained_run))["objective"] == "sft"
    listed_dpo = registry.list_runs(objective="dpo", tag="pref")  # this run, and copies other tests made of it
    assert row["id"] in [r["id"] for r in listed_dpo] and {r["objective"] for r in listed_dpo} == {"dpo"}
    assert registry.list_runs(objective="kto", tag="pref") == []

    env = {"COLUMNS": "250"}
    listed = runner.invoke(app, ["runs", "list", "--tag", "pref"], env=env)
    assert listed.exit_code == 0, listed.output
    line = next(line for line in listed.output.splitlines() if f" {chained.name} " in line)
    assert "dpo" in line.split() and trained_run.name in line, listed.output
    shown = runner.invoke(app, ["runs", "show", str(chained)], env=env)
    assert shown.exit_code == 0, shown.output
    text = flat(shown.output.replace("│", " "))
    assert "objective dpo" in text and f"parent {trained_run}" in text and parent_sha[:16] in text
    assert "reference init: base + the parent's adapter" in text

    # an imported copy (another machine's run directory) gets the same lineage from its run.json and recipe.yaml
    row2 = registry.sync_from_dir(chained)
    assert (row2["objective"], row2["parent"], row2["parent_adapter_sha256"]) == ("dpo", str(trained_run), parent_sha)


def test_reproduce_a_chained_dpo_run(chained, trained_run, tmp_path):
    again = tmp_path / "again"
    result = runner.invoke(app, ["reproduce", str(chained), "--out", str(again)])
    assert result.exit_code == 0, result.output
    assert "identical" in result.output, result.output
    warned = [line for line in result.output.splitlines() if line.startswith("warning")]
    assert all("length bias" in line for line in warned), warned  # the data's own warning; no drift
    assert weights(again).keys() == weights(chained).keys()
    assert sha256(again / "adapter" / "adapter_model.safetensors") == sha256(
        chained / "adapter" / "adapter_model.safetensors"
    )
    original, record = (json.loads((d / "run.json").read_text()) for d in (chained, again))
    assert record["lineage"] == original["lineage"] and record["lineage"]["parent"] == str(trained_run)
