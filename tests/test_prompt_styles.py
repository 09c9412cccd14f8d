"""data.prompt_style: how alpaca rows (instruction, input, output) become text, exactly."""

import pytest

from lorafit.data import formats

WITH_INPUT = {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"}
NO_INPUT = {"instruction": "Name a colour.", "output": "Blue"}
PREAMBLE = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
PREAMBLE_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)


@pytest.mark.parametrize(
    ("style", "row", "user"),
    [
        ("plain", WITH_INPUT, "Translate to French.\n\nGood morning"),
        ("plain", NO_INPUT, "Name a colour."),
        ("llamafactory", WITH_INPUT, "Translate to French.\nGood morning"),
        ("llamafactory", NO_INPUT, "Name a colour."),
        (
            "torchtune",
            WITH_INPUT,
            f"{PREAMBLE_INPUT}\n\n### Instruction:\nTranslate to French.\n\n### Input:\nGood morning\n\n### Response:\n",
        ),
        ("torchtune", NO_INPUT, f"{PREAMBLE}\n\n### Instruction:\nName a colour.\n\n### Response:\n"),
    ],
)
def test_chat_styles_make_the_user_turn(style, row, user):
    msgs = formats.to_messages(row, "alpaca", style=style)
    assert msgs == [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]


class _Tokenizer:
    eos_token = "</s>"


def test_alpaca_style_is_the_original_prompt_without_a_chat_template():
    segments = formats.render(WITH_INPUT, "alpaca", _Tokenizer(), "assistant", style="alpaca")
    assert segments == [
        (
            f"{PREAMBLE_INPUT}\n\n### Instruction:\nTranslate to French.\n\n### Input:\nGood morning\n\n### Response:\n",
            False,
        ),
        ("Bonjour</s>", True),  # the response and EOS carry the loss, the prompt does not
    ]
    segments = formats.render(NO_INPUT, "alpaca", _Tokenizer(), "all", style="alpaca")
    assert segments == [
        (f"{PREAMBLE}\n\n### Instruction:\nName a colour.\n\n### Response:\n", True),
        ("Blue</s>", True),
    ]
    with_system = formats.render(
        {**NO_INPUT, "system": "Answer briefly."}, "alpaca", _Tokenizer(), "assistant", style="alpaca"
    )
    assert with_system[0][0] == "Answer briefly.\n\n### Instruction:\nName a colour.\n\n### Response:\n"
    assert formats.plain_text("alpaca", "alpaca") and not formats.plain_text("alpaca", "torchtune")


def test_torchtune_style_masks_through_the_chat_template(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    segments = formats.render(NO_INPUT, "alpaca", tokenizer, "assistant", style="torchtune")
    assert segments == [
        (
            f"<|im_start|>user\n{PREAMBLE}\n\n### Instruction:\nName a colour.\n\n### Response:\n<|im_end|>\n"
            "<|im_start|>assistant\n",
            False,
        ),
        ("Blue<|im_end|>", True),
        ("\n", False),
    ]
