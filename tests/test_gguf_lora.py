"""export --format gguf-lora and --format ollama: the adapter alone as a llama.cpp LoRA GGUF, checked against PEFT.

The tiny Llama here has a Llama-2-style tokenizer (BPE with byte fallback), which llama.cpp's convert_hf_to_gguf
converts without knowing its vocabulary, so the base GGUF is written in a fast test too."""

import importlib.util
import json
import math
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lorafit.artifacts import gguf_lora, ollama
from lorafit.cli import app

from conftest import CHATML, TOPICS, chat_records, tiny_recipe_text, write_jsonl

runner = CliRunner()

pytestmark = pytest.mark.skipif(
    not (gguf_lora.converter_dir() / "convert_lora_to_gguf.py").is_file(),
    reason=f"llama.cpp's converters are not in {gguf_lora.converter_dir()} (make install)",
)


def build_llama_tokenizer_model(out: Path) -> Path:
    """A 2-layer random Llama whose tokenizer is Llama-2-like (BPE, byte fallback, ▁ for spaces), ChatML specials."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    corpus = [m["content"] for r in chat_records(200) for m in r["messages"]] + [t for t, _ in TOPICS]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    specials = ["<unk>", "<s>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [f"<0x{i:02X}>" for i in range(256)]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=600, special_tokens=specials))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="<|im_end|>", pad_token="<|endoftext|>"
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


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> Path:
    """A finished tiny LoRA run on that model (read-only for the tests: they copy it to change it)."""
    from rich.console import Console

    from lorafit.recipe import load_recipe
    from lorafit.train import pipeline as train

    root = tmp_path_factory.mktemp("gguf-lora")
    model_dir = build_llama_tokenizer_model(root / "model")
    data_file = write_jsonl(root / "train.jsonl", chat_records(48))
    recipe_file = root / "recipe.yaml"
    recipe_file.write_text(tiny_recipe_text(model_dir, data_file, root / "run", training={"max_steps": 16}))
    train.run(load_recipe(recipe_file), console=Console(quiet=True), quiet=True)
    return root / "run"


@pytest.fixture(scope="module")
def exported(lora_run, tmp_path_factory) -> tuple[Path, Path]:
    """The run (a copy) after `lorafit export RUN --format gguf-lora --gguf-type f32`, and the export folder."""
    run = tmp_path_factory.mktemp("exported") / "run"
    shutil.copytree(lora_run, run)
    out = run.parent / "gguf"
    result = runner.invoke(app, ["export", str(run), "--format", "gguf-lora", "--gguf-type", "f32", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "PEFT's delta on 14 tensors" in _flat(result.output)
    return run, out


def _flat(output: str) -> str:
    """The output with the console's line wrapping undone."""
    return " ".join(output.split())


def _copy_with_config(run: Path, dest: Path, **changes) -> Path:
    shutil.copytree(run, dest)
    config_file = dest / "adapter" / "adapter_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), **changes}))
    return dest


def test_plain_lora_export_verifies(exported):
    run, out = exported
    report = json.loads((run / "run.json").read_text())["exports"]["gguf_lora_f32"]
    assert Path(report["path"]) == out / "adapter-f32.gguf" and (out / "base-f32.gguf").is_file()
    assert report["tensors"] == 14  # 7 projections x 2 layers
    assert report["gguf_alpha"] == 16.0 and report["rank"] == 8
    assert report["max_relative_diff"] < 1e-6, report
    assert report["llama_cpp"] in ("checked",) or report["llama_cpp"].startswith("skipped")


def test_llama_cpp_greedy_tokens_equal_peft(exported):
    pytest.importorskip("llama_cpp")
    run, _ = exported
    report = json.loads((run / "run.json").read_text())["exports"]["gguf_lora_f32"]
    assert report["llama_cpp"] == "checked"
    assert report["greedy_agreement"] == 1.0
    assert report["greedy_sequences_equal"].startswith(f"{len(gguf_lora.PROBE_QUESTIONS)}/")


def test_rslora_alpha_is_rescaled(exported, tmp_path):
    """PEFT scales rsLoRA by alpha/sqrt(r), llama.cpp by alpha/r: the GGUF must carry alpha*sqrt(r)."""
    from lorafit import models, runs

    source, exported_out = exported
    run = _copy_with_config(source, tmp_path / "run", use_rslora=True)
    out = tmp_path / "gguf"
    out.mkdir()
    for name in ("base-f32.gguf", "base-f32.gguf.source.json"):  # the base GGUF, to be reused
        shutil.copy(exported_out / name, out / name)
    report = gguf_lora.export_gguf_lora(run, out, "f32")
    assert report["base_reused"] and report["rslora"]
    assert report["gguf_alpha"] == pytest.approx(16 * math.sqrt(8))
    assert report["max_relative_diff"] < 1e-6
    if importlib.util.find_spec("llama_cpp"):  # llama.cpp itself, on base + rescaled adapter, answers as PEFT does
        assert report["llama_cpp"] == "checked" and report["greedy_agreement"] == 1.0, report

    # the converter alone (lora_alpha copied as is) would scale every delta by sqrt(r)/r instead of 1/sqrt(r)
    recipe, _ = runs.load_run(run)
    model, _ = models.load_with_adapter(recipe, run / "adapter", full_precision=True)
    deltas = gguf_lora.peft_deltas(model)
    base = gguf_lora.base_model_dir(recipe)
    unscaled = tmp_path / "unscaled.gguf"
    gguf_lora.convert_adapter(run / "adapter", base, unscaled, "f32", alpha=16.0)
    probe = gguf_lora.compare_deltas(base, unscaled, deltas)
    worst = max(r["max_abs_diff"] / r["max_abs_delta"] for r in probe["tensors"].values())
    assert worst == pytest.approx(1 - 1 / math.sqrt(8), rel=1e-4)  # implied = delta * sqrt(r) / r
    with pytest.raises(gguf_lora.ExportCheckFailed, match="off PEFT's delta"):
        gguf_lora.delta_check(probe, len(deltas), "f32")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"use_dora": True}, "DoRA rescales"),
        ({"peft_type": "IA3"}, "IA3 learns scaling vectors"),
        ({"peft_type": "PROMPT_TUNING"}, "virtual tokens"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"init_lora_weights": "pissa"}, "residual base"),
        ({"alpha_pattern": {"q_proj": 4}}, "one alpha"),
    ],
)
def test_refusals(lora_run, tmp_path, changes, message):
    run = _copy_with_config(lora_run, tmp_path / "run", **changes)
    result = runner.invoke(app, ["export", str(run), "--format", "gguf-lora", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert message in _flat(result.output) and "--format" in result.output  # the way out is named
    assert not (tmp_path / "out").exists()


def _template(modelfile: str) -> str:
    return re.search(r'^TEMPLATE """(.*?)"""$', modelfile, re.S | re.M).group(1)


def test_ollama_modelfile(exported, tmp_path):
    from transformers import AutoTokenizer

    source, _ = exported
    run = tmp_path / "run"
    shutil.copytree(source, run)
    out = tmp_path / "ollama"
    result = runner.invoke(app, ["export", str(run), "--format", "ollama", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "build it with: ollama create run -f" in _flat(result.output)
    text = (out / "Modelfile").read_text()
    assert "FROM ./base-f16.gguf\n" in text and "ADAPTER ./adapter-f16.gguf\n" in text
    assert (out / "base-f16.gguf").is_file() and (out / "adapter-f16.gguf").is_file()
    assert 'PARAMETER stop "<|im_end|>"' in text
    record = json.loads((run / "run.json").read_text())["exports"]["ollama"]
    assert record["template"] == "chatml" and "<|im_end|>" in record["stop"]
    assert record["command"] == f"ollama create run -f {out / 'Modelfile'}"

    tokenizer = AutoTokenizer.from_pretrained(run / "adapter")
    template = _template(text)
    conversations = [
        chat_records(1)[0]["messages"],  # system, user, assistant
        chat_records(1)[0]["messages"][1:],  # user, assistant
        [{"role": "user", "content": "Where is my parcel?"}],
    ]
    for messages in conversations:
        expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert ollama.render(template, messages) == expected


def test_every_known_template_translates(lora_run):
    """Each named template and the embedded SmolLM2's: the Go template renders as the Jinja one does."""
    from transformers import AutoTokenizer

    from lorafit.core.chat_templates import CHAT_TEMPLATES, TOKENIZER_DEFAULT, template_text

    tokenizer = AutoTokenizer.from_pretrained(lora_run / "adapter")
    smollm2 = (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\n" + ollama.SMOLLM2_SYSTEM + "<|im_end|>\n' }}{% endif %}"
        "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    embedded = Path.home() / ".cache" / "lorafit" / "models" / "smollm2-135m-instruct" / "chat_template.jinja"
    cases = {name: template_text(name) for name in CHAT_TEMPLATES if name != TOKENIZER_DEFAULT}
    cases["smollm2"] = smollm2
    if embedded.is_file():  # the embedded model's own, once it has been converted
        cases["smollm2 (embedded)"] = embedded.read_text()
    expected_family = {"gemma3": "gemma", "smollm2 (embedded)": "smollm2"}  # one Go template serves both gemmas
    for name, jinja in cases.items():
        for adds_bos in (False, True):
            family, template = ollama.identify(tokenizer, jinja, adds_bos)
            assert family.name == expected_family.get(name, name)
            lead = (tokenizer.bos_token or "") if adds_bos and family.bos_first else ""
            for messages in ollama.PROBES:
                try:
                    want = tokenizer.apply_chat_template(
                        messages, chat_template=jinja, tokenize=False, add_generation_prompt=True
                    )
                except Exception:
                    continue
                assert lead + ollama.render(template, messages) == want, (name, messages)


def test_unknown_template_is_refused(lora_run):
    from transformers import AutoTokenizer

    from lorafit.core.errors import RecipeError

    tokenizer = AutoTokenizer.from_pretrained(lora_run / "adapter")
    with pytest.raises(RecipeError, match="Ollama TEMPLATE"):
        ollama.identify(tokenizer, "{% for m in messages %}<<{{ m['content'] }}>>{% endfor %}", False)


@pytest.mark.slow
def test_ollama_on_the_smollm2_tokenizer(smol_tiny_run, tmp_path):
    """The embedded model's tokenizer and template (a tiny random Llama under it): its own system default, its
    end-of-turn token, and every adapted module verified."""
    run = tmp_path / "run"
    shutil.copytree(smol_tiny_run, run)
    result = runner.invoke(app, ["export", str(run), "--format", "ollama", "--out", str(tmp_path / "ollama")])
    assert result.exit_code == 0, result.output
    record = json.loads((run / "run.json").read_text())["exports"]["ollama"]
    assert record["template"] == "smollm2" and "<|im_end|>" in record["stop"]
    assert record["gguf_lora"]["max_relative_diff"] < gguf_lora.RELATIVE_TOLERANCE["f16"]
    assert ollama.SMOLLM2_SYSTEM in (tmp_path / "ollama" / "Modelfile").read_text()
