"""The chat templates lorafit ships by name (data.chat_template), and the one base models without a template get.

Stdlib only: the recipe schema checks names against it, the data and generation code render with it."""

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHAT_TEMPLATES = {"chatml": CHATML}  # names accepted by data.chat_template
DEFAULT_CHAT_TEMPLATE = CHATML  # for base models without a template: ChatML, the de-facto standard


# ---------------------------------------------------------------- key names
