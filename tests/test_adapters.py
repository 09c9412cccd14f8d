"""The adapter family, each trained through lorafit's own train.run on the tiny model, and the recipe rules around it.

Every method must: lower the loss, change only its own parameters, and save an adapter that plain PEFT
(PeftModel.from_pretrained onto the untouched base) reloads to the same logits.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file
from typer.testing import CliRunner

from lorafit.cli import app
from lorafit.core import methods
from lorafit.core.errors import MissingError, RecipeError
from lorafit.models import adapters
from lorafit.recipe import load_recipe, recipe_from_yaml_text

from conftest import chat_records, run_train, set_args, tiny_recipe_text, write_jsonl

runner = CliRunner()
# PEFT 0.21's CorDA module imports `attrs`, which PEFT itself does not require.
needs_attrs = pytest.mark.skipif(
    importlib.util.find_spec("attr") is None, reason="CorDA needs attrs (pip install attrs)"
)
IDS = torch.tensor([[3, 10, 20, 30, 40, 50, 60, 70]])
LINEAR = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]

# method (and extra adapter keys) -> parameter-name fragments that may train, and the learning rate it trains at
METHODS = {
    "lora": ({}, ("lora_A", "lora_B"), 5e-3),
    "dora+rslora": ({"method": "dora", "use_rslora": True}, ("lora_A", "lora_B", "lora_magnitude_vector"), 5e-3),
    "rslora": ({"method": "rslora"}, ("lora_A", "lora_B"), 5e-3),
    "loraplus": ({"method": "loraplus"}, ("lora_A", "lora_B"), 2e-3),
    "pissa": ({"method": "pissa", "pissa_niter": 2}, ("lora_A", "lora_B"), 2e-3),
    "olora": ({"method": "olora"}, ("lora_A", "lora_B"), 2e-3),
    "eva": ({"method": "eva", "init_examples": 16}, ("lora_A", "lora_B"), 5e-3),
    "corda": ({"method": "corda", "init_examples": 8}, ("lora_A", "lora_B"), 2e-3),
    "ia3": ({"method": "ia3"}, ("ia3_l",), 5e-2),
    "prompt_tuning": (
        {"method": "prompt_tuning", "num_virtual_tokens": 8, "prompt_init_text": "warehouse support answer"},
        ("prompt_encoder",),
        3e-2,
    ),
    "prefix_tuning": ({"method": "prefix_tuning", "num_virtual_tokens": 8}, ("prompt_encoder",), 1e-2),
    "lora+modules_to_save": (
        {"target_modules": "qv", "modules_to_save": ["lm_head"]},
        ("lora_A", "lora_B", "modules_to_save"),
        5e-3,
    ),
}


def _losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def _recipe(tmp_path: Path, model_dir: Path, adapter: dict | None = None, training: dict | None = None, **sections):
    data = write_jsonl(tmp_path / "train.jsonl", chat_records(48))
    path = tmp_path / "recipe.yaml"
    adapter = {"r": 8, "alpha": 16, "dropout": 0.0, **(adapter or {})}
    text = tiny_recipe_text(
        model_dir,
        data,
        tmp_path / "run",
        data={"eval_split": None},
        adapter=adapter,
        training={"max_steps": 10, **(training or {})},
        **sections,
    )
    path.write_text(text)
    return path


def _train(recipe_file: Path, *overrides: str):
    from lorafit.train import pipeline as train

    return train.run(load_recipe(recipe_file, list(overrides)), console=Console(quiet=True), quiet=True)


def _base(model_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


@pytest.fixture()
def spy_wrap(monkeypatch):
    """Snapshot every parameter right after adapters.wrap, as train.run builds the model."""
    seen: dict = {}
    real = adapters.wrap

    def spy(*args, **kwargs):
        model = real(*args, **kwargs)
        seen["trainable"] = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        seen["frozen"] = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
        return model

    monkeypatch.setattr(adapters, "wrap", spy)
    return seen


# ---------------------------------------------------------------- every method trains, touches only itself, reloads


@pytest.mark.parametrize("case", [pytest.param(c, marks=needs_attrs) if c == "corda" else c for c in METHODS])
def test_method_trains_changes_only_its_parameters_and_reloads_with_plain_peft(
    case, tmp_path, tiny_model_dir, spy_wrap
):
    from peft import PeftModel

    adapter, trainable_fragments, lr = METHODS[case]
    recipe_file = _recipe(tmp_path, tiny_model_dir, adapter, {"lr": lr})
    result = _train(recipe_file)
    trained = result.model.eval()
    run_dir = tmp_path / "run"

    seen = _losses(run_dir)
    assert all(math.isfinite(x) for x in seen)
    assert sum(seen[-3:]) / 3 < sum(seen[:3]) / 3, f"{case}: loss did not fall: {seen}"

    # Only the method's own parameters train; each of them moved; every frozen tensor is bit-identical.
    after = dict(trained.named_parameters())
    assert spy_wrap["trainable"], case
    for name, before in spy_wrap["trainable"].items():
        assert any(f in name for f in trainable_fragments), f"{case}: unexpected trainable {name}"
    moved = [n for n, before in spy_wrap["trainable"].items() if not torch.equal(before, after[n].detach())]
    assert len(moved) == len(spy_wrap["trainable"]), (
        f"{case}: these did not move: {set(spy_wrap['trainable']) - set(moved)}"
    )
    for name, before in spy_wrap["frozen"].items():
        assert torch.equal(before, after[name].detach()), f"{case}: frozen {name} changed"

    # The base is untouched, except that residual initialisations rewrote it once (W_res), before training.
    original = load_file(str(tiny_model_dir / "model.safetensors"))
    rewritten = []
    for name, before in spy_wrap["frozen"].items():
        clean = name.replace(".base_layer", "").replace(".original_module", "")
        key = max((k for k in original if clean == k or clean.endswith("." + k)), key=len, default=None)
        if key is not None and not torch.equal(before, original[key]):
            rewritten.append(key)
    if adapter.get("method") in methods.RESIDUAL_INIT:
        assert rewritten, f"{case} should start from a residual base"
    else:
        assert not rewritten, f"{case} changed base weights: {rewritten}"

    # The saved adapter reloads onto the untouched base with plain PEFT and gives the trained model's logits.
    adapter_dir = run_dir / "adapter"
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    reloaded = PeftModel.from_pretrained(_base(tiny_model_dir), adapter_dir).eval()
    with torch.no_grad():
        expected = trained(input_ids=IDS).logits
        got = reloaded(input_ids=IDS).logits
        plain = _base(tiny_model_dir)(input_ids=IDS).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got[:, -IDS.shape[1] :], plain, atol=1e-3), f"{case}: the adapter must change the output"
    if adapter.get("method") in methods.RESIDUAL_INIT:
        assert config["init_lora_weights"] is True and config["r"] == 2 * 8, "converted to a plain LoRA of rank 2r"
    record = result.record
    assert record["adapter"]["method"] == adapter.get("method", "lora")


# ---------------------------------------------------------------- what each method claims, checked in the built model


def _wrapped(tmp_path, model_dir, adapter: dict, examples=None, **sections):
    recipe = load_recipe(_recipe(tmp_path, model_dir, adapter, **sections))
    torch.manual_seed(0)
    return adapters.wrap(_base(model_dir), recipe, str(model_dir), examples=examples), recipe


@pytest.mark.parametrize(
    ("adapter", "scaling"),
    [
        ({"method": "lora", "r": 4, "alpha": 8}, 8 / 4),
        ({"method": "rslora", "r": 4, "alpha": 8}, 8 / math.sqrt(4)),
        ({"method": "lora", "use_rslora": True, "r": 16, "alpha": 8}, 8 / math.sqrt(16)),
        ({"method": "dora", "use_rslora": True, "r": 16, "alpha": 8}, 8 / math.sqrt(16)),
    ],
)
def test_rslora_scales_by_alpha_over_sqrt_r(adapter, scaling, tmp_path, tiny_model_dir):
    from peft.tuners.lora import LoraLayer

    model, _ = _wrapped(tmp_path, tiny_model_dir, adapter)
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    assert len(layers) == 14
    assert all(m.scaling["default"] == pytest.approx(scaling) for m in layers)
    has_dora = any("lora_magnitude_vector" in n for n, _ in model.named_parameters())
    assert has_dora == (adapter["method"] == "dora")


@pytest.mark.parametrize("optimizer", ["adamw_torch", "paged_adamw_8bit"])
def test_loraplus_gives_b_ratio_times_a_learning_rate_in_the_trainer(optimizer, tmp_path, tiny_model_dir, monkeypatch):
    built = []
    real = adapters.optimizer_for

    def spy(*args):
        built.append(real(*args))
        return built[-1]

    monkeypatch.setattr(adapters, "optimizer_for", spy)
    lr, ratio = 1e-3, 8.0
    training = {"lr": lr, "max_steps": 3, "weight_decay": 0.01, "optimizer": optimizer}
    result = _train(_recipe(tmp_path, tiny_model_dir, {"method": "loraplus", "loraplus_lr_ratio": ratio}, training))
    opt = built[0]
    assert type(opt).__module__.split(".")[0] == ("bitsandbytes" if "8bit" in optimizer else "torch")
    names = {id(p): n for n, p in result.model.named_parameters()}
    lr_of = {}
    for group in opt.param_groups:
        for p in group["params"]:
            lr_of[names[id(p)]] = (group["initial_lr"], group["weight_decay"])
    a = {v for n, v in lr_of.items() if "lora_A" in n}
    b = {v for n, v in lr_of.items() if "lora_B" in n}
    assert a == {(lr, 0.01)} and b == {(lr * ratio, 0.01)}, (a, b)
    assert len(lr_of) == sum(1 for p in result.model.parameters() if p.requires_grad)
    # and the Trainer really stepped with this optimizer (it holds state for every adapter weight)
    assert all(opt.state[p] for g in opt.param_groups for p in g["params"])


@pytest.mark.parametrize("method", ["pissa", "olora", pytest.param("corda", marks=needs_attrs), "eva"])
def test_data_and_svd_initialisations_start_from_the_base_models_output(method, tmp_path, tiny_model_dir):
    from lorafit import data, models

    recipe = load_recipe(_recipe(tmp_path, tiny_model_dir, {"method": method}))
    examples = data.prepare(recipe, models.load_tokenizer(recipe, str(tiny_model_dir))).train
    base = _base(tiny_model_dir)
    with torch.no_grad():
        expected = base(input_ids=IDS).logits
    model = adapters.wrap(base, recipe, str(tiny_model_dir), examples=examples).eval()
    with torch.no_grad():
        got = model(input_ids=IDS).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    a = [p for n, p in model.named_parameters() if "lora_A" in n]
    assert all(p.abs().sum() > 0 for p in a), "A starts from an SVD, not at random"
    if method in methods.RESIDUAL_INIT:  # the principal part moved out of the base, into A and B
        q = model.base_model.model.model.layers[0].self_attn.q_proj
        original = load_file(str(tiny_model_dir / "model.safetensors"))["model.layers.0.self_attn.q_proj.weight"]
        assert not torch.allclose(q.base_layer.weight, original, atol=1e-3)
        assert q.lora_B["default"].weight.abs().sum() > 0
    if method == "eva":
        assert model.peft_config["default"].rank_pattern, "EVA redistributes ranks across layers"


@pytest.mark.parametrize(("niter", "init"), [(4, "pissa_niter_4"), (0, "pissa_niter_0"), (None, "pissa")])
def test_pissa_niter_selects_fast_or_exact_svd(niter, init, tmp_path, tiny_model_dir):
    recipe = load_recipe(_recipe(tmp_path, tiny_model_dir, {"method": "pissa", "pissa_niter": niter}))
    assert adapters.peft_config(recipe).init_lora_weights == init


def test_ia3_uses_the_architectures_feedforward_modules(tmp_path, tiny_model_dir):
    model, _ = _wrapped(tmp_path, tiny_model_dir, {"method": "ia3"})
    assert adapters.matched_modules(model) == {"k_proj": 2, "v_proj": 2, "down_proj": 2}
    ff = {n.rsplit(".", 1)[-1]: m.is_feedforward for n, m in model.named_modules() if hasattr(m, "is_feedforward")}
    assert ff == {"k_proj": False, "v_proj": False, "down_proj": True}
    model, _ = _wrapped(tmp_path, tiny_model_dir, {"method": "ia3", "target_modules": "mlp"})
    ff = {n.rsplit(".", 1)[-1]: m.is_feedforward for n, m in model.named_modules() if hasattr(m, "is_feedforward")}
    assert ff == {"gate_proj": False, "up_proj": False, "down_proj": True}


def test_prompt_tuning_starts_from_the_init_text(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    model, _ = _wrapped(
        tmp_path,
        tiny_model_dir,
        {"method": "prompt_tuning", "num_virtual_tokens": 6, "prompt_init_text": "warehouse support"},
    )
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tok("warehouse support", add_special_tokens=False)["input_ids"]
    table = model.prompt_encoder["default"].embedding.weight
    embed = model.get_input_embeddings().weight
    expected = (ids * 6)[:6]  # PEFT repeats the text's tokens to fill the virtual tokens
    torch.testing.assert_close(table, embed[expected])


# ---------------------------------------------------------------- targets, layers, the report


@pytest.mark.parametrize(
    ("targets", "layers", "expected"),
    [
        ("all-linear", None, {n: 2 for n in LINEAR}),
        ("attention", None, {"q_proj": 2, "k_proj": 2, "v_proj": 2, "o_proj": 2}),
        ("qv", None, {"q_proj": 2, "v_proj": 2}),
        ("mlp", None, {"gate_proj": 2, "up_proj": 2, "down_proj": 2}),
        (["q_proj", "o_proj"], None, {"q_proj": 2, "o_proj": 2}),
        ("down_proj", None, {"down_proj": 2}),
        (r".*\.layers\.1\.self_attn\.(q|v)_proj", None, {"q_proj": 1, "v_proj": 1}),
        ("all-linear", [1, 1], {n: 1 for n in LINEAR}),
        ("attention", [0, 0], {"q_proj": 1, "k_proj": 1, "v_proj": 1, "o_proj": 1}),
    ],
)
def test_target_modules_and_layer_ranges(targets, layers, expected, tmp_path, tiny_model_dir):
    model, _ = _wrapped(tmp_path, tiny_model_dir, {"target_modules": targets, "layers": layers})
    assert adapters.matched_modules(model) == expected
    if layers is not None:
        adapted = {n.split(".layers.", 1)[1].split(".", 1)[0] for n, _ in model.named_parameters() if "lora_A" in n}
        assert adapted == {str(i) for i in range(layers[0], layers[1] + 1)}


def test_matched_modules_report(tmp_path, tiny_model_dir):
    model, recipe = _wrapped(tmp_path, tiny_model_dir, {"target_modules": "qv", "modules_to_save": ["lm_head"]})
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    line = adapters.report(model, recipe)
    assert line == (
        f"adapter: lora on 4 modules (q_proj x2, v_proj x2), plus full copies of lm_head; "
        f"trainable {trainable:,} of {total:,} params ({100 * trainable / total:.2f}%)"
    )
    s = adapters.summary(model)
    assert s["matched_modules"] == {"q_proj": 2, "v_proj": 2}
    assert s["trainable_params"] == trainable and s["total_params"] == total
    model, recipe = _wrapped(tmp_path, tiny_model_dir, {"target_modules": "all-linear", "layers": [1, 1]})
    assert (
        "on 7 modules (down_proj x1, gate_proj x1, k_proj x1, o_proj x1, q_proj x1, up_proj x1, v_proj x1) in layers 1..1;"
        in adapters.report(model, recipe)
    )
    model, recipe = _wrapped(tmp_path, tiny_model_dir, {"method": "prefix_tuning", "num_virtual_tokens": 5})
    assert adapters.report(model, recipe).startswith("adapter: prefix_tuning on 5 virtual tokens; trainable ")


def test_train_prints_the_report(tmp_path, tiny_model_dir):
    recipe_file = _recipe(tmp_path, tiny_model_dir, {"target_modules": "attention"}, {"max_steps": 2})
    result = run_train(recipe_file)
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())  # the console wraps long lines
    assert "adapter: lora on 8 modules (k_proj x2, o_proj x2, q_proj x2, v_proj x2); trainable " in output
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["adapter"]["matched_modules"] == {"q_proj": 2, "k_proj": 2, "v_proj": 2, "o_proj": 2}


@pytest.mark.parametrize(
    ("adapter", "message"),
    [
        ({"target_modules": ["nope_proj"]}, "adapter.target_modules ['nope_proj'] matches no module of this model"),
        ({"target_modules": r".*\.nope_\w+"}, "matches no module of this model"),
        ({"method": "ia3", "target_modules": ["nope_proj"]}, "matches no module of this model"),
        ({"layers": [1, 5]}, "adapter.layers [1, 5] goes past this model's last layer (2 layers: 0..1)"),
    ],
)
def test_targets_that_match_nothing_are_recipe_errors(adapter, message, tmp_path, tiny_model_dir):
    result = run_train(_recipe(tmp_path, tiny_model_dir, adapter))
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())  # the console wraps long lines
    assert message in output
    if "matches no module" in message:
        assert "its linear layers are named: " + ", ".join(LINEAR) in output
    assert "Traceback" not in result.output
    assert not (tmp_path / "run" / "adapter").exists()


# ---------------------------------------------------------------- recipe rules


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["adapter.method=ia3", "adapter.use_rslora=true"], "adapter.use_rslora only applies to LoRA-family methods"),
        (
            ["adapter.method=prompt_tuning", "adapter.use_dora=true"],
            "adapter.use_dora only applies to LoRA-family methods",
        ),
        (["adapter.loraplus_lr_ratio=4"], "adapter.loraplus_lr_ratio only applies to method loraplus, not lora"),
        (["adapter.pissa_niter=8"], "adapter.pissa_niter only applies to method pissa, not lora"),
        (["adapter.method=pissa", "adapter.eva_rho=1.5"], "adapter.eva_rho only applies to method eva, not pissa"),
        (["adapter.corda_mode=kpm"], "adapter.corda_mode only applies to method corda, not lora"),
        (["adapter.init_examples=8"], "adapter.init_examples only applies to method corda / eva, not lora"),
        (
            ["adapter.num_virtual_tokens=4"],
            "adapter.num_virtual_tokens only applies to method prefix_tuning / prompt_tuning",
        ),
        (
            ["adapter.method=prefix_tuning", "adapter.prompt_init_text=hi"],
            "adapter.prompt_init_text only applies to method prompt_tuning",
        ),
        (
            ["adapter.method=prompt_tuning", "adapter.target_modules=qv"],
            "adapter.target_modules does not apply to prompt_tuning",
        ),
        (["adapter.method=prefix_tuning", "adapter.layers=[0, 1]"], "adapter.layers does not apply to prefix_tuning"),
        (
            ["adapter.method=ia3", "adapter.layers=[0, 0]"],
            "adapter.layers only applies to LoRA-family methods (corda, dora, eva, loftq, lora, loraplus, olora, pissa, rslora), not ia3",
        ),
        (["adapter.method=pissa", "adapter.use_dora=true"], "DoRA does not combine with pissa"),
        (
            ["adapter.method=corda", "adapter.modules_to_save=[lm_head]"],
            "adapter.modules_to_save does not combine with corda",
        ),
        (["adapter.method=olora", "quantization.load_in_4bit=true"], "olora rewrites the base weights"),
        (["adapter.method=loftq", "adapter.alpha=8"], "method loftq starts LoRA from a 4-bit base"),
        (["adapter.method=loftq", "quantization.load_in_4bit=true"], "method loftq needs the LoRA scaling to be 1"),
        (
            ["adapter.layers=[0, 1]", r"adapter.target_modules=.*\.q_proj"],
            "adapter.layers does not combine with a regex",
        ),
        (["adapter.layers=[1, 0]"], "must be [start, end] with 0 <= start <= end"),
        (["adapter.target_modules=[]"], "must name at least one module"),
        (["adapter.target_modules=(q_proj"], "not a valid regex"),
        (["adapter.method=sparse_lora"], "adapter.method"),
        (
            ["quantization.load_in_4bit=true", "quantization.load_in_8bit=true"],
            "load_in_4bit and load_in_8bit are both true",
        ),
        (["quantization.quant_type=fp4"], "quantization.quant_type only applies with quantization.load_in_4bit: true"),
        (
            ["quantization.load_in_8bit=true", "quantization.compute_dtype=float32"],
            "quantization.compute_dtype only applies with",
        ),
    ],
)
def test_contradictory_options_are_recipe_errors(overrides, message, tmp_path, tiny_model_dir):
    recipe_file = _recipe(tmp_path, tiny_model_dir)
    with pytest.raises(RecipeError) as err:
        load_recipe(recipe_file, overrides)
    assert message in str(err.value)
    result = runner.invoke(app, ["validate", "--schema-only", str(recipe_file), *set_args(*overrides)])
    assert result.exit_code == 2, result.output


@pytest.mark.parametrize(
    "overrides",
    [
        ["adapter.method=dora", "adapter.use_rslora=true"],
        ["adapter.method=loraplus", "adapter.use_dora=true", "adapter.loraplus_lr_ratio=4"],
        ["adapter.method=eva", "adapter.use_dora=true", "adapter.eva_rho=1.0"],
        ["adapter.method=pissa", "adapter.use_rslora=true", "adapter.pissa_niter=null"],
        ["adapter.method=corda", "adapter.corda_mode=kpm", "adapter.init_examples=4"],
        ["adapter.method=loftq", "adapter.alpha=8", "quantization.load_in_4bit=true"],
        ["quantization.load_in_4bit=true", "quantization.quant_type=fp4", "quantization.double_quant=false"],
    ],
)
def test_options_that_combine_are_accepted_and_the_resolved_recipe_loads_back(overrides, tmp_path, tiny_model_dir):
    recipe = load_recipe(_recipe(tmp_path, tiny_model_dir), overrides)
    again = recipe_from_yaml_text(recipe.to_yaml())
    assert again == recipe


@pytest.mark.parametrize("method", sorted(methods.LORA_FAMILY | {"ia3"} | methods.PROMPT_LEARNING))
def test_every_methods_resolved_recipe_loads_back(method, tmp_path, tiny_model_dir):
    extra = ["adapter.alpha=8", "quantization.load_in_4bit=true"] if method == "loftq" else []
    recipe = load_recipe(_recipe(tmp_path, tiny_model_dir), [f"adapter.method={method}", *extra])
    assert recipe_from_yaml_text(recipe.to_yaml()) == recipe


def test_data_initialisations_need_examples(tmp_path, tiny_model_dir):
    recipe = load_recipe(_recipe(tmp_path, tiny_model_dir, {"method": "eva"}))
    with pytest.raises(RecipeError, match="initialises the adapter from training examples"):
        adapters.wrap(_base(tiny_model_dir), recipe, str(tiny_model_dir))


def test_corda_without_attrs_says_what_to_install(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "attr", None)  # import attr -> ImportError
    monkeypatch.delitem(sys.modules, "peft.tuners.lora.corda", raising=False)
    recipe = load_recipe(_recipe(tmp_path, tiny_model_dir, {"method": "corda"}))
    with pytest.raises(MissingError, match="CorDA needs the package 'attr'") as err:
        adapters.wrap(
            _base(tiny_model_dir), recipe, str(tiny_model_dir), examples=[{"input_ids": [3, 4, 5], "labels": [3, 4, 5]}]
        )
    assert err.value.hint == "pip install attrs"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU message")
def test_loftq_on_cpu_is_a_clear_recipe_error(tmp_path, tiny_model_dir):
    recipe_file = _recipe(
        tmp_path, tiny_model_dir, {"method": "loftq", "alpha": 8}, quantization={"load_in_4bit": True}
    )
    result = run_train(recipe_file)
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())
    assert "PEFT 0.21 computes the LoftQ initialisation on CUDA" in output and "fix:" in output


# ---------------------------------------------------------------- optimizers and schedules


@pytest.mark.parametrize(
    "optimizer", ["adamw_torch", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "adafactor", "sgd"]
)
def test_every_optimizer_steps_on_cpu(optimizer, tmp_path, tiny_model_dir):
    lr = 5e-2 if optimizer == "sgd" else 5e-3
    result = _train(_recipe(tmp_path, tiny_model_dir, training={"optimizer": optimizer, "lr": lr, "max_steps": 4}))
    assert result.record["status"] == "finished" and result.record["train"]["steps"] == 4
    b = [p for n, p in result.model.named_parameters() if "lora_B" in n]
    assert b and all(p.abs().sum() > 0 for p in b), f"{optimizer} did not step"
    assert all(math.isfinite(x) for x in _losses(tmp_path / "run"))


@pytest.mark.parametrize("scheduler", ["cosine", "linear", "constant", "constant_with_warmup"])
def test_schedulers_shape_the_learning_rate(scheduler, tmp_path, tiny_model_dir):
    lr, steps = 1e-2, 8
    _train(
        _recipe(
            tmp_path,
            tiny_model_dir,
            training={"scheduler": scheduler, "lr": lr, "max_steps": steps, "warmup_ratio": 0.25},
        )
    )
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rates = [r["learning_rate"] for r in rows if "learning_rate" in r]
    assert len(rates) >= steps - 1, rates
    peak = max(rates)
    assert peak == pytest.approx(lr)
    if scheduler == "constant":
        assert all(r == pytest.approx(lr) for r in rates)
        return
    assert rates[0] < lr, f"{scheduler}: warmup starts below the peak"
    top = rates.index(peak)
    assert all(x <= y for x, y in zip(rates[: top + 1], rates[1 : top + 1])), "warmup rises"
    after = rates[top:]
    if scheduler == "constant_with_warmup":
        assert all(r == pytest.approx(lr) for r in after)
    else:
        assert all(x >= y for x, y in zip(after, after[1:])) and after[-1] < 0.6 * lr, f"{scheduler} decays: {rates}"


def test_residual_init_methods_are_refused_under_sharding(tmp_path, tiny_model_dir):
    """FSDP / DeepSpeed save from a gathered state dict, from which PEFT cannot convert PiSSA: refused up front."""
    from types import SimpleNamespace

    from lorafit.core.errors import RecipeError
    from lorafit.train import trainer as train

    pissa, _ = _wrapped(tmp_path, tiny_model_dir, {"method": "pissa", "pissa_niter": 2})
    lora, _ = _wrapped(tmp_path, tiny_model_dir, {"method": "lora"})
    sharded, plain = (
        SimpleNamespace(is_fsdp_enabled=True, is_deepspeed_enabled=False),
        SimpleNamespace(is_fsdp_enabled=False, is_deepspeed_enabled=False),
    )
    with pytest.raises(RecipeError, match="--strategy ddp"):
        train.check_sharded_save(sharded, pissa, "pissa")
    train.check_sharded_save(sharded, lora, "lora")
    train.check_sharded_save(plain, pissa, "pissa")
