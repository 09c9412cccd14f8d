"""Named chat templates: each renders a two-turn chat as its model family does, and masks it right (assistant
turns and their end-of-turn token trained, nothing else), on a tiny tokenizer that has every family's special
tokens. The expected texts were checked against each family's published prompt format."""

import pytest

from lorafit.core.chat_templates import CHAT_TEMPLATES, template_text
from lorafit.data import formats
from lorafit.data.tokens import tokenize
from lorafit.recipe import Recipe

SPECIALS = [
    "<unk>",
    "<s>",
    "</s>",
    "<|im_start|>",
    "<|im_end|>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<bos>",
    "<eos>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<|user|>",
    "<|assistant|>",
    "<|system|>",
    "<|end|>",
    "<|endoftext|>",
]
CHAT = {
    "messages": [
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": "Fine thanks"},
        {"role": "user", "content": "And two?"},
        {"role": "assistant", "content": "Two"},
    ]
}
# (name, bos, eos, rendered text, the text of the trained tokens)
TEMPLATES = [
    (
        "chatml",
        "<|im_start|>",
        "<|im_end|>",
        "<|im_start|>user\n"
        "Hello there<|im_end|>\n"
        "<|im_start|>assistant\n"
        "Fine thanks<|im_end|>\n"
        "<|im_start|>user\n"
        "And two?<|im_end|>\n"
        "<|im_start|>assistant\n"
        "Two<|im_end|>\n",
        "Fine thanks<|im_end|>Two<|im_end|>",
    ),
    (
        "llama2",
        "<s>",
        "</s>",
        "<s>[INST] Hello there [/INST] Fine thanks </s><s>[INST] And two? [/INST] Two </s>",
        " Fine thanks </s> Two </s>",
    ),
    (
        "mistral",
        "<s>",
        "</s>",
        "<s>[INST] Hello there [/INST]Fine thanks</s>[INST] And two? [/INST]Two</s>",
        "Fine thanks</s>Two</s>",
    ),
    (
        "zephyr",
        "<s>",
        "</s>",
        "<|user|>\nHello there</s>\n<|assistant|>\nFine thanks</s>\n<|user|>\nAnd two?</s>\n<|assistant|>\nTwo</s>\n",
        "Fine thanks</s>Two</s>",
    ),
    (
        "alpaca",
        "<s>",
        "</s>",
        "### Instruction:\n"
        "Hello there\n"
        "\n"
        "### Response:\n"
        "Fine thanks</s>\n"
        "\n"
        "### Instruction:\n"
        "And two?\n"
        "\n"
        "### Response:\n"
        "Two</s>\n"
        "\n",
        "Fine thanks</s>Two</s>",
    ),
    (
        "vicuna",
        "<s>",
        "</s>",
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: Hello there ASSISTANT: Fine thanks</s> USER: "
        "And two? ASSISTANT: Two</s>",
        " Fine thanks</s> Two</s>",
    ),
    (
        "llama3",
        "<|begin_of_text|>",
        "<|eot_id|>",
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n"
        "\n"
        "Hello there<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n"
        "\n"
        "Fine thanks<|eot_id|><|start_header_id|>user<|end_header_id|>\n"
        "\n"
        "And two?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n"
        "\n"
        "Two<|eot_id|>",
        "Fine thanks<|eot_id|>Two<|eot_id|>",
    ),
    (
        "gemma",
        "<bos>",
        "<eos>",
        "<bos><start_of_turn>user\n"
        "Hello there<end_of_turn>\n"
        "<start_of_turn>model\n"
        "Fine thanks<end_of_turn>\n"
        "<start_of_turn>user\n"
        "And two?<end_of_turn>\n"
        "<start_of_turn>model\n"
        "Two<end_of_turn>\n",
        "Fine thanks<end_of_turn>Two<end_of_turn>",
    ),
    (
        "gemma3",
        "<bos>",
        "<eos>",
        "<bos><start_of_turn>user\n"
        "Hello there<end_of_turn>\n"
        "<start_of_turn>model\n"
        "Fine thanks<end_of_turn>\n"
        "<start_of_turn>user\n"
        "And two?<end_of_turn>\n"
        "<start_of_turn>model\n"
        "Two<end_of_turn>\n",
        "Fine thanks<end_of_turn>Two<end_of_turn>",
    ),
    (
        "qwen2",
        "<|endoftext|>",
        "<|im_end|>",
        "<|im_start|>system\n"
        "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n"
        "Hello there<|im_end|>\n"
        "<|im_start|>assistant\n"
        "Fine thanks<|im_end|>\n"
        "<|im_start|>user\n"
        "And two?<|im_end|>\n"
        "<|im_start|>assistant\n"
        "Two<|im_end|>\n",
        "Fine thanks<|im_end|>Two<|im_end|>",
    ),
    (
        "qwen3",
        "<|endoftext|>",
        "<|im_end|>",
        "<|im_start|>user\n"
        "Hello there<|im_end|>\n"
        "<|im_start|>assistant\n"
        "<think>\n"
        "\n"
        "</think>\n"
        "\n"
        "Fine thanks<|im_end|>\n"
        "<|im_start|>user\n"
        "And two?<|im_end|>\n"
        "<|im_start|>assistant\n"
        "<think>\n"
        "\n"
        "</think>\n"
        "\n"
        "Two<|im_end|>\n",
        "<think>\n\n</think>\n\nFine thanks<|im_end|><think>\n\n</think>\n\nTwo<|im_end|>",
    ),
    (
        "phi3",
        "<s>",
        "<|endoftext|>",
        "<|user|>\n"
        "Hello there<|end|>\n"
        "<|assistant|>\n"
        "Fine thanks<|end|>\n"
        "<|user|>\n"
        "And two?<|end|>\n"
        "<|assistant|>\n"
        "Two<|end|>\n"
        "<|endoftext|>",
        "Fine thanks<|end|>Two<|end|>\n<|endoftext|>",
    ),
]


@pytest.fixture(scope="module")
def bpe():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(["Hello there, how are you? Fine thanks. And two?"], trainer)
    return tok


def test_every_named_template_is_tested():
    assert [t[0] for t in TEMPLATES] == [n for n in CHAT_TEMPLATES if n != "tokenizer_default"]


@pytest.mark.parametrize(("name", "bos", "eos", "text", "trained"), TEMPLATES, ids=[t[0] for t in TEMPLATES])
def test_named_template_renders_and_masks(bpe, name, bos, eos, text, trained):
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=bos, eos_token=eos, unk_token="<unk>")
    segments = formats.render(CHAT, "messages", tokenizer, "assistant", template_text(name))
    assert "".join(s for s, _ in segments) == text
    ids, labels = tokenize(segments, tokenizer)
    assert tokenizer.decode([i for i, label in zip(ids, labels) if label != -100]) == trained
    assert tokenizer.decode(ids) == text  # every special token is one token of the family's, not text


def test_tokenizer_default_is_the_models_own_and_unknown_names_list_them():
    assert (
        Recipe.model_validate({"data": {"train": "x", "chat_template": "tokenizer_default"}}).data.chat_template is None
    )
    with pytest.raises(ValueError) as info:
        Recipe.model_validate({"data": {"train": "x", "chat_template": "llama-3"}})
    assert (
        "'llama-3' is neither a named template nor a Jinja template; did you mean 'llama3'? named templates: chatml, "
        "llama2, mistral, zephyr, alpaca, vicuna, llama3, gemma, gemma3, qwen2, qwen3, phi3, tokenizer_default; "
        "null (or tokenizer_default) uses the model's own template"
    ) in str(info.value)
