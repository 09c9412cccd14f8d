"""The chat templates lorafit knows by name (data.chat_template), and the one base models without a template get.

Where a well-kept library ships a family's template, it is used as shipped: TRL keeps the original templates of
Llama 3, Gemma, Qwen and Phi-3 (trl/chat_templates/, for recognising models) and is installed with lorafit. The
families it does not keep (Llama 2, Mistral, Zephyr, Alpaca, Vicuna) and ChatML are written here, from each
family's documented prompt format. Stdlib only: the recipe schema checks names, the data code renders with them.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# A system message joins the first user turn where the family has no system role of its own (Llama 2 and
# Mistral put it inside the first [INST]).
LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}{% set loop_messages = messages[1:] %}"
    "{% else %}{% set system = none %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}{% if message['role'] == 'user' %}"
    "{% if loop.first and system %}{% set content = '<<SYS>>\n' + system + '\n<</SYS>>\n\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{{ bos_token + '[INST] ' + content + ' [/INST]' }}"
    "{% else %}{{ ' ' + message['content'] + ' ' + eos_token }}{% endif %}{% endfor %}"
)
MISTRAL = (
    "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}{% set loop_messages = messages[1:] %}"
    "{% else %}{% set system = none %}{% set loop_messages = messages %}{% endif %}{{ bos_token }}"
    "{% for message in loop_messages %}{% if message['role'] == 'user' %}"
    "{% if loop.first and system %}{{ '[INST] ' + system + '\n\n' + message['content'] + ' [/INST]' }}"
    "{% else %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% endif %}"
    "{% else %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
)
ZEPHYR = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
ALPACA = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ '### Instruction:\n' + message['content'] + '\n\n### Response:\n' }}"
    "{% else %}{{ message['content'] + eos_token + '\n\n' }}{% endif %}{% endfor %}"
)
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
VICUNA = (
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}{% set loop_messages = messages[1:] %}"
    '{% else %}{{ "' + VICUNA_SYSTEM + '" }}{% set loop_messages = messages %}{% endif %}'
    "{% for message in loop_messages %}{% if message['role'] == 'user' %}{{ ' USER: ' + message['content'] + ' ASSISTANT:' }}"
    "{% else %}{{ ' ' + message['content'] + eos_token }}{% endif %}{% endfor %}"
)
OWN = {"chatml": CHATML, "llama2": LLAMA2, "mistral": MISTRAL, "zephyr": ZEPHYR, "alpaca": ALPACA, "vicuna": VICUNA}
# name -> the file in TRL's chat_templates/ (checked against TRL 1.16)
LIBRARY = {
    "llama3": "llama3.jinja",
    "gemma": "gemma.jinja",
    "gemma3": "gemma3.jinja",
    "qwen2": "qwen2_5.jinja",
    "qwen3": "qwen3_training.jinja",
    "phi3": "phi3_training.jinja",
}
TOKENIZER_DEFAULT = "tokenizer_default"  # the model's own template: what null means
CHAT_TEMPLATES = (*OWN, *LIBRARY, TOKENIZER_DEFAULT)  # names accepted by data.chat_template
DEFAULT_CHAT_TEMPLATE = CHATML  # for base models without a template: ChatML, the de-facto standard


def template_text(name: str) -> str:
    """The Jinja text of a named template (a string that is not a name is taken as Jinja itself)."""
    if name in OWN:
        return OWN[name]
    if name in LIBRARY:
        spec = importlib.util.find_spec("trl")  # finds the package without importing it
        folder = Path(next(iter(spec.submodule_search_locations or []), "")) if spec else None
        path = folder / "chat_templates" / LIBRARY[name] if folder else None
        if path is None or not path.is_file():
            from lorafit.core.errors import MissingError

            raise MissingError(
                f"data.chat_template {name}: TRL's copy of the template is not installed ({LIBRARY[name]})",
                "pip install -U trl (lorafit installs it), or give the template as Jinja",
            )
        return path.read_text(encoding="utf-8")
    return name
