"""eval, merge, combine, export, generate: every artifact checked against the adapter it came from."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from lorafit.cli import app

from conftest import chat_records, run_train, tiny_recipe_text, write_jsonl

runner = CliRunner()


def test_eval_reports_adapter_below_base(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    result = runner.invoke(app, ["eval", str(run), "--limit", "4", "--max-new-tokens", "8"])
    assert result.exit_code == 0, result.output
    report = json.loads((run / "eval.json").read_text())
    assert report["examples"] == 12
    assert report["adapter"]["loss"] < report["base"]["loss"]
    assert report["adapter"]["perplexity"] < report["base"]["perplexity"]
    assert {"exact_match", "contains"} <= set(report["adapter"]) and report["generated"] == 4
    assert len(report["samples"]) == 3 and report["samples"][0]["adapter"] is not None
    assert "perplexity" in result.output


def test_eval_on_another_file(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    other = write_jsonl(tmp_path / "regression.jsonl", chat_records(6, seed=9))
    result = runner.invoke(app, ["eval", str(run), "--data", str(other), "--limit", "2", "--max-new-tokens", "4"])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "eval.json").read_text())["examples"] == 6


def test_merge_verifies_and_loads_without_peft(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    result = runner.invoke(app, ["merge", str(run)])
    assert result.exit_code == 0, result.output
    record = json.loads((run / "run.json").read_text())["merge"]
    assert record["max_logit_diff_vs_adapter"] < 1e-3 < record["max_logit_change_vs_base"]
    merged = run / "merged"
    assert (merged / "model.safetensors").is_file() and (merged / "tokenizer.json").is_file()
    assert not (merged / "adapter_config.json").exists()

    # plain transformers, with peft made unimportable, reproduces the adapter's logits
    from lorafit import models, runs

    recipe, _ = runs.load_run(run)
    peft_model, _ = models.load_with_adapter(recipe, run / "adapter")
    ids = [[3, 10, 20, 30, 40]]
    with torch.no_grad():
        expected = peft_model(input_ids=torch.tensor(ids)).logits
    code = (
        "import sys, json, torch; sys.modules['peft'] = None\n"
        "from transformers import AutoModelForCausalLM\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(merged)!r}).eval()\n"
        f"print(json.dumps(m(input_ids=torch.tensor({ids})).logits.tolist()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    got = torch.tensor(json.loads(out.strip().splitlines()[-1]))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_merge_refuses_prompt_tuning(tmp_path, tiny_model_dir):
    data_file = write_jsonl(tmp_path / "d.jsonl", chat_records(16))
    recipe = tmp_path / "pt.yaml"
    recipe.write_text(
        tiny_recipe_text(
            tiny_model_dir,
            data_file,
            tmp_path / "run",
            adapter={"method": "prompt_tuning", "num_virtual_tokens": 4},
            training={"max_steps": 2},
        )
    )
    assert run_train(recipe).exit_code == 0
    for command in (["merge", str(tmp_path / "run")], ["export", str(tmp_path / "run"), "--format", "merged"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2
        assert "cannot be merged" in result.output and "--format peft" in result.output


def _delta(model, adapter: str, layer: str = "q_proj") -> torch.Tensor:
    module = next(m for n, m in model.named_modules() if n.endswith(f"layers.0.self_attn.{layer}"))
    return module.get_delta_weight(adapter)


def test_combine_cat_is_the_weighted_sum_and_linear_negates(trained_run, tmp_path, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    other = tmp_path / "other"
    data_file = write_jsonl(tmp_path / "d.jsonl", chat_records(24, seed=3))
    recipe = tmp_path / "b.yaml"
    recipe.write_text(tiny_recipe_text(tiny_model_dir, data_file, other, training={"max_steps": 4, "seed": 7}))
    assert run_train(recipe).exit_code == 0

    cat = runner.invoke(
        app,
        [
            "merge",
            str(trained_run),
            str(other),
            "--weights",
            "0.7,0.3",
            "--combination",
            "cat",
            "--out",
            str(tmp_path / "cat"),
        ],
    )
    assert cat.exit_code == 0, cat.output
    neg = runner.invoke(
        app, ["merge", str(trained_run), "--weights", "-1", "--combination", "linear", "--out", str(tmp_path / "neg")]
    )
    assert neg.exit_code == 0, neg.output

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = PeftModel.from_pretrained(base, str(trained_run / "adapter"), adapter_name="a")
    model.load_adapter(str(other / "adapter"), adapter_name="b")
    model.load_adapter(str(tmp_path / "cat"), adapter_name="cat")
    model.load_adapter(str(tmp_path / "neg"), adapter_name="neg")
    expected = 0.7 * _delta(model, "a") + 0.3 * _delta(model, "b")
    torch.testing.assert_close(_delta(model, "cat"), expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(_delta(model, "neg"), -_delta(model, "a"), atol=1e-6, rtol=1e-5)


def test_combine_rejects_mismatched_weights(trained_run, tmp_path):
    result = runner.invoke(
        app, ["merge", str(trained_run), str(trained_run), "--weights", "1", "--out", str(tmp_path / "x")]
    )
    assert result.exit_code == 2 and "one weight per run" in result.output


def test_export_peft_is_self_contained(trained_run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "peft"
    result = runner.invoke(app, ["export", str(trained_run), "--format", "peft", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "README.md"):
        assert (out / name).is_file(), name
    config = json.loads((out / "adapter_config.json").read_text())
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"]), str(out))
    assert AutoTokenizer.from_pretrained(out).chat_template
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) > 0


def test_vllm_warnings(trained_run, tmp_path):
    from lorafit.artifacts.export import vllm_warnings

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    assert vllm_warnings(run) == []
    config_file = run / "adapter" / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config.update(r=64, use_dora=True)
    config_file.write_text(json.dumps(config))
    warnings = " ".join(vllm_warnings(run))
    assert "--max-lora-rank 64" in warnings and "DoRA" in warnings


def test_generate_adapter_vs_base(trained_run):
    result = runner.invoke(
        app, ["generate", str(trained_run), "Question about order 1234: what about return?", "--max-new-tokens", "6"]
    )
    assert result.exit_code == 0, result.output
    assert result.output.strip()


def test_commands_on_a_non_run_exit_7(tmp_path):
    for command in (
        ["eval", str(tmp_path)],
        ["merge", str(tmp_path)],
        ["export", str(tmp_path)],
        ["generate", str(tmp_path), "hi"],
    ):
        result = runner.invoke(app, command)
        assert result.exit_code == 7, command
        assert "not a lorafit run directory" in result.output


@pytest.mark.slow
def test_gguf_export_round_trip(tmp_path, smol_tiny_run):
    for outtype in ("f16", "q8_0"):
        result = runner.invoke(
            app, ["export", str(smol_tiny_run), "--format", "gguf", "--gguf-type", outtype, "--out", str(tmp_path)]
        )
        assert result.exit_code == 0, result.output
        report = json.loads((smol_tiny_run / "run.json").read_text())["exports"][f"gguf_{outtype}"]
        assert Path(report["path"]).is_file() and report["bytes"] > 0
        assert report["greedy_agreement"] >= (1.0 if outtype == "f16" else 0.75)


def test_outputs_never_overwrite_a_users_folder(trained_run, tmp_path):
    """export/merge --out into a folder holding other files: refused before any work, the files untouched."""
    mine = tmp_path / "models"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for command in (
        ["export", str(trained_run), "--format", "peft", "--out", str(mine)],
        ["merge", str(trained_run), str(trained_run), "--weights", "0.5,0.5", "--out", str(mine)],
    ):
        result = runner.invoke(app, command)
        assert result.exit_code == 2, result.output
        assert "did not write" in result.output
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    again = tmp_path / "again"
    for _ in range(2):  # lorafit's own earlier export is replaced
        assert runner.invoke(app, ["export", str(trained_run), "--format", "peft", "--out", str(again)]).exit_code == 0
    assert (again / "adapter_model.safetensors").is_file()


def test_conflicting_options_are_refused(trained_run, tmp_path):
    single = runner.invoke(app, ["merge", str(trained_run), "--out", str(tmp_path / "m")])
    assert single.exit_code == 2 and "--format merged --out" in single.output.replace("\n", " ")
    both = runner.invoke(app, ["generate", str(trained_run), "hi", "--base", "--merged"])
    assert both.exit_code == 2 and "--base and --merged" in both.output


def test_eval_data_file_needs_only_that_file(trained_run, tmp_path):
    """eval --data reads only FILE: the run's training data may have been moved or deleted since."""
    import yaml

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    resolved = yaml.safe_load((run / "recipe.yaml").read_text())
    resolved["data"]["train"] = str(tmp_path / "gone.jsonl")
    (run / "recipe.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    other = write_jsonl(tmp_path / "regression.jsonl", chat_records(5, seed=3))
    result = runner.invoke(app, ["eval", str(run), "--data", str(other), "--limit", "1", "--max-new-tokens", "2"])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "eval.json").read_text())["examples"] == 5
    assert runner.invoke(app, ["eval", str(run)]).exit_code == 7  # the held-out split does need the training file


def test_eval_prompt_tuning_scores_the_real_positions(tmp_path, tiny_model_dir):
    """Prompt tuning prepends virtual tokens, so its logits are longer than the labels."""
    data_file = write_jsonl(tmp_path / "d.jsonl", chat_records(24))
    recipe = tmp_path / "pt.yaml"
    recipe.write_text(
        tiny_recipe_text(
            tiny_model_dir,
            data_file,
            tmp_path / "run",
            training={"max_steps": 4, "lr": 3e-2},
            adapter={"method": "prompt_tuning", "num_virtual_tokens": 4, "prompt_init_text": "support"},
        )
    )
    assert run_train(recipe).exit_code == 0
    result = runner.invoke(app, ["eval", str(tmp_path / "run"), "--limit", "2", "--max-new-tokens", "2"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert report["adapter"]["loss"] < report["base"]["loss"]


def test_merge_saves_in_the_chosen_dtype(trained_run, tmp_path):
    from safetensors import safe_open

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    result = runner.invoke(app, ["merge", str(run), "--dtype", "bfloat16"])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "run.json").read_text())["merge"]["dtype"] == "bfloat16"
    with safe_open(str(run / "merged" / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    assert json.loads((run / "merged" / "config.json").read_text())["dtype"] == "bfloat16"
    assert runner.invoke(app, ["merge", str(run), "--dtype", "float8"]).exit_code == 2


def test_combining_rslora_or_dora_is_refused(trained_run, tmp_path):
    """PEFT's add_weighted_adapter would rescale rsLoRA by sqrt(r) and drop DoRA's magnitudes."""
    import yaml

    for flag in ("use_rslora", "use_dora"):
        run = tmp_path / flag
        shutil.copytree(trained_run, run)
        resolved = yaml.safe_load((run / "recipe.yaml").read_text())
        resolved["adapter"][flag] = True
        (run / "recipe.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
        result = runner.invoke(app, ["merge", str(trained_run), str(run), "--out", str(tmp_path / f"c-{flag}")])
        assert result.exit_code == 2 and "no rsLoRA or DoRA" in result.output, result.output


def test_generation_stops_on_every_end_of_reply_token(trained_run):
    """generation_config's eos list, the tokenizer's eos and the template's end-of-turn token all stop a reply."""
    from lorafit import models, runs
    from lorafit.models import generation

    recipe, _ = runs.load_run(trained_run)
    model, tokenizer = models.load_with_adapter(recipe, trained_run / "adapter")
    im_end, text_end = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    model.generation_config.eos_token_id = [text_end, 7]
    tokenizer.eos_token = "<|endoftext|>"
    assert set(generation.stop_token_ids(model, tokenizer)) == {text_end, 7, im_end}


def test_merge_auto_dtype_is_the_base_checkpoints(tmp_path, tiny_model_dir):
    """`auto` reads the base's config.json: a bf16 checkpoint merges into bf16 (the tiny model here is float32)."""
    from lorafit.artifacts import merge
    from lorafit.recipe import Recipe

    bf16 = tmp_path / "bf16-base"
    shutil.copytree(tiny_model_dir, bf16)
    config = json.loads((bf16 / "config.json").read_text())
    config.pop("torch_dtype", None)
    (bf16 / "config.json").write_text(json.dumps({**config, "dtype": "bfloat16"}))
    assert (
        merge.saved_dtype(Recipe.model_validate({"model": {"name": str(bf16)}, "data": {"train": "d.jsonl"}}), "auto")
        == "bfloat16"
    )
    assert (
        merge.saved_dtype(
            Recipe.model_validate({"model": {"name": str(tiny_model_dir)}, "data": {"train": "d.jsonl"}}), "auto"
        )
        == "float32"
    )
    assert (
        merge.saved_dtype(
            Recipe.model_validate({"model": {"name": str(bf16)}, "data": {"train": "d.jsonl"}}), "float16"
        )
        == "float16"
    )
