"""lorafit.plan: the seeds' hand-computed memory figures, exact LoRA counts, and monotonicity.

Seed figures are for nominal parameter counts ("70B"), so they are checked two ways: the estimator's
bytes-per-parameter times the nominal count (exact), and a real shape of that size (within a few %).
"""

import subprocess
import sys

import pytest

from lorafit.models import plan, recipe_plan
from lorafit.models.plan import (
    ModelShape,
    compare_methods,
    estimate,
    format_bytes,
    lora_params,
    max_batch_size,
    nf4_bits_per_param,
)

GB = 1e9
SMOL = ModelShape(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    head_dim=64,
    tie_word_embeddings=True,
)
LLAMA2_7B = ModelShape(32000, 4096, 11008, 32, 32, 32)
LLAMA3_8B = ModelShape(128256, 4096, 14336, 32, 32, 8)
LLAMA_65B = ModelShape(32000, 8192, 22016, 80, 64, 64)
LLAMA2_70B = ModelShape(32000, 8192, 28672, 80, 64, 8)
# Seed 000's "toy transformer block": 4096 square attention, 11008-wide MLP; one layer.
TOY = ModelShape(32000, 4096, 11008, 1, 32, 32)
# Hand-made: h=8, heads 2 x 4 (q 8 wide), one kv head (k, v 4 wide), i=12, 3 layers.
TINY = ModelShape(
    vocab_size=10,
    hidden_size=8,
    intermediate_size=12,
    num_hidden_layers=3,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=4,
)


def state_per_param(plan):
    return plan.model_state / plan.total_params


# --- parameter counts -----------------------------------------------------------------------------


def test_smollm2_params():
    assert SMOL.params() == 134_515_008  # ~134.5M, what transformers reports for SmolLM2-135M
    assert LLAMA2_7B.params() == 6_738_415_616
    assert LLAMA3_8B.params() == 8_030_261_248


def test_from_config_matches_and_defaults():
    cfg = {
        "model_type": "llama",
        "vocab_size": 49152,
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "head_dim": 64,
        "tie_word_embeddings": True,
        "rms_norm_eps": 1e-5,
    }
    assert ModelShape.from_config(cfg) == SMOL
    bare = ModelShape.from_config(
        {k: v for k, v in cfg.items() if k not in ("head_dim", "num_key_value_heads", "tie_word_embeddings")}
    )
    assert (bare.head, bare.num_key_value_heads, bare.tie_word_embeddings) == (64, 9, False)
    qwen = ModelShape.from_config({**cfg, "model_type": "qwen2"})
    assert qwen.params() - SMOL.params() == 30 * (576 + 2 * 192)  # q/k/v biases
    assert ModelShape.from_config({"model_type": "vlm", "text_config": cfg}).hidden_size == 576
    with pytest.raises(ValueError, match="intermediate_size"):
        ModelShape.from_config({k: v for k, v in cfg.items() if k != "intermediate_size"})


def test_tiny_params_by_hand():
    # embed 10*8 twice (untied) + 3 * (linears 64+32+32+64+96*3 + norms 16) + final norm 8
    assert TINY.params() == 160 + 3 * (480 + 16) + 8


def test_lora_counts_by_hand():
    # r*(in+out): q 2*(8+8)=32, k 2*(8+4)=24, v 24, o 32, gate 2*(8+12)=40, up 40, down 40
    assert lora_params(TINY, 2, "all-linear") == 3 * 232
    assert lora_params(TINY, 2, "attention") == 3 * 112
    assert lora_params(TINY, 2, "qv") == 3 * 56
    assert lora_params(TINY, 2, "mlp") == 3 * 120
    assert lora_params(TINY, 2, ["k_proj", "down_proj"]) == 3 * 64
    assert lora_params(TINY, 2, "o_proj") == 3 * 32
    # DoRA: one magnitude per output feature of each adapted linear: 8+4+4+8+12+12+8
    assert lora_params(TINY, 2, dora=True) - lora_params(TINY, 2) == 3 * 56
    for targets in ("all-linear", "qv", ["up_proj"]):
        for dora in (False, True):
            assert estimate(TINY, r=2, targets=targets, dora=dora).trainable_params == lora_params(
                TINY, 2, targets, dora
            )
    assert estimate(TINY, method="full").trainable_params == TINY.params()


def test_seed000_single_matrix_and_toy_block():
    # 000: "LoRA r=16 trains 131,072 params, 0.78% of full fine-tuning." (full_params=16,777,216)
    q = lora_params(TOY, 16, ["q_proj"])
    assert q == 131_072 and round(q / 4096**2 * 100, 2) == 0.78
    # 000 table: r=8 65.5K (0.39%), r=64 524K (3.1%); 003: "r=8 ... 65,536 ... a 256x reduction"
    assert lora_params(TOY, 8, ["q_proj"]) == 65_536 and 4096**2 // 65_536 == 256
    assert round(lora_params(TOY, 64, ["q_proj"]) / 1e3) == 524
    # 000 toy block: "qv_adapter_params= 262144", "all_linear_adapter_params= 1249280", ratio 4.77
    assert lora_params(TOY, 16, "qv") == 262_144
    assert lora_params(TOY, 16, "all-linear") == 1_249_280
    assert round(1_249_280 / 262_144, 2) == 4.77
    # 000 rank sweep: "r=  4 params= 312,320" ... "r=256 params=19,988,480"
    assert [lora_params(TOY, r) for r in (4, 8, 16, 64, 256)] == [312_320, 624_640, 1_249_280, 4_997_120, 19_988_480]
    # 000 DoRA: "dora_extra_magnitude_params= 4096", "dora_extra_vs_lora=3.12%"
    extra = lora_params(TOY, 16, ["q_proj"], dora=True) - q
    assert extra == 4096 and f"{extra / q:.2%}" == "3.12%"


def test_seed002_rank_table_is_attention_targeting():
    # 002 rank table (7B): ~4M/8M/16M/33M/67M/268M, and "trainable params: 16,777,216" -- these
    # are q,k,v,o at r=4..256 on Llama-2-7B; the seed labels the 16.7M print "all linear layers".
    counts = [lora_params(LLAMA2_7B, r, "attention") for r in (4, 8, 16, 32, 64, 256)]
    assert [round(c / 1e6) for c in counts] == [4, 8, 17, 34, 67, 268]  # seed rounds 16.8M/33.6M down
    assert counts[2] == 16_777_216
    assert lora_params(LLAMA2_7B, 16, "all-linear") == 32 * 1_249_280  # what all-linear really gives


def test_seed001_llama3_print_is_rank_32():
    # 001 prints "trainable params: 83,886,080" for r=16 all-linear on Llama-3-8B; that is r=32.
    assert lora_params(LLAMA3_8B, 16) == 41_943_040
    assert lora_params(LLAMA3_8B, 32) == 83_886_080


# --- the seeds' memory figures --------------------------------------------------------------------


def test_seed000_70b_full_ft_12_and_16_byte_recipes():
    full = estimate(LLAMA2_70B, method="full", weight_bytes=2)
    n = full.total_params
    # "bytes_per_parameter_without_master= 12": fp16 params 2 + fp16 grads 2 + fp32 Adam moments 8
    assert (full.weights / n, full.gradients / n, full.optimizer / n) == (2, 2, 8)
    assert state_per_param(full) == 12
    master = estimate(LLAMA2_70B, method="full", weight_bytes=2, master_weights=True)
    assert state_per_param(master) == 16  # 003: "~16 bytes/param"
    # "full_finetuning_states_without_master_GB= 840", "..._with_master_GB= 1120" for a nominal 70B
    assert 70e9 * state_per_param(full) / GB == 840
    assert 70e9 * state_per_param(master) / GB == 1120
    assert 70e9 * full.weights / n / GB == 140 and 70e9 * full.optimizer / n / 2 / GB == 280  # table rows
    # the real 69.0B Llama-2-70B shape lands within 2%
    assert full.model_state / GB == pytest.approx(840, rel=0.02)
    assert master.model_state / GB == pytest.approx(1120, rel=0.02)


def test_seed000_lora_frozen_base_floor():
    # "frozen_fp16_base_floor_for_lora_GB= 140" (70B); 65B: "bf16_frozen_base_floor_GB=130.0" (also 003)
    for shape, nominal, floor in ((LLAMA2_70B, 70e9, 140), (LLAMA_65B, 65e9, 130)):
        lora = estimate(shape, method="lora", weight_bytes=2)
        assert nominal * lora.weights / shape.params() / GB == floor
        assert lora.weights / GB == pytest.approx(floor, rel=0.02)
        assert lora.model_state > lora.weights  # "plus adapters and runtime memory"


def test_seed000_65b_full_and_nf4():
    full = estimate(LLAMA_65B, method="full", weight_bytes=2)
    assert 65e9 * state_per_param(full) / GB == 780  # "780 GB model states"
    # "nf4_raw_payload_GB=32.5", "nf4_plus_quant_constants_GB=33.5" (0.127 bit/param double quant)
    assert 65e9 * 4 / 8 / GB == 32.5
    assert round(65e9 * nf4_bits_per_param(True) / 8 / GB, 1) == 33.5
    q = estimate(LLAMA_65B, method="qlora", weight_bytes=2)
    # the shape keeps embeddings and lm_head in bf16 (~0.5 GB) on top of the all-NF4 arithmetic
    assert (q.weights + q.quant_constants) / GB == pytest.approx(33.5, rel=0.04)
    # QLoRA paper via 000/002/004: 65B fine-tuned on one 48 GB GPU
    small = estimate(
        LLAMA_65B,
        method="qlora",
        weight_bytes=2,
        batch_size=1,
        seq_len=512,
        gradient_checkpointing=True,
        optimizer="paged_adamw_8bit",
        device="cuda",
    )
    assert small.total < 48 * GB


def test_seed002_double_quant_bits():
    # 002: "Reduces overhead from 0.5 to 0.127 bits/parameter"; 004: "saving another 0.4 bits"
    assert nf4_bits_per_param(False) - 4 == 0.5
    assert nf4_bits_per_param(True) - 4 == pytest.approx(0.127, abs=5e-4)
    assert round(nf4_bits_per_param(False) - nf4_bits_per_param(True), 1) == 0.4
    with_dq = estimate(SMOL, method="qlora", double_quant=True).quant_constants
    without = estimate(SMOL, method="qlora", double_quant=False).quant_constants
    assert with_dq / without == pytest.approx(0.127 / 0.5, rel=0.01)


def test_seed002_70b_table():
    # "LoRA (fp16 base) ~140 GB + adapters", "QLoRA (4-bit base) ~35 GB", "~67M (0.1%)" trainable
    plans = compare_methods(LLAMA2_70B, batch_size=1, seq_len=512, gradient_checkpointing=True, device="cuda")
    assert plans["lora"].weights / GB == pytest.approx(140, rel=0.02)
    assert plans["qlora"].weights / GB == pytest.approx(35, rel=0.05)
    assert lora_params(LLAMA2_70B, 16, "attention") / 1e6 == pytest.approx(67, rel=0.03)
    # 001/002: "A 70B model fits in 48 GB" with QLoRA
    assert plans["qlora"].total < 48 * GB


def test_seed001_7b_figures():
    lora = estimate(LLAMA2_7B, method="lora", weight_bytes=2)
    assert lora.weights / GB == pytest.approx(14, rel=0.05)  # "roughly 14 GB just for weights" (001, 004)
    q = estimate(LLAMA2_7B, method="qlora", weight_bytes=2)
    assert (q.weights + q.quant_constants) / GB == pytest.approx(4, rel=0.1)  # "fits in ~4 GB in NF4"
    full = estimate(LLAMA2_7B, method="full", weight_bytes=2, batch_size=4, seq_len=2048, device="cuda")
    assert full.model_state > 80 * GB  # "Total can exceed 80-100 GB"
    # "A 7B LoRA run fits comfortably in 18-24 GB": plausibility band at the seed's batch 4 x 2048
    run = estimate(
        LLAMA2_7B,
        method="lora",
        weight_bytes=2,
        batch_size=4,
        seq_len=2048,
        gradient_checkpointing=True,
        device="cuda",
        lm_head="chunked",
    )
    assert 18 * GB < run.total < 24 * GB


def test_seed004_adam_state_is_twice_fp32_params():
    p = estimate(SMOL, method="lora", optimizer="adamw_torch")
    assert p.optimizer == 2 * p.adapter  # "The optimizer state for AdamW is 2x the size of the parameters"


# --- optimizers and breakdown -----------------------------------------------------------------------


def test_optimizer_state_sizes():
    by = {
        o: estimate(SMOL, optimizer=o).optimizer
        for o in ("adamw_torch", "paged_adamw_32bit", "adamw_8bit", "paged_adamw_8bit", "adafactor", "sgd")
    }
    n = estimate(SMOL).trainable_params
    assert by["adamw_torch"] == by["paged_adamw_32bit"] == 8 * n
    # 8-bit moments, except k/v's B (192 x 16 = 3072 < 4096 elements) which stay 32-bit: 6 B more each
    assert by["adamw_8bit"] == by["paged_adamw_8bit"] == 2 * n + 6 * (2 * 3072) * 30
    assert by["sgd"] == 0
    assert 0 < by["adafactor"] < by["adamw_8bit"]
    # full FT with 8-bit Adam: the embedding keeps 32-bit state (HF Trainer), the rest 8-bit (or tiny)
    full8 = estimate(SMOL, method="full", optimizer="adamw_8bit").optimizer
    emb = SMOL.vocab_size * SMOL.hidden_size
    assert 8 * emb + 2 * (SMOL.params() - emb) < full8 < 8 * emb + 2 * SMOL.params()


def test_breakdown_adds_up_and_formats():
    for p in compare_methods(SMOL, weight_bytes=4).values():
        parts = (p.weights, p.quant_constants, p.adapter, p.gradients, p.optimizer, p.activations, p.logits, p.overhead)
        assert p.total == pytest.approx(sum(parts))
        assert p.tokens == 8 * 512
    full = estimate(SMOL, method="full")
    assert full.adapter == 0 and full.gradients == full.weights  # fp32 grads for fp32 weights
    assert full.logits == plan.LOGITS_COPIES * 8 * 512 * SMOL.vocab_size * 4
    fused = estimate(SMOL, method="full", lm_head="chunked")
    assert fused.logits == plan.LOGITS_COPIES * plan.FUSED_CHUNK_TOKENS * SMOL.vocab_size * 4
    trained = estimate(SMOL, method="full", lm_head="trained", trained_fraction=0.25)
    assert trained.logits == full.logits / 4
    # the head's matmul (vocab x hidden per token, forward and input-gradient) runs on a quarter of the tokens
    head_flops = 3 * 2 * SMOL.vocab_size * SMOL.hidden_size * 8 * 512
    assert full.flops - trained.flops == pytest.approx(head_flops * 0.75)
    assert format_bytes(840e9) == "840.0 GB" and format_bytes(262_144) == "0.3 MB"
    assert format_bytes(1.5e9) == "1.5 GB" and format_bytes(500e6) == "500.0 MB"


def test_activation_formula_by_hand():
    # per token per layer 4h + 2q + 2kv + 4i = 32 + 16 + 8 + 48 = 104, + 2h (norms) for full FT
    p = estimate(TINY, method="full", batch_size=1, seq_len=1, weight_bytes=4)
    k = plan.ACTIVATION_SCALE  # calibrated multiplier for backward temporaries
    assert p.activations == pytest.approx(k * (3 * (104 + 16) + 2 * 8) * 4)
    ck = estimate(TINY, method="full", batch_size=1, seq_len=1, weight_bytes=4, gradient_checkpointing=True)
    assert ck.activations == pytest.approx(
        k * (3 * 8 + (104 + 16) + 2 * 8) * 4
    )  # layer inputs + one layer + final norm
    # LoRA adds r per adapter (A's output); dropout adds each adapter's input copy and a byte mask
    lo = estimate(TINY, r=2, batch_size=1, seq_len=1, weight_bytes=4)
    assert lo.activations == pytest.approx(k * (3 * (104 + 2 * 7) + 2 * 8) * 4)
    drop = estimate(TINY, r=2, batch_size=1, seq_len=1, weight_bytes=4, lora_dropout=0.05)
    ins = 8 + 8 + 8 + 8 + 8 + 8 + 12
    assert drop.activations - lo.activations == pytest.approx(k * 3 * ins * 5)


# --- monotonicity -----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [SMOL, LLAMA2_7B])
def test_methods_order(shape):
    plans = compare_methods(shape, batch_size=1, seq_len=256)
    assert plans["qlora"].total < plans["lora"].total < plans["full"].total
    assert plans["qlora"].model_state < plans["lora"].model_state < plans["full"].model_state
    assert plans["lora"].flops < plans["full"].flops


def test_monotone_in_batch_seq_rank_and_checkpointing():
    totals = [estimate(SMOL, batch_size=b).total for b in (1, 2, 4, 8, 16)]
    assert totals == sorted(totals) and len(set(totals)) == len(totals)
    assert estimate(SMOL, seq_len=1024).total > estimate(SMOL, seq_len=512).total
    assert estimate(SMOL, r=32).trainable_params == 2 * estimate(SMOL, r=16).trainable_params
    for method in ("full", "lora", "qlora"):
        on = estimate(SMOL, method=method, gradient_checkpointing=True)
        off = estimate(SMOL, method=method, gradient_checkpointing=False)
        assert on.activations < off.activations / 5 and on.flops > off.flops
    assert estimate(SMOL, lora_dropout=0.05).activations > estimate(SMOL).activations
    assert estimate(SMOL, weight_bytes=2).total < estimate(SMOL, weight_bytes=4).total
    assert estimate(SMOL, weight_bytes=4, activation_bytes=2).activations == estimate(SMOL, weight_bytes=2).activations


def test_flops_close_to_six_n_for_full():
    p = estimate(LLAMA2_7B, method="full", weight_bytes=2, batch_size=1, seq_len=512)
    assert p.flops / (6 * LLAMA2_7B.params() * p.tokens) == pytest.approx(1.0, rel=0.05)


# --- max_batch_size ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(method="full", seq_len=256),
        dict(method="qlora", weight_bytes=2, gradient_checkpointing=True, device="cuda"),
    ],
)
@pytest.mark.parametrize("budget_gb", [2, 8, 24])
def test_max_batch_size_is_the_boundary(kw, budget_gb):
    budget = budget_gb * GB
    b = max_batch_size(SMOL, budget, **kw)
    if b:
        assert estimate(SMOL, batch_size=b, **kw).total <= budget
    assert estimate(SMOL, batch_size=b + 1, **kw).total > budget


def test_max_batch_size_zero_and_limit():
    assert max_batch_size(SMOL, 100e6) == 0  # below the runtime baseline alone
    assert max_batch_size(TINY, 1e15, limit=64, seq_len=1) == 64
    assert max_batch_size(TINY, 1e15, limit=100, seq_len=1) == 100
    assert max_batch_size(TINY, 1e15, limit=1, seq_len=1) == 1


# --- errors and import cost -------------------------------------------------------------------------


def test_errors_name_the_valid_choices():
    with pytest.raises(ValueError, match="lora"):
        estimate(SMOL, method="prefix")
    with pytest.raises(ValueError, match="adamw_8bit"):
        estimate(SMOL, optimizer="lion")
    with pytest.raises(ValueError, match="q_proj"):
        lora_params(SMOL, 16, ["query"])
    with pytest.raises(ValueError, match="4-bit"):
        estimate(SMOL, method="full", load_in_4bit=True)
    assert estimate(SMOL, method="lora", load_in_4bit=True) == estimate(SMOL, method="qlora")


def test_import_is_light():
    code = "import sys, lorafit.models.plan; bad = {'torch', 'transformers', 'peft'} & set(sys.modules); assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_plan_inputs_bound_the_trained_positions_by_the_most_trained_example():
    from lorafit.data import DataStats

    stats = DataStats(lengths=[100, 182], tokens=282, trained_tokens=100, most_trained=99)
    assert stats.plan_inputs(512) == {"seq_len": 182, "trained_fraction": 99 / 182}
    assert stats.plan_inputs(150)["trained_fraction"] == 99 / 150  # examples are cut to max_length first
    old_cache = DataStats(lengths=[100, 182], tokens=282, trained_tokens=100)  # written before most_trained existed
    assert old_cache.plan_inputs(512)["trained_fraction"] == 100 / 282
    assert DataStats().plan_inputs(512) == {"seq_len": None, "trained_fraction": 1.0}


def test_mixture_of_experts_configs_are_not_planned_as_dense():
    """Every expert is resident: reading Mixtral as a dense 7B model would say it fits when it does not."""
    from lorafit.models.plan import ModelShape

    mixtral = {
        "vocab_size": 32000,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "num_local_experts": 8,
    }
    with pytest.raises(ValueError, match="mixture-of-experts"):
        ModelShape.from_config(mixtral)


# --- preference objectives ---------------------------------------------------------------------------


def test_logprob_head_is_tiles_of_trls_fused_head():
    """DPO / KTO score through TRL's fused log-prob head: tiles of up to 4096 positions x 32768 vocabulary entries,
    every position on CPU, the trained ones on CUDA (Triton)."""
    tile = lambda n: min(n, plan.LOGPROB_TILE_TOKENS) * min(SMOL.vocab_size, plan.LOGPROB_TILE_VOCAB) * 4  # noqa: E731
    cpu = estimate(SMOL, lm_head="logprob", batch_size=2, seq_len=100, trained_fraction=0.5)
    assert cpu.logits == pytest.approx(plan.LOGPROB_TILE_COPIES["cpu"] * tile(200))
    cuda = estimate(SMOL, lm_head="logprob", batch_size=2, seq_len=100, trained_fraction=0.5, device="cuda")
    assert cuda.logits == pytest.approx(plan.LOGPROB_TILE_COPIES["cuda"] * tile(100))
    big = estimate(SMOL, lm_head="logprob", batch_size=64, seq_len=512)
    assert big.logits == pytest.approx(plan.LOGPROB_TILE_COPIES["cpu"] * tile(4096))  # bounded by one tile
    assert big.logits < estimate(SMOL, lm_head="full", batch_size=64, seq_len=512).logits / 3


def test_reference_kinds():
    base = estimate(SMOL, r=16, lm_head="logprob")
    assert estimate(SMOL, r=16, lm_head="logprob", reference="disabled") == base
    assert estimate(SMOL, r=16, lm_head="logprob", reference="precomputed") == base
    copied = estimate(SMOL, r=16, lm_head="logprob", reference="adapter")
    assert copied.adapter == 2 * base.adapter and copied.weights == base.weights
    second = estimate(SMOL, r=16, lm_head="logprob", reference="model")
    assert second.weights == 2 * base.weights
    with pytest.raises(ValueError, match="precomputed"):
        estimate(SMOL, reference="copy")


def test_recipe_settings_of_a_dpo_run(tmp_path, tiny_model_dir):
    """The plan fields a DPO recipe gets: both rows of each pair, no dropout, TRL's log-prob head, and where the
    reference lives (the adapter switched off, TRL's copy of a continued adapter, a second model, precomputed)."""
    from lorafit import models
    from lorafit.recipe import load_recipe

    from conftest import pair_records, tiny_recipe_text, write_jsonl

    data = write_jsonl(tmp_path / "pairs.jsonl", pair_records(4))
    parent = tmp_path / "parent"

    def settings(**sections):
        training = {"objective": "dpo", "batch_size": 3, **sections.pop("training", {})}
        path = tmp_path / "dpo.yaml"
        path.write_text(tiny_recipe_text(tiny_model_dir, data, tmp_path / "run", training=training, **sections))
        recipe = load_recipe(path)
        return recipe_plan.recipe_settings(recipe, models.model_config(recipe), "cpu")

    fresh = settings(adapter={"dropout": 0.1})
    assert fresh["batch_size"] == 6 and fresh["lora_dropout"] == 0.0
    assert fresh["lm_head"] == "logprob" and fresh["reference"] == "disabled"
    assert settings(preference={"precompute_ref_log_probs": True})["reference"] == "precomputed"
    parent.mkdir()
    assert settings(adapter={"init_from": str(parent)})["reference"] == "adapter"
    assert settings(adapter={"init_from": str(parent)}, preference={"reference": "base"})["reference"] == "model"
    assert settings(training={"objective": "simpo", "group_by_length": False})["lm_head"] == "full"
