"""The recipe schema: every error at once with line numbers and fixes, overrides, cross-field rules."""

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lorafit.cli import app
from lorafit.core.errors import RecipeError
from lorafit.recipe import Recipe, load_recipe, parse_override

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    (tmp_path / "d.jsonl").write_text("")
    return path


def test_typo_reports_key_line_and_suggestion(tmp_path):
    path = write(tmp_path, "data:\n  train: d.jsonl\ntraining:\n  lr: 1e-4\n  bach_size: 4\n")
    result = runner.invoke(app, ["validate", "--schema-only", str(path)])
    assert result.exit_code == 2
    assert "r.yaml:5" in result.output
    assert "training.bach_size" in result.output
    assert "did you mean 'batch_size'" in result.output
    assert "Traceback" not in result.output


def test_all_errors_reported_together(tmp_path):
    path = write(
        tmp_path,
        "data:\n  train: d.jsonl\n  fromat: messages\nadapter:\n  r: -1\n  metod: lora\ntraining:\n  optimizer: adamw\n",
    )
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    text = str(info.value)
    assert "r.yaml:3: data.fromat: unknown field; did you mean 'format'?" in text
    assert "r.yaml:5: adapter.r" in text and "-1" in text
    assert "r.yaml:6: adapter.metod" in text and "did you mean 'method'" in text
    # torchtune's `adamw` is PyTorch's AdamW, not the string-closest adamw_8bit
    assert "r.yaml:8: training.optimizer" in text and "write training.optimizer: adamw_torch" in text
    assert len(text.splitlines()) == 4


def test_missing_section_is_reported(tmp_path):
    path = write(tmp_path, "model:\n  name: x\n")
    with pytest.raises(RecipeError, match="data: Field required"):
        load_recipe(path)


def test_bad_yaml_names_the_line(tmp_path):
    path = write(tmp_path, "data:\n  train: [a\n  b: c\n")
    with pytest.raises(RecipeError, match=r"r.yaml:\d+: not valid YAML"):
        load_recipe(path)


def test_defaults_and_frozen(tmp_path):
    recipe = load_recipe(write(tmp_path, "data:\n  train: d.jsonl\n"))
    assert recipe.model.name == "embedded:smollm2-135m-instruct"
    assert recipe.adapter.r == 16 and recipe.training.lr == 2e-4
    assert recipe.data.train == str(tmp_path / "d.jsonl")  # resolved against the recipe file
    assert recipe.output.dir == "runs/r"
    with pytest.raises(Exception):
        recipe.training.lr = 1.0


def test_set_overrides_parse_yaml_scalars(tmp_path):
    path = write(tmp_path, "data:\n  train: d.jsonl\n")
    recipe = load_recipe(
        path,
        ["training.max_steps=5", "output.dir=/tmp/x", "training.lr=1e-3", "adapter.target_modules=[q_proj, v_proj]"],
    )
    assert recipe.training.max_steps == 5
    assert recipe.output.dir == "/tmp/x"
    assert recipe.training.lr == 1e-3
    assert recipe.adapter.target_modules == ["q_proj", "v_proj"]


def test_set_unknown_path_suggests(tmp_path):
    with pytest.raises(RecipeError, match="did you mean 'training.max_steps'"):
        parse_override("training.max_step=3")
    with pytest.raises(RecipeError, match="section.field=value"):
        parse_override("training.max_steps")


def test_set_wrong_type_is_a_recipe_error(tmp_path):
    path = write(tmp_path, "data:\n  train: d.jsonl\n")
    with pytest.raises(RecipeError, match="training.batch_size.*'many'"):
        load_recipe(path, ["training.batch_size=many"])


def test_on_off_spellings(tmp_path):
    path = write(tmp_path, "data:\n  train: d.jsonl\ntraining:\n  gradient_checkpointing: on\n")
    assert load_recipe(path).training.gradient_checkpointing == "on"


# ---- named cross-field validators


def test_rule_alpha_positive():
    with pytest.raises(ValueError, match="must be > 0"):
        Recipe.model_validate({"data": {"train": "x"}, "adapter": {"alpha": 0}})


def test_rule_eval_split_in_range():
    with pytest.raises(ValueError, match="between 0 and 1"):
        Recipe.model_validate({"data": {"train": "x", "eval_split": 1.5}})
    assert Recipe.model_validate({"data": {"train": "x", "eval_split": None}}).data.eval_split is None


def test_rule_eval_source_is_unambiguous():
    with pytest.raises(ValueError, match="both set"):
        Recipe.model_validate({"data": {"train": "x", "eval": "y", "eval_split": 0.2}})
    assert Recipe.model_validate({"data": {"train": "x", "eval": "y"}}).data.eval == "y"


def test_rule_one_quantization():
    with pytest.raises(ValueError, match="choose one"):
        Recipe.model_validate({"data": {"train": "x"}, "quantization": {"load_in_4bit": True, "load_in_8bit": True}})


def test_rule_adapter_options_agree():
    with pytest.raises(ValueError, match="only applies to method loraplus"):
        Recipe.model_validate({"data": {"train": "x"}, "adapter": {"method": "lora", "loraplus_lr_ratio": 8}})
    with pytest.raises(ValueError, match="LoRA-family"):
        Recipe.model_validate({"data": {"train": "x"}, "adapter": {"method": "ia3", "use_rslora": True}})
    combined = Recipe.model_validate({"data": {"train": "x"}, "adapter": {"method": "dora", "use_rslora": True}})
    assert combined.adapter.use_rslora


def test_rule_bf16_refused_on_cpu(tmp_path, monkeypatch):
    from lorafit.core import device
    from lorafit.recipe import check_hardware

    monkeypatch.setattr(device, "detect", lambda: device.DeviceInfo("cpu", "CPU", False, 1 << 34))
    recipe = Recipe.model_validate({"data": {"train": "x"}, "training": {"precision": "bf16"}})
    with pytest.raises(RecipeError, match="bf16 requested but this machine trains on CPU"):
        check_hardware(recipe)
    check_hardware(Recipe.model_validate({"data": {"train": "x"}}))  # auto is fine
    for half in ({"training": {"precision": "fp16"}}, {"model": {"dtype": "float16"}}):
        with pytest.raises(RecipeError, match="fp16 training needs a GPU"):
            check_hardware(Recipe.model_validate({"data": {"train": "x"}, **half}))


def test_rule_precision_agrees_with_model_dtype(tmp_path):
    with pytest.raises(ValueError, match="training.precision fp32 contradicts model.dtype bfloat16"):
        Recipe.model_validate(
            {"data": {"train": "x"}, "model": {"dtype": "bfloat16"}, "training": {"precision": "fp32"}}
        )
    path = write(tmp_path, "model:\n  dtype: float16\ndata:\n  train: d.jsonl\ntraining:\n  precision: bf16\n")
    result = runner.invoke(app, ["validate", str(path), "--schema-only"])
    assert result.exit_code == 2 and "contradicts model.dtype float16" in result.output
    assert f"{path}:6: (recipe)" in result.output  # a rule across sections points at the first field it names
    from lorafit.recipe import recipe_from_yaml_text  # a run saved before the rule still loads (eval, merge, resume)

    saved = recipe_from_yaml_text("model:\n  dtype: float32\ndata:\n  train: d.jsonl\ntraining:\n  precision: bf16\n")
    assert saved.training.precision == "bf16" and saved.model.dtype == "float32"
    for agreeing in (
        {"precision": "bf16", "dtype": "bfloat16"},
        {"precision": "auto", "dtype": "float16"},
        {"precision": "fp16", "dtype": "auto"},
    ):
        Recipe.model_validate(
            {
                "data": {"train": "x"},
                "model": {"dtype": agreeing["dtype"]},
                "training": {"precision": agreeing["precision"]},
            }
        )


def test_schema_only_validation_never_imports_torch(tmp_path):
    """A recipe with a schema error is refused before anything heavy loads: what keeps that check instant."""
    path = write(tmp_path, "data:\n  train: d.jsonl\ntraining:\n  bach_size: 4\n")
    probe = (
        "import sys\nfrom lorafit.cli import app\n"
        "try:\n    app(['validate', sys.argv[1]])\nexcept SystemExit as e:\n    code = e.code\n"
        "print('torch' in sys.modules, code)"
    )
    proc = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True)
    assert "bach_size" in proc.stderr + proc.stdout
    assert proc.stdout.split()[-2:] == ["False", "2"], proc.stdout + proc.stderr


def test_recipe_reference_is_current():
    """README's recipe reference is generated from the schema; regenerate with scripts/gen_recipe_docs.py."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_recipe_docs.py"), "--check"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("training.seed=-1", "training.seed"),
        ("training.seed=4294967296", "training.seed"),
        ("training.max_steps=0", "0 steps trains nothing"),
        ("training.max_steps=-7", "training.max_steps"),
        ("output.tags=[a,b", "not valid YAML"),
    ],
)
def test_values_that_would_fail_later_fail_now(tiny_recipe, override, words):
    result = CliRunner().invoke(app, ["validate", str(tiny_recipe), "--set", override])
    assert result.exit_code == 2, result.output
    assert words in result.output and "Traceback" not in result.output


def test_unreadable_recipe_is_one_line(tmp_path):
    binary = tmp_path / "r.yaml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    result = CliRunner().invoke(app, ["validate", str(binary)])
    assert result.exit_code == 2 and "not a text file" in result.output


def test_typo_inside_a_data_source_suggests_the_source_field(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data:\n  train:\n    - path: a.jsonl\n      wieght: 2\n")
    result = CliRunner().invoke(app, ["validate", str(recipe), "--schema-only"])
    assert result.exit_code == 2 and "data.train.0.wieght: unknown field; did you mean 'weight'?" in result.output


def test_data_paths_are_stored_absolute_when_the_recipe_path_is_relative(tmp_path, monkeypatch):
    """A run's recipe.yaml must find its data from any directory: `lorafit eval RUN` run elsewhere."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    (tmp_path / "r.yaml").write_text("data:\n  train: data/train.jsonl\n")
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(Path("r.yaml"))
    assert recipe.data.train == str(tmp_path / "data" / "train.jsonl")
