"""Training the tiny model end to end: through the CLI, and in process to compare weights."""

import json
from pathlib import Path

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file

from lorafit.core.device import cxx_compiler
from lorafit.recipe import load_recipe

from conftest import run_train


def losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def test_train_cli_writes_the_run_directory(tiny_recipe, tmp_path):
    result = run_train(tiny_recipe)
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "run"
    for name in (
        "recipe.yaml",
        "run.json",
        "metrics.jsonl",
        "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json",
        "adapter/tokenizer.json",
        "adapter/README.md",
    ):
        assert (run_dir / name).is_file(), name
    assert not list((run_dir / "adapter").glob("*.bin")), "safetensors only"
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "finished"
    train = record["train"]
    assert train["steps"] == 12
    assert train["tokens"] > 0 and train["tokens_per_s"] > 0 and train["peak_memory_mb"] > 0
    assert record["data"]["train_rows"] == 36 and record["data"]["eval_rows"] == 12
    assert len(next(iter(record["data"]["files"].values()))) == 64  # sha256
    assert record["versions"]["torch"] and record["device"]["dtype"] == "float32"
    # the loss falls, on the training batches and on the held-out split
    seen = losses(run_dir)
    assert sum(seen[-3:]) / 3 < sum(seen[:3]) / 3
    assert record["eval"]["loss_after"] < record["eval"]["loss_before"]
    # the resolved recipe is complete and loads back as a recipe
    resolved = (run_dir / "recipe.yaml").read_text()
    assert "warmup_ratio" in resolved and "gradient_checkpointing" in resolved
    card = (run_dir / "adapter" / "README.md").read_text()
    assert card.startswith("---\nbase_model:") and "library_name: peft" in card


@pytest.mark.parametrize("method", ["lora", "dora", "ia3", "prompt_tuning"])
def test_held_out_loss_before_is_the_same_measured_first_or_last(tiny_recipe, tmp_path, method):
    """For an adapter that starts as a no-op, 'before' is measured after training on the base with the adapter
    off (the first step comes sooner) and equals the loss measured before step 1; prompt tuning's virtual tokens
    change the untrained model, so it is always measured first."""
    rows = {}
    for at_end in (True, False):
        out = tmp_path / f"{method}-{at_end}"
        result = run_train(
            tiny_recipe,
            f"output.dir={out}",
            f"adapter.method={method}",
            "training.max_steps=4",
            f"training.eval_before_at_end={at_end}",
        )
        assert result.exit_code == 0, result.output
        logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        rows[at_end] = json.loads((out / "run.json").read_text())["eval"]["loss_before"]
        step0 = [i for i, row in enumerate(logged) if row["step"] == 0]
        assert len(step0) == 1 and logged[step0[0]]["eval_loss"] == pytest.approx(rows[at_end], abs=1e-4)
        assert step0[0] == (len(logged) - 1 if at_end and method != "prompt_tuning" else 0)  # appended last, or first
    assert rows[True] == pytest.approx(rows[False], abs=2e-4)


def test_refuses_to_overwrite_a_finished_run(tiny_recipe, tmp_path):
    assert run_train(tiny_recipe).exit_code == 0
    again = run_train(tiny_recipe)
    assert again.exit_code == 2
    assert "never overwrites" in again.output


def test_only_adapter_weights_change_and_adapter_reloads(tiny_recipe, tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lorafit.train import pipeline as train

    recipe = load_recipe(tiny_recipe, ["training.max_steps=6"])
    result = train.run(recipe, console=Console(quiet=True), quiet=True)
    trained = result.model.eval()
    original = load_file(str(tiny_model_dir / "model.safetensors"))
    for name, param in trained.named_parameters():
        if "lora_" in name:
            assert param.requires_grad
            continue
        assert not param.requires_grad, name
        key = name.replace("base_model.model.", "").replace(".base_layer", "")
        assert torch.equal(param.detach(), original[key]), f"{name} changed"
    lora_b = [p for n, p in trained.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b), "LoRA B starts at zero and must have moved"

    saved = load_file(str(tmp_path / "run" / "adapter" / "adapter_model.safetensors"))
    assert saved and all("lora_" in k for k in saved)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    reloaded = PeftModel.from_pretrained(base, tmp_path / "run" / "adapter").eval()
    ids = torch.tensor([[3, 10, 20, 30, 40, 50]])
    with torch.no_grad():
        expected = trained(input_ids=ids).logits
        got = reloaded(input_ids=ids).logits
        with reloaded.disable_adapter():
            base_logits = reloaded(input_ids=ids).logits
        untouched = (
            AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()(input_ids=ids).logits
        )
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(base_logits, expected, atol=1e-4), "the adapter must change the output"
    torch.testing.assert_close(base_logits, untouched, rtol=1e-5, atol=1e-5)  # adapter off: exactly the base


def test_bad_data_exits_3_before_loading_weights(tiny_recipe, tmp_path):
    (tmp_path / "train.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}]}\nnot json\n')
    result = run_train(tiny_recipe)
    assert result.exit_code == 3
    assert "train.jsonl:1: the conversation must end with an assistant turn" in result.output
    assert "train.jsonl:2: invalid JSON" in result.output
    assert not (tmp_path / "run" / "adapter").exists()


def test_missing_data_file_exits_7(tiny_recipe):
    result = run_train(tiny_recipe, "data.train=nowhere.jsonl")
    assert result.exit_code == 7
    assert "data file not found: nowhere.jsonl" in result.output


def test_unknown_model_dir_exits_7(tiny_recipe, tmp_path):
    result = run_train(tiny_recipe, f"model.name={tmp_path}/no-such-model")
    assert result.exit_code == 7
    assert "directory not found" in result.output
    assert "Traceback" not in result.output


def test_unwritable_output_dir_exits_2(tiny_recipe, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run_train(tiny_recipe, f"output.dir={blocker}/run")
    assert result.exit_code == 2
    assert "not writable" in result.output


def test_every_lm_head_mode_gives_the_same_losses(tiny_recipe, tmp_path):
    """training.lm_head only changes how the loss is computed, not its value, over several optimizer steps."""
    seen = {}
    for mode in ("chunked", "full", "trained"):
        out = tmp_path / f"run-{mode}"
        result = run_train(tiny_recipe, "training.max_steps=4", f"training.lm_head={mode}", f"output.dir={out}")
        assert result.exit_code == 0, result.output
        seen[mode] = losses(out)
    assert seen["chunked"] == pytest.approx(seen["full"], abs=1e-4)
    assert seen["trained"] == pytest.approx(seen["full"], abs=1e-4)


@pytest.mark.slow
@pytest.mark.skipif(cxx_compiler() is None, reason="inductor needs a C++ compiler")
def test_compiled_layers_train_to_the_same_losses(tiny_recipe, tmp_path):
    """training.compile: on changes kernels, not the optimisation: the losses follow the eager run's."""
    seen = {}
    for mode in ("off", "on"):
        out = tmp_path / f"run-{mode}"
        result = run_train(tiny_recipe, "training.max_steps=4", f"training.compile={mode}", f"output.dir={out}")
        assert result.exit_code == 0, result.output
        seen[mode] = losses(out)
        record = json.loads((out / "run.json").read_text())
        assert record["train"]["compiled_layers"] == (
            1 if mode == "on" else 0
        )  # 2 decoder layers; the first stays eager
    assert seen["on"] == pytest.approx(seen["off"], abs=1e-3)
    assert seen["on"][-1] < seen["on"][0]


@pytest.mark.slow
@pytest.mark.skipif(cxx_compiler() is None, reason="inductor needs a C++ compiler")
def test_compiled_layers_with_gradient_checkpointing(tiny_recipe, tmp_path):
    """Checkpointing recomputes each compiled layer in backward; the run still learns."""
    out = tmp_path / "run"
    result = run_train(
        tiny_recipe,
        "training.max_steps=4",
        "training.compile=on",
        "training.gradient_checkpointing=on",
        f"output.dir={out}",
    )
    assert result.exit_code == 0, result.output
    record = json.loads((out / "run.json").read_text())
    assert record["train"]["gradient_checkpointing"] is True and record["train"]["compiled_layers"] == 1
    seen = losses(out)
    assert seen[-1] < seen[0]


def test_compile_without_a_compiler_warns_and_trains_eagerly(tiny_recipe, tmp_path, monkeypatch):
    from lorafit import models
    from lorafit.models import recipe_plan
    from lorafit.recipe import load_recipe

    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    out = tmp_path / "run"
    result = run_train(tiny_recipe, "training.max_steps=2", "training.compile=on", f"output.dir={out}")
    assert result.exit_code == 0, result.output
    assert "needs a C++ compiler" in result.output
    assert json.loads((out / "run.json").read_text())["train"]["compiled_layers"] == 0
    # and the memory plan (which decides checkpointing) plans for the eager run that happens
    recipe = load_recipe(tiny_recipe, ["training.compile=on"])
    assert recipe_plan.recipe_settings(recipe, models.model_config(recipe), "cpu")["compiled"] is False


@pytest.mark.skipif(cxx_compiler() is None, reason="inductor needs a C++ compiler")
def test_the_first_decoder_layer_stays_eager(tiny_model_dir):
    """Its input (the frozen embedding's output) needs no grad, unlike every other layer's: compiling it would
    build a second graph. Compiling is lazy, so this only marks the layers."""
    from transformers import AutoModelForCausalLM

    from lorafit import models

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert models.compile_layers(model) == len(model.model.layers) - 1
    assert [layer._compiled_call_impl is not None for layer in model.model.layers] == [False] + [True] * (
        len(model.model.layers) - 1
    )
