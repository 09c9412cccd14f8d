"""Portable adapters: adapter_config.json names a base another machine resolves, and the adapter folder carries its
run's recipe, so a copy of the folder alone, elsewhere and with a fresh lorafit cache, answers as the run does."""

import json
import shutil

from typer.testing import CliRunner

from lorafit.cli import app
from lorafit.recipe import recipe_from_yaml_text
from lorafit.train import outputs

EMBEDDED = "embedded:smollm2-135m-instruct"


def test_the_embedded_base_is_named_as_lorafit_resolves_it_not_by_its_cache_path(tmp_path):
    recipe = recipe_from_yaml_text(f"model: {{name: '{EMBEDDED}'}}\ndata: {{train: data.jsonl}}\n")
    cache_path = tmp_path / ".cache" / "lorafit" / "models" / "smollm2-135m-instruct"
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(cache_path), "r": 8}))
    outputs.make_portable(tmp_path, recipe)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == EMBEDDED and config["r"] == 8
    assert recipe_from_yaml_text((tmp_path / "lorafit-recipe.yaml").read_text()).model.name == EMBEDDED
    card = "\n".join(outputs.base_model_section(recipe))
    assert "Q4_1 GGUF" in card and "not the hub's bf16" in card and "--format merged" in card


def test_a_hub_base_keeps_its_id_and_revision(tmp_path):
    recipe = recipe_from_yaml_text("model: {name: org/model, revision: abc123}\ndata: {train: data.jsonl}\n")
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/home/me/.cache/x"}))
    outputs.make_portable(tmp_path, recipe)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (config["base_model_name_or_path"], config["revision"]) == ("org/model", "abc123")


def test_a_copied_adapter_folder_answers_as_its_run_with_a_new_cache(trained_run, tmp_path, monkeypatch):
    from lorafit.serve import served

    shipped = tmp_path / "elsewhere" / "support-bot"
    shutil.copytree(trained_run / "adapter", shipped)
    question = "Question about order 4242: what about return?"
    original = CliRunner().invoke(app, ["generate", str(trained_run), question, "--max-new-tokens", "16"])
    monkeypatch.setenv("LORAFIT_CACHE", str(tmp_path / "new-cache"))
    copied = CliRunner().invoke(app, ["generate", str(shipped), question, "--max-new-tokens", "16"])
    assert original.exit_code == 0 and copied.exit_code == 0, copied.output
    assert copied.output == original.output and copied.output.strip()
    run = served.load(shipped)
    assert run.name == "support-bot" and run.adapter_dir == shipped
