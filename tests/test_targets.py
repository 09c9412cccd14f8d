"""adapter.target_modules checked early and strictly: peer spellings read as lorafit's, and every listed name
found in the model (from its config.json, before any weight loads)."""

import json

import pytest
from typer.testing import CliRunner

from lorafit.cli import app
from lorafit.core.errors import RecipeError
from lorafit.recipe import Recipe


def _targets(value):
    return Recipe.model_validate({"data": {"train": "x"}, "adapter": {"target_modules": value}}).adapter.target_modules


def test_peer_spellings_of_targets():
    assert _targets("all") == "all-linear"  # LLaMA-Factory's lora_target: all
    assert _targets("q_proj,v_proj") == ["q_proj", "v_proj"]  # a comma string is names, never a regex
    assert _targets(" q_proj , self_attn.o_proj") == ["q_proj", "self_attn.o_proj"]
    resolved = Recipe.model_validate({"data": {"train": "x"}, "adapter": {"target_modules": "all"}}).to_yaml()
    assert "target_modules: all-linear" in resolved


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (r".*\.(q|v)_proj,k_proj", "a comma in '.*\\\\.(q|v)_proj,k_proj': write module names as a list"),
        (["q_proj", "attention"], "'attention' is not one: use a keyword"),
        (["q_proj", ".*_proj"], "'.*_proj' is not one"),
    ],
)
def test_target_spellings_refused(value, words):
    with pytest.raises(ValueError) as info:
        _targets(value)
    assert words in str(info.value)


def test_partly_unknown_list_is_an_error_from_the_config(tiny_model_dir):
    from lorafit.models import targets

    config = json.loads((tiny_model_dir / "config.json").read_text())
    recipe = Recipe.model_validate(
        {
            "model": {"name": str(tiny_model_dir)},
            "data": {"train": "x"},
            "adapter": {"target_modules": ["q_proj", "output_proj", "w1"]},
        }
    )
    with pytest.raises(RecipeError) as info:
        targets.check_targets_on_config(recipe, config)
    assert info.value.message == (
        "adapter.target_modules: 2 of 3 listed names match no module of this llama model "
        "('output_proj': closest up_proj or o_proj; 'w1')"
    )
    assert info.value.hint == (
        "use its linear layers' names: down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj "
        "(or target_modules: all-linear)"
    )
    ok = recipe.model_copy(
        update={"adapter": recipe.adapter.model_copy(update={"target_modules": ["self_attn.q_proj", "down_proj"]})}
    )
    targets.check_targets_on_config(ok, config)  # suffix-matched names, as PEFT matches them


def test_validate_finds_a_missing_target_before_loading_weights(tiny_recipe):
    result = CliRunner().invoke(
        app, ["validate", str(tiny_recipe), "--set", "adapter.target_modules=q_proj,output_proj"]
    )
    assert result.exit_code == 2, result.output
    assert "'output_proj': closest up_proj or o_proj" in " ".join(result.output.split())
    assert "Traceback" not in result.output
