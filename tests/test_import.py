"""`lorafit import`: example configs of each peer (tests/fixtures/peers, written for these tests from the peers'
documented keys) become the expected recipe and report; the recipe loads, and validates where its data is here."""

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lorafit.cli import app
from lorafit.recipe import importer, load_recipe

from conftest import set_args

PEERS = Path(__file__).parent / "fixtures" / "peers"
CONFIGS = {
    "axolotl_qlora": "axolotl",
    "llamafactory_lora_sft": "llamafactory",
    "torchtune_lora": "torchtune",
    "trl_sft": "trl",
}


@pytest.fixture()
def peers_dir(tmp_path, monkeypatch) -> Path:
    copy = tmp_path / "peers"
    shutil.copytree(PEERS, copy)
    monkeypatch.chdir(copy)
    return copy


def _report(imported) -> str:
    return "".join(f"{key}\t{value}\t{why}\n" for key, value, why in imported.skipped)


@pytest.mark.parametrize("name", CONFIGS)
def test_peer_config_becomes_the_expected_recipe(peers_dir, name):
    config = Path(f"{name}.yaml")
    assert importer.detect(importer.parse_yaml_text(config.read_text(), name)) == CONFIGS[name]
    out = Path(f"{name}.recipe.yaml")
    text, imported = importer.import_config(config, None, out)
    assert text == (PEERS / f"{name}.expected.yaml").read_text()
    assert _report(imported) == (PEERS / f"{name}.report.tsv").read_text()
    out.write_text(text)
    load_recipe(out)  # the schema and the loader take it as it is


def test_imported_recipe_validates_with_its_data(peers_dir, tiny_model_dir):
    """LLaMA-Factory's dataset_info.json names resolve to the files beside it; with a model that is here
    (the tiny one, and its context), `lorafit validate` reads every row."""
    runner = CliRunner()
    result = runner.invoke(app, ["import", "llamafactory_lora_sft.yaml", "-o", "lf.yaml"])
    assert result.exit_code == 0, result.output
    assert "wrote lf.yaml (LLaMA-Factory: " in result.output and "max_samples" in result.output
    overrides = set_args(
        f"model.name={tiny_model_dir}",
        "training.max_length=128",
        "model.trust_remote_code=false",
        "training.eval_every=0.5epoch",
    )
    result = runner.invoke(app, ["validate", "lf.yaml", *overrides])
    assert result.exit_code == 0, result.output
    assert '"format": "mixed"' in result.output and '"rows": 3,' in result.output  # an alpaca and a sharegpt file
    assert '"eval_rows": 1' in result.output  # val_size: 0.1 of 3 rows
    # batch 1 x grad_accum 8 over 2 rows: one step per epoch
    said = " ".join(result.output.split())  # the console wraps long lines
    assert "training.eval_every 0.5epoch = every 1 steps (1 steps per epoch on one device: 2 examples)" in said


def test_unknown_tool_and_undetectable_config(peers_dir):
    Path("odd.yaml").write_text("something: 1\n")
    result = CliRunner().invoke(app, ["import", "odd.yaml"])
    assert result.exit_code == 2
    assert "cannot tell which tool this config is for from its keys" in result.output
    assert "--from axolotl | llamafactory | torchtune | trl" in result.output
    result = CliRunner().invoke(app, ["import", "odd.yaml", "--from", "ludwig"])
    assert result.exit_code == 2 and "--from 'ludwig': not a tool lorafit imports" in result.output
