"""Recipes shared in git: `extends` merges a base under a variant, paths stay relative to their own file."""

from pathlib import Path

import pytest

from lorafit.core.errors import MissingError, RecipeError
from lorafit.recipe import load_recipe


def _files(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_deep_merge_and_paths_relative_to_the_declaring_file(tmp_path):
    _files(
        tmp_path,
        {
            "team/base.yaml": "data:\n  train: data/train.jsonl\n  eval_split: 0.2\nadapter:\n  r: 8\n  alpha: 16\n"
            "training:\n  lr: 1.0e-4\n  max_steps: 50\noutput:\n  dir: runs/base\n  tags: [team]\n",
            "team/data/train.jsonl": "",
            "me/variant.yaml": "extends: ../team/base.yaml\nadapter:\n  r: 32\ntraining:\n  lr: 3.0e-4\n",
            "me/child.yaml": "extends: variant.yaml\ndata:\n  eval: mine.jsonl\n  eval_split: null\noutput:\n  tags: [mine]\n",
            "me/mine.jsonl": "",
        },
    )
    v = load_recipe(tmp_path / "me" / "variant.yaml")
    assert v.adapter.r == 32 and v.adapter.alpha == 16  # merged key by key
    assert v.training.lr == 3.0e-4 and v.training.max_steps == 50
    assert v.data.train == str(tmp_path / "team" / "data" / "train.jsonl")  # relative to base.yaml, not variant.yaml
    assert v.output.dir == "runs/variant"  # a base's output.dir is not inherited
    assert v.output.tags == ["team"]
    c = load_recipe(tmp_path / "me" / "child.yaml", ["training.max_steps=5"])  # a chain of two, then --set
    assert c.adapter.r == 32 and c.training.max_steps == 5
    assert c.data.eval == str(tmp_path / "me" / "mine.jsonl") and c.data.eval_split is None
    assert c.output.tags == ["mine"]  # lists are replaced, not concatenated
    assert "extends" not in c.to_yaml()  # the resolved recipe stands alone


def test_cycle_is_an_error_that_shows_the_chain(tmp_path):
    _files(
        tmp_path,
        {
            "a.yaml": "extends: b.yaml\ndata:\n  train: x.jsonl\n",
            "b.yaml": "adapter:\n  r: 4\nextends: c.yaml\n",
            "c.yaml": "extends: a.yaml\n",
        },
    )
    with pytest.raises(RecipeError) as info:
        load_recipe(tmp_path / "a.yaml")
    text = str(info.value)
    assert "extends cycle" in text and info.value.exit_code == 2
    assert (
        f"c.yaml:1: extends cycle: {tmp_path}/a.yaml -> {tmp_path}/b.yaml -> {tmp_path}/c.yaml -> {tmp_path}/a.yaml"
        in text
    )
    _files(tmp_path, {"self.yaml": "extends: self.yaml\n"})
    with pytest.raises(RecipeError, match="extends cycle"):
        load_recipe(tmp_path / "self.yaml")


def test_errors_point_at_the_file_and_line_that_set_the_value(tmp_path):
    _files(
        tmp_path,
        {
            "base.yaml": "data:\n  train: d.jsonl\nadapter:\n  r: 8\n  dropuot: 0.1\n",
            "v.yaml": "# a variant\nextends: base.yaml\ntraining:\n  lr: -1\n",
            "d.jsonl": "",
        },
    )
    with pytest.raises(RecipeError) as info:
        load_recipe(tmp_path / "v.yaml")
    text = str(info.value)
    assert f"{tmp_path}/base.yaml:5: adapter.dropuot: unknown field; did you mean 'dropout'?" in text
    assert f"{tmp_path}/v.yaml:4: training.lr" in text


def test_missing_base_and_bad_extends(tmp_path):
    _files(tmp_path, {"v.yaml": "extends: nowhere.yaml\n", "w.yaml": "extends: [a.yaml, b.yaml]\n"})
    with pytest.raises(MissingError, match=r"v.yaml:1: extends: base recipe not found: .*nowhere.yaml") as info:
        load_recipe(tmp_path / "v.yaml")
    assert info.value.exit_code == 7
    with pytest.raises(RecipeError, match="w.yaml:1: extends: expected the path of one base recipe"):
        load_recipe(tmp_path / "w.yaml")


def test_hub_data_source_takes_a_revision(tmp_path):
    _files(tmp_path, {"r.yaml": "data:\n  train:\n    path: org/chats\n    revision: v1.0\n"})
    recipe = load_recipe(tmp_path / "r.yaml")
    assert recipe.data.sources()[0].revision == "v1.0"
