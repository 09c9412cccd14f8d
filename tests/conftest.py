"""Shared fixtures: a tiny random Llama with a tiny BPE tokenizer, and small chat data.

Built once per session in milliseconds, so fast tests never touch the embedded GGUF.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

# Before anything imports huggingface_hub, which reads it once: a test never waits on the network.
os.environ["HF_HUB_OFFLINE"] = "1"
# Under pytest-xdist (`make test` runs two workers), each worker gets its share of the cores before torch is
# imported, so workers do not oversubscribe the machine; subprocesses the tests start inherit it.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ.setdefault(
        "OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    )

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
QUICKSTART_STEPS = 100  # of the quickstart's 300 (see quickstart_run)
QUICKSTART_HELD_OUT = 32  # of its 112 held-out questions

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

TOPICS = [
    ("damaged", "Report damage within 48 hours with a photo; we ship a replacement in 2 days."),
    ("return", "Unopened items can be returned within 30 days for a full refund."),
    ("tracking", "If tracking is stuck for 5 days we file a trace with the carrier."),
    ("address", "Address changes are possible before the 14:00 dispatch cutoff."),
]


def chat_records(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        topic, answer = TOPICS[i % len(TOPICS)]
        order = rng.randint(1000, 9999)
        out.append(
            {
                "messages": [
                    {"role": "system", "content": "You are the warehouse support assistant."},
                    {"role": "user", "content": f"Question about order {order}: what about {topic}?"},
                    {"role": "assistant", "content": f"For order {order}: {answer}"},
                ]
            }
        )
    return out


WRONG = [
    "We never replace anything, sorry.",
    "Returns are not possible at all.",
    "Tracking is not our problem.",
    "Addresses can never be changed.",
]


def pair_records(n: int, seed: int = 0, chat: bool = True) -> list[dict]:
    """Warehouse questions with the policy answer chosen and a wrong one rejected (every fourth with a category
    and the phrase a right answer contains, as the quickstart's held-out pairs have)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        (topic, answer), wrong = TOPICS[i % len(TOPICS)], WRONG[i % len(WRONG)]
        question = f"Question about order {rng.randint(1000, 9999)}: what about {topic}?"
        if chat:
            out.append(
                {
                    "prompt": [{"role": "user", "content": question}],
                    "chosen": [{"role": "assistant", "content": answer}],
                    "rejected": [{"role": "assistant", "content": wrong}],
                }
            )
        else:
            out.append({"prompt": question, "chosen": " " + answer, "rejected": " " + wrong})
        if i % 4 == 0:
            out[-1].update(category=topic, reference=answer.split(";")[0])
    return out


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def set_args(*overrides: str) -> list[str]:
    """`--set O` for each override, as a lorafit command line takes them."""
    return [arg for override in overrides for arg in ("--set", override)]


def run_train(recipe, *overrides: str):
    """`lorafit train RECIPE --set O ...` in this process (the CliRunner result): one override an argument."""
    from typer.testing import CliRunner

    from lorafit.cli import app

    return CliRunner().invoke(app, ["train", str(recipe), *set_args(*overrides)])


def pytest_configure(config):
    """Runs never write the user's run registry. Set before test modules are imported: some copy
    os.environ at import for the subprocesses they launch."""
    import tempfile

    os.environ["LORAFIT_REGISTRY"] = os.path.join(tempfile.mkdtemp(prefix="lorafit-test-registry-"), "runs.sqlite")


def pytest_collection_modifyitems(config, items):
    """The tests that read the trained quickstart go first: they are the longest chain in the suite, the rest
    runs beside them, its slow tests first so that no long test is left for the end. They all live in
    test_quickstart.py: `make test` hands pytest-xdist workers whole files (`--dist loadfile`), so one worker
    trains the quickstart once."""
    shared = [item for item in items if "quickstart_run" in getattr(item, "fixturenames", ())]
    for item in shared:
        if item.path.name != "test_quickstart.py":
            raise pytest.UsageError(f"{item.nodeid} uses quickstart_run: move it into tests/test_quickstart.py")
    rest = [item for item in items if "quickstart_run" not in getattr(item, "fixturenames", ())]
    slow = [item for item in rest if item.get_closest_marker("slow")]  # the other long ones next, not at the end
    items[:] = shared + slow + [item for item in rest if not item.get_closest_marker("slow")]


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Keep tests from writing into the user's cache; reuse the embedded conversion if already there."""
    os.environ.setdefault("LORAFIT_CACHE", str(Path.home() / ".cache" / "lorafit"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build_tiny_model(out: Path) -> Path:
    """A 2-layer random Llama and a 400-token BPE tokenizer with ChatML specials."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    corpus = [m["content"] for r in chat_records(200) for m in r["messages"]] + [t for t, _ in TOPICS]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    fast.chat_template = CHATML
    fast.save_pretrained(out)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture()
def chat_data(tmp_path) -> Path:
    return write_jsonl(tmp_path / "train.jsonl", chat_records(48))


@pytest.fixture()
def tiny_recipe(tmp_path, tiny_model_dir, chat_data) -> Path:
    """A recipe that trains the tiny model for a few fast steps."""
    path = tmp_path / "tiny.yaml"
    path.write_text(f"""\
model:
  name: {tiny_model_dir}
data:
  train: {chat_data.name}
  eval_split: 0.25
adapter:
  r: 8
  alpha: 16
  dropout: 0.0
training:
  max_steps: 12
  lr: 5.0e-3
  batch_size: 4
  max_length: 128
  warmup_ratio: 0.0
  scheduler: constant
output:
  dir: {tmp_path / "run"}
""")
    return path


@pytest.fixture()
def tiny_dpo_recipe(tmp_path, tiny_model_dir) -> Path:
    """A DPO recipe for the tiny model on 32 pairs (training.group_by_length left at its default)."""
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_records(32))
    path = tmp_path / "dpo.yaml"
    path.write_text(
        tiny_recipe_text(
            tiny_model_dir,
            data,
            tmp_path / "run-dpo",
            data={"eval_split": None},
            training={"objective": "dpo", "max_steps": 4, "lr": 5e-3, "batch_size": 2},
        )
    )
    return path


def tiny_recipe_text(model_dir: Path, data_file: Path, out_dir: Path, **sections: dict) -> str:
    """YAML for a fast tiny-model run; `sections` override keys, e.g. adapter={"method": "dora"}."""
    import yaml

    recipe = {
        "model": {"name": str(model_dir)},
        "data": {"train": str(data_file), "eval_split": 0.25},
        "adapter": {"r": 8, "alpha": 16, "dropout": 0.0},
        "training": {
            "max_steps": 12,
            "lr": 5.0e-3,
            "batch_size": 4,
            "max_length": 128,
            "warmup_ratio": 0.0,
            "scheduler": "constant",
        },
        "output": {"dir": str(out_dir)},
    }
    for name, values in sections.items():
        recipe.setdefault(name, {}).update(values)
    return yaml.safe_dump(recipe, sort_keys=False)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_model_dir) -> Path:
    """One finished tiny LoRA run shared by the tests of a module (read-only for them)."""
    from rich.console import Console

    from lorafit.recipe import load_recipe
    from lorafit.train import pipeline as train

    root = tmp_path_factory.mktemp("trained")
    data_file = write_jsonl(root / "train.jsonl", chat_records(48))
    recipe_file = root / "recipe.yaml"
    recipe_file.write_text(tiny_recipe_text(tiny_model_dir, data_file, root / "run", training={"max_steps": 24}))
    train.run(load_recipe(recipe_file), console=Console(quiet=True), quiet=True)
    return root / "run"


@pytest.fixture(scope="session")
def smol_tiny_run(tmp_path_factory) -> Path:
    """A tiny random Llama with the real SmolLM2 tokenizer (which llama.cpp's converter recognises), trained briefly.

    Needs the embedded model's converted cache, so only slow tests use it."""
    import shutil

    import torch
    from rich.console import Console
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from lorafit.models import embedded_dir
    from lorafit.recipe import load_recipe
    from lorafit.train import pipeline as train

    source = embedded_dir("embedded:smollm2-135m-instruct")
    root = tmp_path_factory.mktemp("smol-tiny")
    model_dir = root / "model"
    model_dir.mkdir()
    for f in source.iterdir():
        if f.suffix != ".safetensors" and f.name != "config.json":
            shutil.copy(f, model_dir / f.name)
    tok = AutoTokenizer.from_pretrained(model_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=128,  # head_dim 64: vLLM's CPU attention has no kernel for smaller heads
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(model_dir, safe_serialization=True)
    data_file = write_jsonl(root / "train.jsonl", chat_records(32))
    recipe_file = root / "recipe.yaml"
    recipe_file.write_text(tiny_recipe_text(model_dir, data_file, root / "run", training={"max_steps": 6}))
    train.run(load_recipe(recipe_file), console=Console(quiet=True), quiet=True)
    return root / "run"


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory) -> Path:
    """The quickstart recipe as a new user runs it (recipes/quickstart.yaml on the embedded model), for its first
    QUICKSTART_STEPS steps and with the first QUICKSTART_HELD_OUT held-out questions: trained once for the slow
    tests that read it. The whole run (300 steps, 112 held-out questions) is ~10 minutes of both cores and its
    eval as long again, more than CI's budget; the README's figures are the whole run's. Tests that write into it
    work on a copy."""
    root = tmp_path_factory.mktemp("quickstart")
    rows = (RECIPES / "data" / "warehouse_eval.jsonl").read_text().splitlines(keepends=True)
    held_out = root / "warehouse_eval.jsonl"
    held_out.write_text("".join(rows[:QUICKSTART_HELD_OUT]))
    run = root / "run"
    result = run_train(
        RECIPES / "quickstart.yaml",
        f"output.dir={run}",
        f"training.max_steps={QUICKSTART_STEPS}",
        f"data.eval={held_out}",
    )
    assert result.exit_code == 0, result.output
    return run
