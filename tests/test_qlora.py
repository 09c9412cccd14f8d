"""QLoRA: a 4-bit (NF4, double-quantized) frozen base with LoRA on top, trained with a paged 8-bit optimizer.

bitsandbytes 0.50 runs 4-bit loading and the forward/backward on CPU, so the fast tests train the tiny model
(hidden size 64: bitsandbytes' 4-bit blocks need multiples of 64). The slow test does the same with the embedded
SmolLM2 through the CLI; the gpu tests need CUDA and skip cleanly without it.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console

from lorafit import models
from lorafit.models import adapters
from lorafit.recipe import load_recipe

from conftest import chat_records, run_train, tiny_recipe_text, write_jsonl

bnb = pytest.importorskip("bitsandbytes")
IDS = torch.tensor([[3, 10, 20, 30, 40, 50, 60, 70]])
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _recipe(
    tmp_path: Path,
    model_dir: Path,
    quantization: dict | None = None,
    training: dict | None = None,
    adapter: dict | None = None,
) -> Path:
    data = write_jsonl(tmp_path / "train.jsonl", chat_records(48))
    path = tmp_path / "recipe.yaml"
    path.write_text(
        tiny_recipe_text(
            model_dir,
            data,
            tmp_path / "run",
            data={"eval_split": None},
            adapter=adapter or {},
            quantization={"load_in_4bit": True, **(quantization or {})},
            training={"optimizer": "paged_adamw_8bit", **(training or {})},
        )
    )
    return path


def _losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def _lora_layers(model):
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def _bytes(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.contiguous().view(torch.uint8)


def _checkpointing(model) -> bool:
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


def test_qlora_nf4_double_quant_trains_on_cpu_and_reloads_onto_full_precision(tmp_path, tiny_model_dir, monkeypatch):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lorafit.train import pipeline as train

    frozen = {}
    real = adapters.wrap

    def spy(*args, **kwargs):
        model = real(*args, **kwargs)
        frozen.update({n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad})
        return model

    monkeypatch.setattr(adapters, "wrap", spy)
    recipe = load_recipe(_recipe(tmp_path, tiny_model_dir))
    result = train.run(recipe, console=Console(quiet=True), quiet=True)
    trained = result.model.eval()

    seen = _losses(tmp_path / "run")
    assert all(math.isfinite(x) for x in seen)
    assert sum(seen[-3:]) / 3 < sum(seen[:3]) / 3, seen

    # The base stayed 4-bit NF4 with double quantization, untouched by training; norms were upcast, nothing else trains.
    layers = _lora_layers(trained)
    assert len(layers) == 14
    for layer in layers:
        base = layer.get_base_layer()
        assert isinstance(base, bnb.nn.Linear4bit) and isinstance(base.weight, bnb.nn.Params4bit)
        assert base.weight.quant_state.quant_type == "nf4" and base.weight.quant_state.nested
    after = dict(trained.named_parameters())
    # bytes, not values: packed 4-bit data held in float32 containers has NaN bit patterns, and NaN != NaN
    changed = [n for n, before in frozen.items() if not torch.equal(_bytes(before), _bytes(after[n].detach()))]
    assert not changed, changed
    assert all(("lora_A" in n or "lora_B" in n) for n, p in trained.named_parameters() if p.requires_grad)
    norm = trained.get_base_model().model.norm.weight
    assert norm.dtype == torch.float32 and not norm.requires_grad
    assert not _checkpointing(trained), "gradient checkpointing stays off on CPU unless the recipe says on"
    train_block = result.record["train"]
    assert train_block["peak_memory_mb"] > 0 and train_block["steps"] == 12
    # 4-bit weights are counted as parameters, not packed bytes
    fp_params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_model_dir).parameters())
    trainable = sum(p.numel() for p in trained.parameters() if p.requires_grad)
    assert result.record["adapter"]["total_params"] == fp_params + trainable

    # The adapter loads onto the full-precision base; its weights are the trained ones, and it moves the output
    # the way it moved the 4-bit model's (up to the quantization error).
    fp_base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        fp_logits = fp_base(input_ids=IDS).logits
    reloaded = PeftModel.from_pretrained(fp_base, tmp_path / "run" / "adapter").eval()
    trained_lora = {n.replace(".base_layer", ""): p for n, p in trained.named_parameters() if "lora_" in n}
    for name, param in reloaded.named_parameters():
        if "lora_" in name:
            assert torch.equal(param, trained_lora[name].to(param.dtype)), name
    with torch.no_grad():
        q_logits = trained(input_ids=IDS).logits
        with trained.disable_adapter():
            q_base = trained(input_ids=IDS).logits
        fp_adapted = reloaded(input_ids=IDS).logits
    quant_gap = (q_base - fp_logits).abs().max()
    assert (fp_adapted - q_logits).abs().max() < 2 * quant_gap + 1e-3
    shift_q, shift_fp = (q_logits - q_base).flatten(), (fp_adapted - fp_logits).flatten()
    assert torch.nn.functional.cosine_similarity(shift_q, shift_fp, dim=0) > 0.9


@pytest.mark.parametrize(("setting", "expected"), [("auto", False), ("off", False), ("on", True)])
def test_kbit_preparation_turns_checkpointing_on_only_when_the_recipe_says(setting, expected, tmp_path, tiny_model_dir):
    if setting == "auto" and torch.cuda.is_available():
        expected = True
    recipe = load_recipe(_recipe(tmp_path, tiny_model_dir, training={"gradient_checkpointing": setting}))
    model = models.load_model(recipe, str(tiny_model_dir))
    assert getattr(model, "is_loaded_in_4bit", False)
    assert not any(p.requires_grad for p in model.parameters()), "prepare_model_for_kbit_training froze the base"
    assert _checkpointing(model) is expected


@pytest.mark.parametrize(("quant_type", "double_quant"), [("fp4", False), ("nf4", False), ("fp4", True)])
def test_quant_type_and_double_quant_reach_bitsandbytes(quant_type, double_quant, tmp_path, tiny_model_dir):
    recipe = load_recipe(_recipe(tmp_path, tiny_model_dir, {"quant_type": quant_type, "double_quant": double_quant}))
    model = models.load_model(recipe, str(tiny_model_dir))
    q = model.model.layers[0].mlp.down_proj
    assert isinstance(q, bnb.nn.Linear4bit)
    assert q.weight.quant_state.quant_type == quant_type and bool(q.weight.quant_state.nested) is double_quant
    assert q.compute_dtype == torch.float32  # compute_dtype auto follows the model dtype: float32 on CPU


def test_8bit_base_trains_on_cpu(tmp_path, tiny_model_dir):
    from lorafit.train import pipeline as train

    recipe = load_recipe(
        _recipe(
            tmp_path,
            tiny_model_dir,
            {"load_in_4bit": False, "load_in_8bit": True},
            {"max_steps": 3, "optimizer": "adamw_8bit"},
        )
    )
    result = train.run(recipe, console=Console(quiet=True), quiet=True)
    assert all(isinstance(m.get_base_layer(), bnb.nn.Linear8bitLt) for m in _lora_layers(result.model))
    assert result.record["status"] == "finished" and all(math.isfinite(x) for x in _losses(tmp_path / "run"))
    assert all(p.abs().sum() > 0 for n, p in result.model.named_parameters() if "lora_B" in n)


def test_a_bitsandbytes_without_kernels_for_the_device_is_a_clear_error(tmp_path, tiny_model_dir, monkeypatch):
    import bitsandbytes.functional as bnbf

    def no_kernel(*args, **kwargs):
        raise NotImplementedError("Could not run 'bitsandbytes::quantize_4bit' with arguments from the 'CPU' backend.")

    monkeypatch.setattr(bnbf, "quantize_4bit", no_kernel)
    result = run_train(_recipe(tmp_path, tiny_model_dir))
    assert result.exit_code == 7, result.output
    output = " ".join(result.output.split())
    assert f"bitsandbytes {bnb.__version__} has no 4-bit kernels for this cpu device" in output
    assert (
        "fix: install a bitsandbytes build with a backend for it" in output
        and "quantization.load_in_4bit: false" in output
    )
    assert "Traceback" not in result.output


def test_missing_bitsandbytes_is_a_clear_error(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import bitsandbytes -> ImportError
    result = run_train(_recipe(tmp_path, tiny_model_dir))
    assert result.exit_code == 7, result.output
    assert "quantization needs bitsandbytes" in result.output and "pip install" in result.output


@pytest.mark.slow
def test_qlora_on_the_embedded_model_through_the_cli(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "qlora"
    held_out = tmp_path / "held_out.jsonl"  # 16 of the quickstart's 112: 4-bit matmuls are slow on a CPU
    held_out.write_text("".join((root / "recipes" / "data" / "warehouse_eval.jsonl").read_text().splitlines(True)[:16]))
    result = run_train(
        root / "recipes" / "quickstart.yaml",
        f"data.eval={held_out}",
        "training.compile=off",
        "training.max_steps=3",
        "training.max_length=128",
        "training.batch_size=4",
        "quantization.load_in_4bit=true",
        "training.optimizer=paged_adamw_8bit",
        f"output.dir={out}",
    )
    assert result.exit_code == 0, result.output
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "finished" and record["train"]["steps"] == 3
    assert record["adapter"]["matched_modules"]["q_proj"] == 30
    assert all(math.isfinite(x) for x in _losses(out))
    assert record["eval"]["loss_after"] < record["eval"]["loss_before"]
    base = AutoModelForCausalLM.from_pretrained(
        models.embedded_dir("embedded:smollm2-135m-instruct"), dtype=torch.float32
    )
    reloaded = PeftModel.from_pretrained(base, out / "adapter").eval()
    with torch.no_grad():
        logits = reloaded(input_ids=torch.tensor([[1, 2, 3, 4]])).logits
    assert torch.isfinite(logits).all()


@cuda
@pytest.mark.gpu
def test_qlora_on_cuda_in_bf16_with_paged_adamw_8bit(tmp_path, tiny_model_dir):
    from lorafit.train import pipeline as train

    recipe = load_recipe(_recipe(tmp_path, tiny_model_dir, training={"max_steps": 12}))
    result = train.run(recipe, console=Console(quiet=True), quiet=True)
    seen = _losses(tmp_path / "run")
    assert sum(seen[-3:]) / 3 < sum(seen[:3]) / 3, seen
    base = _lora_layers(result.model)[0].get_base_layer()
    assert isinstance(base, bnb.nn.Linear4bit) and base.weight.device.type == "cuda"
    assert result.record["train"]["peak_memory_mb"] > 0


@cuda
@pytest.mark.gpu
def test_loftq_reduces_the_4bit_error_on_cuda(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    recipe = load_recipe(_recipe(tmp_path, tiny_model_dir, adapter={"method": "loftq", "r": 16, "alpha": 16}))
    ids = IDS.cuda()
    with torch.no_grad():
        full = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).cuda()(input_ids=ids).logits
        model = adapters.wrap(models.load_model(recipe, str(tiny_model_dir)), recipe, str(tiny_model_dir)).eval()
        with_loftq = model(input_ids=ids).logits.float()
        with model.disable_adapter():
            plain_4bit = model(input_ids=ids).logits.float()
    assert (with_loftq - full).abs().mean() < (plain_4bit - full).abs().mean()
