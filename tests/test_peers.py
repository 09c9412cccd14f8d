"""Peer vocabulary in recipe errors: axolotl / LLaMA-Factory / torchtune / TRL / unsloth spellings name the lorafit
field and what the peer setting means here; keys in the wrong section point at the right one. Schema only."""

import pytest

from lorafit.core.errors import RecipeError
from lorafit.recipe import Recipe, load_recipe, parse_override, peers


def _errors(tmp_path, text: str) -> str:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    return str(info.value)


def _field_exists(path: str) -> bool:
    section, _, name = path.partition(".")
    model = Recipe.model_fields.get(section)
    inner = model.annotation if model else None
    fields = getattr(inner, "model_fields", None)
    if fields is None:  # preference: Optional
        fields = getattr(
            next((a for a in getattr(inner, "__args__", ()) if hasattr(a, "model_fields")), None), "model_fields", {}
        )
    return name in fields


def test_every_lorafit_field_the_table_names_exists():
    named = {p.field for p in peers.KEYS.values() if p.field}
    named |= {path for values in peers.VALUES for path in [values]}
    named |= {path for values in peers.VALUES.values() for v in values.values() for path in v.settings or {}}
    missing = sorted(path for path in named if not _field_exists(path))
    assert missing == []


@pytest.mark.parametrize(
    ("yaml_text", "line", "expected"),
    [
        (
            "training:\n  learning_rate: 2e-4\n",
            4,
            "training.learning_rate: unknown field; learning_rate (axolotl / "
            "LLaMA-Factory / TRL) is the peak learning rate: write training.lr: 0.0002",
        ),
        (
            "training:\n  micro_batch_size: 2\n",
            4,
            "micro_batch_size (axolotl) is the micro-batch per device: write training.batch_size: 2",
        ),
        ("training:\n  gradient_accumulation_steps: 8\n", 4, "write training.grad_accum: 8"),
        (
            "training:\n  sequence_len: 2048\n",
            4,
            "sequence_len (axolotl) is the longest example in tokens: write training.max_length: 2048",
        ),
        (
            "training:\n  cutoff_len: 1024\n",
            4,
            "cutoff_len (LLaMA-Factory) is the longest example in tokens: write training.max_length: 1024",
        ),
        ("training:\n  max_seq_length: 512\n", 4, "max_seq_length (TRL / unsloth)"),
        (
            "adapter:\n  lora_r: 8\n",
            4,
            "adapter.lora_r: unknown field; lora_r (axolotl / TRL) is the LoRA rank: write adapter.r: 8",
        ),
        ("adapter:\n  lora_rank: 8\n", 4, "lora_rank (LLaMA-Factory) is the LoRA rank: write adapter.r: 8"),
        ("adapter:\n  lora_alpha: 16\n", 4, "write adapter.alpha: 16"),
        ("adapter:\n  lora_dropout: 0.1\n", 4, "write adapter.dropout: 0.1"),
        ("adapter:\n  lora_target_modules: [q_proj, v_proj]\n", 4, "write adapter.target_modules: [q_proj, v_proj]"),
        (
            "adapter:\n  lora_target: all\n",
            4,
            "lora_target (LLaMA-Factory) is the modules adapted (`all`: every linear "
            "layer): write adapter.target_modules: all-linear",
        ),
        ("data:\n  val_set_size: 0.05\n  train: d.jsonl\n", 2, "write data.eval_split: 0.05"),
        ("data:\n  val_set_size: 200\n  train: d.jsonl\n", 2, "200 held-out rows: lorafit holds out a fraction"),
        (
            "training:\n  num_epochs: 2\n",
            4,
            "num_epochs (axolotl) is passes over the training data: write training.epochs: 2",
        ),
        ("training:\n  num_train_epochs: 3\n", 4, "write training.epochs: 3"),
        (
            "training:\n  evals_per_epoch: 4\n",
            4,
            "evals_per_epoch (axolotl) is evaluations per epoch: write training.eval_every: 0.25epoch",
        ),
        ("training:\n  saves_per_epoch: 1\n", 4, "write training.save_every: 1epoch"),
        ("training:\n  lr_scheduler: cosine\n", 4, "write training.scheduler: cosine"),
        (
            "training:\n  train_on_inputs: true\n",
            4,
            "train_on_inputs (axolotl) is loss on the prompt too: write data.train_on: all",
        ),
        (
            "model:\n  lora_rank: 8\n",
            4,
            "model.lora_rank: unknown field; model.lora_rank (torchtune) is the LoRA rank: write adapter.r: 8",
        ),
        (
            "base_model: meta-llama/Llama-3.2-1B\n",
            3,
            "base_model (axolotl) is the base model (hub id or directory): write model.name: meta-llama/Llama-3.2-1B",
        ),
        (
            "adapter: qlora\n",
            3,
            "adapter (axolotl) is the adapter (lora, qlora): write adapter.method: lora + "
            "quantization.load_in_4bit: true",
        ),
        (
            "deepspeed: zero2.json\n",
            3,
            "deepspeed (axolotl / LLaMA-Factory / TRL): multi-GPU sharding is chosen at "
            "launch, not in the recipe: `lorafit launch RECIPE --strategy fsdp`",
        ),
    ],
)
def test_peer_keys_name_the_lorafit_field(tmp_path, yaml_text, line, expected):
    text = _errors(
        tmp_path, "data:\n  train: d.jsonl\n" + yaml_text if not yaml_text.startswith("data:") else yaml_text
    )
    assert expected in text, text
    assert f"r.yaml:{line}:" in text
    assert "did you mean" not in text  # no string-similar guess beside the peer meaning


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        (
            "adapter:\n  method",
            "qlora",
            "'qlora' (axolotl) is QLoRA, which is LoRA on a 4-bit base: write "
            "adapter.method: lora + quantization.load_in_4bit: true",
        ),
        ("adapter:\n  method", "full", "'full' (LLaMA-Factory): full fine-tuning: lorafit trains adapters only"),
        ("training:\n  optimizer", "adamw_bnb_8bit", "write training.optimizer: adamw_8bit"),
        ("training:\n  optimizer", "paged_lion_8bit", "no equivalent optimizer"),
        ("training:\n  scheduler", "cosine_with_min_lr", "no equivalent schedule: lorafit has cosine, linear"),
        ("model:\n  dtype", "bf16", "'bf16' (torchtune) is bfloat16: write model.dtype: bfloat16"),
        ("data:\n  format", "chat_template", "write data.format: messages"),
    ],
)
def test_peer_values_say_what_they_mean_here(tmp_path, field, value, expected):
    text = _errors(tmp_path, f"data:\n  train: d.jsonl\n{field}: {value}\n")
    assert expected in text, text
    assert "did you mean" not in text


def test_keys_in_the_wrong_section_point_at_the_right_one(tmp_path):
    text = _errors(
        tmp_path, "data:\n  train: d.jsonl\n  lr: 1e-4\ntraining:\n  load_in_4bit: true\nseed: 7\npacking: true\n"
    )
    lines = text.splitlines()
    assert (
        "r.yaml:3: data.lr: unknown field; lr is a field of the training section: move it there (training.lr)"
        in lines[0]
    )
    assert (
        "r.yaml:5: training.load_in_4bit: unknown field; load_in_4bit is a field of the quantization section: move it there (quantization.load_in_4bit)"
        in text
    )
    assert (
        "r.yaml:6: seed: unknown field; seed is a field of the training section: move it there (training.seed)" in text
    )
    assert (
        "r.yaml:7: packing: unknown field; packing is a field of the data section: move it there (data.packing)" in text
    )


def test_set_overrides_get_the_peer_meaning_too():
    with pytest.raises(RecipeError) as info:
        parse_override("training.learning_rate=1e-4")
    assert (
        info.value.hint
        == "learning_rate (axolotl / LLaMA-Factory / TRL) is the peak learning rate: write training.lr: 0.0001"
    )
    with pytest.raises(RecipeError, match="did you mean 'training.max_steps'"):
        parse_override("training.max_step=3")  # not a peer spelling: the closest lorafit name


def test_own_rules_carry_their_fix_without_the_generic_suffix(tmp_path):
    text = _errors(tmp_path, "data:\n  train: d.jsonl\nadapter:\n  alpha: 0\n")
    assert text.endswith("adapter.alpha: must be > 0 (try 2*r, e.g. 32 for r=16) (got 0)")
    text = _errors(tmp_path, "data:\n  train: d.jsonl\ntraining:\n  batch_size: many\n")
    assert "see `lorafit schema`" in text  # a type error has no fix of its own
