"""`lorafit export --format ollama`: a folder Ollama builds a model from (`ollama create NAME -f FOLDER/Modelfile`).

The Modelfile names the base GGUF (FROM) and the adapter GGUF (ADAPTER) of `--format gguf-lora`, the run's chat
template in Ollama's Go-template syntax (TEMPLATE), and a `PARAMETER stop` for every token that ends a reply.

Jinja cannot be translated in general, so each chat template lorafit knows (core/chat_templates.py, and the
embedded SmolLM2's own) has a Go template written here for it, in a small subset of Go's text/template: text,
`{{ .Role }}` / `{{ .Content }}` / `{{ $var }}`, `{{ $var := "..." }}` / `{{ $var = ... }}`, `range` over
.Messages, `if` / `else if` / `else` on eq, ne, and, or a variable. The run's template is identified by rendering:
a family is chosen only if `render` (this subset, in Python) of its Go template equals the tokenizer's
apply_chat_template(add_generation_prompt=True) on every probe conversation, with and without a system turn; a
template no family reproduces is refused. Tool calls and "thinking" fields are not translated.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from lorafit import runs
from lorafit.core.errors import RecipeError

SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
QWEN2_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
CHATML_TURN = "<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
GEMMA_TURNS = (
    '{{ $sys := "" }}{{ range .Messages }}{{ if eq .Role "system" }}{{ $sys = .Content }}{{ else }}<start_of_turn>'
    '{{ if eq .Role "assistant" }}model{{ else }}{{ .Role }}{{ end }}\n{{ if $sys }}{{ $sys }}\n\n{{ $sys = "" }}'
    "{{ end }}{{ .Content }}<end_of_turn>\n{{ end }}{{ end }}<start_of_turn>model\n"
)


@dataclass(frozen=True)
class Family:
    name: str
    template: str  # Go template; {BOS} / {EOS} stand for the tokenizer's bos / eos text, {FIRST_BOS} see below
    stop: str  # the end-of-turn token's text, or {EOS}
    bos_first: bool = False  # the Jinja template starts with bos_token: llama.cpp adds it when the GGUF says so


def _smollm_like(system: str) -> str:
    return (
        '{{ range $i, $m := .Messages }}{{ if and (eq $i 0) (ne .Role "system") }}<|im_start|>system\n'
        + system
        + "<|im_end|>\n{{ end }}"
        + CHATML_TURN
        + "{{ end }}<|im_start|>assistant\n"
    )


FAMILIES = (
    Family("chatml", "{{ range .Messages }}" + CHATML_TURN + "{{ end }}<|im_start|>assistant\n", "<|im_end|>"),
    Family("smollm2", _smollm_like(SMOLLM2_SYSTEM), "<|im_end|>"),
    Family("qwen2", _smollm_like(QWEN2_SYSTEM), "<|im_end|>"),
    Family(
        "qwen3",
        '{{ range .Messages }}{{ if eq .Role "assistant" }}<|im_start|>assistant\n<think>\n\n</think>\n\n'
        "{{ .Content }}<|im_end|>\n{{ else }}" + CHATML_TURN + "{{ end }}{{ end }}<|im_start|>assistant\n",
        "<|im_end|>",
    ),
    Family(
        "llama3",
        "{FIRST_BOS}{{ range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>"
        "{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n",
        "<|eot_id|>",
        bos_first=True,
    ),
    Family("gemma", "{FIRST_BOS}" + GEMMA_TURNS, "<end_of_turn>", bos_first=True),
    Family(
        "phi3",
        "{{ range .Messages }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}<|assistant|>\n",
        "<|end|>",
    ),
    Family(
        "llama2",
        '{{ $sys := "" }}{{ $bos := "{FIRST_BOS}" }}{{ range .Messages }}{{ if eq .Role "system" }}{{ $sys = .Content }}'
        '{{ else if eq .Role "user" }}{{ $bos }}[INST] {{ if $sys }}<<SYS>>\n{{ $sys }}\n<</SYS>>\n\n{{ $sys = "" }}'
        '{{ end }}{{ .Content }} [/INST]{{ $bos = "{BOS}" }}{{ else }} {{ .Content }} {EOS}{{ end }}{{ end }}',
        "{EOS}",
        bos_first=True,
    ),
    Family(
        "mistral",
        '{FIRST_BOS}{{ $sys := "" }}{{ range .Messages }}{{ if eq .Role "system" }}{{ $sys = .Content }}'
        '{{ else if eq .Role "user" }}[INST] {{ if $sys }}{{ $sys }}\n\n{{ $sys = "" }}{{ end }}{{ .Content }} [/INST]'
        "{{ else }}{{ .Content }}{EOS}{{ end }}{{ end }}",
        "{EOS}",
        bos_first=True,
    ),
    Family("zephyr", "{{ range .Messages }}<|{{ .Role }}|>\n{{ .Content }}{EOS}\n{{ end }}<|assistant|>\n", "{EOS}"),
    Family(
        "alpaca",
        '{{ range .Messages }}{{ if eq .Role "system" }}{{ .Content }}\n\n{{ else if eq .Role "user" }}### Instruction:\n'
        "{{ .Content }}\n\n### Response:\n{{ else }}{{ .Content }}{EOS}\n\n{{ end }}{{ end }}",
        "{EOS}",
    ),
    Family(
        "vicuna",
        '{{ range $i, $m := .Messages }}{{ if eq $i 0 }}{{ if eq .Role "system" }}{{ .Content }}{{ else }}'
        + VICUNA_SYSTEM
        + '{{ end }}{{ end }}{{ if eq .Role "user" }} USER: {{ .Content }} ASSISTANT:{{ else if eq .Role "assistant" }}'
        " {{ .Content }}{EOS}{{ end }}{{ end }}",
        "{EOS}",
    ),
)

PROBES = (
    [
        {"role": "system", "content": "You are the warehouse support assistant."},
        {"role": "user", "content": "Where is order 1234?"},
        {"role": "assistant", "content": "It left the depot this morning."},
        {"role": "user", "content": "And when will it arrive?"},
    ],
    [
        {"role": "user", "content": "Where is order 1234?"},
        {"role": "assistant", "content": "It left the depot this morning."},
        {"role": "user", "content": "Thanks."},
    ],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Hi"}],
)


# ---------------------------------------------------------------- the Go-template subset


_ACTION = re.compile(r"\{\{(.*?)\}\}", re.S)
_WORD = re.compile(r'\(|\)|"(?:[^"\\]|\\.)*"|[^\s()]+')


def _parse(template: str) -> list:
    """Nodes: ("text", s), ("out", expr), ("set", var, expr, declare), ("range", vars, body),
    ("if", [(cond, body), ...], else_body)."""
    root: list = []
    stack: list = [("root", root)]
    pos = 0
    for m in _ACTION.finditer(template):
        if m.start() > pos:
            stack[-1][1].append(("text", template[pos : m.start()]))
        pos = m.end()
        action = m.group(1).strip()
        body = stack[-1][1]
        if action.startswith("range "):
            spec = action[len("range ") :]
            names, _, source = spec.rpartition(":=")
            if source.strip() != ".Messages":
                raise ValueError(f"unsupported range {action!r}")
            node = ("range", [n.strip() for n in names.split(",") if n.strip()], [])
            body.append(node)
            stack.append(("range", node[2]))
        elif action.startswith("if "):
            node = ("if", [(action[3:].strip(), [])], [])
            body.append(node)
            stack.append(("if", node[1][0][1], node))
        elif action.startswith("else if "):
            node = stack.pop()[2]
            node[1].append((action[len("else if ") :].strip(), []))
            stack.append(("if", node[1][-1][1], node))
        elif action == "else":
            node = stack.pop()[2]
            stack.append(("else", node[2], node))
        elif action == "end":
            stack.pop()
        elif re.fullmatch(r"\$\w+\s*:?=.*", action, re.S):
            var, op, expr = re.match(r"(\$\w+)\s*(:?=)\s*(.*)", action, re.S).groups()
            body.append(("set", var, expr.strip(), op == ":="))
        else:
            body.append(("out", action))
    if len(stack) != 1:
        raise ValueError("unbalanced {{ end }}")
    if pos < len(template):
        root.append(("text", template[pos:]))
    return root


def _value(words: list[str], scope: dict, dot: dict):
    word = words.pop(0)
    if word == "(":
        value = _call(words, scope, dot)
        assert words.pop(0) == ")"
        return value
    if word.startswith('"'):
        return json.loads(word)
    if word.startswith("$"):
        return scope[word]
    if word.startswith("."):
        return dot[word[1:]]
    if word.isdigit():
        return int(word)
    raise ValueError(f"unsupported operand {word!r}")


def _call(words: list[str], scope: dict, dot: dict):
    if words[0] in ("eq", "ne", "and"):
        fn = words.pop(0)
        a, b = _value(words, scope, dot), _value(words, scope, dot)
        return a == b if fn == "eq" else a != b if fn == "ne" else bool(a) and bool(b)
    return _value(words, scope, dot)


def _eval(expr: str, scope: dict, dot: dict):
    words = _WORD.findall(expr)
    value = _call(words, scope, dot)
    if words:
        raise ValueError(f"unsupported expression {expr!r}")
    return value


def _run(nodes: list, scope: dict, dot: dict, out: list[str], messages: list[dict]) -> None:
    for node in nodes:
        kind = node[0]
        if kind == "text":
            out.append(node[1])
        elif kind == "out":
            out.append(str(_eval(node[1], scope, dot)))
        elif kind == "set":
            if not node[3] and node[1] not in scope:
                raise ValueError(f"{node[1]} assigned before it is declared")
            scope[node[1]] = _eval(node[2], scope, dot)
        elif kind == "range":
            for i, message in enumerate(messages):
                inner = dict(scope)
                names = node[1]
                if names:
                    inner[names[0]] = i if len(names) == 2 else message
                    if len(names) == 2:
                        inner[names[1]] = message
                item = {"Role": message["role"], "Content": message["content"]}
                _run(node[2], inner, item, out, messages)
                for name in scope:  # Go: `=` inside the range assigns the outer variable
                    scope[name] = inner[name]
        else:
            for cond, body in node[1]:
                if _eval(cond, scope, dot):
                    _run(body, scope, dot, out, messages)
                    break
            else:
                _run(node[2], scope, dot, out, messages)


def render(template: str, messages: list[dict]) -> str:
    """What Ollama makes of TEMPLATE for these messages, for the subset FAMILIES use (text/template semantics)."""
    out: list[str] = []
    _run(_parse(template), {}, {}, out, messages)
    return "".join(out)


# ---------------------------------------------------------------- choosing and writing


def go_template(family: Family, bos: str, eos: str, gguf_adds_bos: bool) -> str:
    first = "" if gguf_adds_bos or not family.bos_first else bos
    return family.template.replace("{FIRST_BOS}", first).replace("{BOS}", bos).replace("{EOS}", eos)


def identify(tokenizer, chat_template: str, gguf_adds_bos: bool) -> tuple[Family, str]:
    """The family whose Go template renders every probe as the tokenizer does (bos: llama.cpp's own, when the
    GGUF adds it); a RecipeError naming the template when none does."""
    from jinja2 import TemplateError

    bos, eos = tokenizer.bos_token or "", tokenizer.eos_token or ""
    expected = []
    for messages in PROBES:
        try:
            text = tokenizer.apply_chat_template(
                messages, chat_template=chat_template, tokenize=False, add_generation_prompt=True
            )
        except TemplateError:  # e.g. Gemma's template refuses a system turn: that probe says nothing
            continue
        expected.append((messages, text))
    for family in FAMILIES:
        template = go_template(family, bos, eos, gguf_adds_bos)
        lead = bos if gguf_adds_bos and family.bos_first else ""
        if expected and all(lead + render(template, m) == text for m, text in expected):
            return family, template
    first_line = chat_template.strip().splitlines()[0][:80] if chat_template.strip() else "(empty)"
    raise RecipeError(
        f"the run's chat template is none lorafit can write as an Ollama TEMPLATE (it starts {first_line!r})",
        "train with a named data.chat_template (chatml, llama3, gemma, qwen2, phi3, llama2, mistral, zephyr, "
        "alpaca, vicuna, ...), or write the Modelfile's TEMPLATE yourself around the gguf-lora export",
    )


def stop_tokens(family: Family, tokenizer, base_dir: Path) -> list[str]:
    """The family's end-of-turn token, the tokenizer's eos, and every id lorafit's generation stops on."""
    from types import SimpleNamespace

    from lorafit.models.generation import stop_token_ids

    try:
        from transformers import GenerationConfig

        generation_config = GenerationConfig.from_pretrained(base_dir)
    except (OSError, ValueError):
        generation_config = None
    ids = stop_token_ids(SimpleNamespace(generation_config=generation_config), tokenizer)
    named = [family.stop.replace("{EOS}", tokenizer.eos_token or ""), tokenizer.eos_token or ""]
    names = named + [t for t in tokenizer.convert_ids_to_tokens(ids) if t]
    return [t for t in dict.fromkeys(names) if t]


def gguf_adds_bos(path: Path) -> bool:
    """tokenizer.ggml.add_bos_token of a GGUF (read with the pinned gguf; reading is format-stable)."""
    from gguf import GGUFReader

    field = GGUFReader(str(path)).get_field("tokenizer.ggml.add_bos_token")
    return bool(field.contents()) if field is not None else False


def modelfile(base_gguf: str, adapter_gguf: str, template: str, stops: list[str], source: str) -> str:
    if '"""' in template:
        raise RecipeError("the chat template holds triple quotes, which a Modelfile TEMPLATE cannot")
    lines = [
        f"# Written by `lorafit export --format ollama` from {source}.",
        f"FROM ./{base_gguf}",
        f"ADAPTER ./{adapter_gguf}",
        f'TEMPLATE """{template}"""',
        *(f"PARAMETER stop {json.dumps(s)}" for s in stops),
    ]
    return "\n".join(lines) + "\n"


def model_name(run_dir: Path) -> str:
    """A name `ollama create` takes: the run folder's, lowercased, other characters as dashes."""
    name = Path(run_dir).resolve().name
    if name == "adapter":
        name = Path(run_dir).resolve().parent.name
    return re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-._") or "lorafit-model"


def export_ollama(run_dir: Path, out: Path, outtype: str) -> dict:
    from transformers import AutoTokenizer

    from lorafit.artifacts import gguf_lora
    from lorafit.core.chat_templates import DEFAULT_CHAT_TEMPLATE

    run_dir, out = Path(run_dir), Path(out)
    recipe, _ = runs.load_run(run_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(runs.adapter_path(run_dir)))  # the template training used
    chat_template = tokenizer.chat_template or DEFAULT_CHAT_TEMPLATE
    identify(tokenizer, chat_template, gguf_adds_bos=False)  # an unknown template is refused before converting
    lora = gguf_lora.export_gguf_lora(run_dir, out, outtype, record=False)
    base_gguf, adapter_gguf = Path(lora["base"]), Path(lora["path"])
    family, template = identify(tokenizer, chat_template, gguf_adds_bos(base_gguf))
    stops = stop_tokens(family, tokenizer, gguf_lora.base_model_dir(recipe))
    path = out / "Modelfile"
    tmp = path.with_name(".Modelfile.tmp")
    tmp.write_text(modelfile(base_gguf.name, adapter_gguf.name, template, stops, str(run_dir)))
    tmp.replace(path)
    name = model_name(run_dir)
    report = {
        "path": str(path),
        "command": f"ollama create {name} -f {path}",
        "template": family.name,
        "stop": stops,
        "gguf_lora": lora,
    }
    if runs.adapter_path(run_dir) != run_dir:
        runs.record_export(run_dir, "ollama", report)
    return report
