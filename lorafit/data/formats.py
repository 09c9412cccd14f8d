"""Record formats: rename keys per `data.fields`, validate, render into (text, trained) segments.

Every example becomes a list of (text, trained) segments before tokenization, so one masking
rule serves every format: chat turns come from the chat template's own rendering, and only the
assistant's content and its end-of-turn token carry loss by default.

Records are first made canonical (lorafit's key names, lorafit's role names), so the rest of
lorafit never sees a user's spelling; error messages translate back to the user's key names.
Nothing heavy is imported here: recipe validation uses the template names.
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass, field
from typing import Any

from lorafit.core.chat_templates import DEFAULT_CHAT_TEMPLATE, template_text
from lorafit.core.errors import DataError

FORMATS = ("messages", "sharegpt", "alpaca", "prompt_completion", "text")
CHAT_FORMATS = ("messages", "sharegpt", "alpaca")
ROLES = ("system", "user", "assistant")
KEYS = ("messages", "role", "content", "system", "instruction", "input", "output", "prompt", "completion", "text")
# The keys each format reads (lorafit's names); `reference`, `avoid` and `category` are read by `lorafit eval`.
FORMAT_KEYS = {
    "messages": ("messages",),
    "sharegpt": ("messages",),
    "alpaca": ("instruction", "input", "output", "system"),
    "prompt_completion": ("prompt", "completion"),
    "text": ("text",),
}
EXTRA_KEYS = ("reference", "avoid", "category")
# ShareGPT is the messages format spelled differently; data.fields overrides these defaults.
SHAREGPT_KEYS = {"messages": "conversations", "role": "from", "content": "value"}
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant"}


@dataclass(frozen=True)
class Names:
    """Where each of lorafit's keys lives in one source's records (itself unless data.fields says)."""

    keys: dict[str, str] = field(default_factory=dict)  # lorafit's key -> the user's
    roles: dict[str, str] = field(default_factory=dict)  # the user's role value -> lorafit's

    def __getitem__(self, key: str) -> str:
        return self.keys.get(key, key)


IDENTITY = Names()


def names_for(fmt: str, fields: Any = None) -> Names:
    """The key names of a format, with the recipe's `data.fields` (or a source's) applied on top."""
    keys = dict(SHAREGPT_KEYS) if fmt == "sharegpt" else {}
    roles = dict(SHAREGPT_ROLES) if fmt == "sharegpt" else {}
    if fields is not None:
        keys.update({k: getattr(fields, k) for k in KEYS if getattr(fields, k) is not None})
        roles.update(fields.roles)
    return Names({k: v for k, v in keys.items() if k != v}, roles)


def detect_format(record: dict, fields: Any = None) -> str:
    """The format of one record from its keys (after data.fields), e.g. `messages` or `alpaca`."""
    chat, share = names_for("messages", fields), names_for("sharegpt", fields)
    for key in (chat["messages"], share["messages"]):
        if key in record:
            turns = record[key]
            first = turns[0] if isinstance(turns, list) and turns and isinstance(turns[0], dict) else {}
            if chat["role"] in first:
                return "messages"
            if share["role"] in first:
                return "sharegpt"
            return "messages" if key == chat["messages"] else "sharegpt"
    if chat["instruction"] in record and chat["output"] in record:
        return "alpaca"
    if chat["prompt"] in record and chat["completion"] in record:
        return "prompt_completion"
    if chat["text"] in record:
        return "text"
    raise DataError(
        f"cannot detect the data format from the keys {sorted(record)}",
        "set data.format (messages | sharegpt | alpaca | prompt_completion | text), "
        "and data.fields if your keys have other names (e.g. fields: {messages: conversation})",
    )


def canonical(record: dict, fmt: str, names: Names) -> dict:
    """The record with lorafit's key and role names; keys it does not know are kept as they are."""
    if not names.keys and not names.roles:
        return record
    theirs = {user: ours for ours, user in names.keys.items() if user in record}
    out = {k: v for k, v in record.items() if k not in theirs}
    out.update({ours: record[user] for user, ours in theirs.items()})
    turns = out.get("messages")
    if fmt in ("messages", "sharegpt") and isinstance(turns, list):
        out["messages"] = [_canonical_turn(t, names) for t in turns]
    return out


def _canonical_turn(turn: Any, names: Names) -> Any:
    if not isinstance(turn, dict):
        return turn
    role_key, content_key = names["role"], names["content"]
    out = {k: v for k, v in turn.items() if k not in (role_key, content_key)}
    if role_key in turn:
        role = turn[role_key]
        out["role"] = names.roles.get(role, role) if isinstance(role, str) else role
    if content_key in turn:
        out["content"] = turn[content_key]
    return out


# ---------------------------------------------------------------- validation


def _missing(record: dict, key: str, hint_field: str) -> ValueError:
    close = difflib.get_close_matches(key, [str(k) for k in record], n=1, cutoff=0.6)
    extra = (
        f"; did you mean '{close[0]}'? (set data.fields.{hint_field}: {close[0]})"
        if close
        else f" (keys: {', '.join(map(str, record)) or 'none'})"
    )
    return ValueError(f"missing field '{key}'{extra}")


def nonempty_str(value: Any, what: str) -> str:
    if value is None:
        raise ValueError(f"{what} is missing")
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{what} is empty")
    return value


def to_messages(record: dict, fmt: str, names: Names = IDENTITY, style: str = "plain") -> list[dict] | None:
    """Chat formats as a validated list of {role, content}; None for plain-text formats.

    `record` is canonical; `names` only words the errors with the user's own key names; `style` is
    data.prompt_style, how an alpaca row's instruction and input make the user turn.
    """
    if fmt in ("messages", "sharegpt"):
        key, rk, ck = names["messages"], names["role"], names["content"]
        if "messages" not in record:
            raise _missing(record, key, "messages")
        raw = record["messages"]
        if not isinstance(raw, list) or not raw:
            raise ValueError(f"'{key}' must be a non-empty list, got {type(raw).__name__ if raw else 'an empty one'}")
        msgs = []
        for i, m in enumerate(raw):
            if not isinstance(m, dict):
                raise ValueError(f"{key}[{i}] must be an object with '{rk}' and '{ck}', got {type(m).__name__}")
            if "role" not in m:
                raise ValueError(f"{key}[{i}] has no '{rk}' (keys: {', '.join(map(str, m)) or 'none'})")
            if m["role"] not in ROLES:
                raise ValueError(
                    f"{key}[{i}]: unknown role {m['role']!r} (expected system, user or assistant; "
                    f"map yours with data.fields.roles, e.g. {{{m['role']}: assistant}})"
                )
            msgs.append({"role": m["role"], "content": nonempty_str(m.get("content"), f"{key}[{i}].{ck}")})
    elif fmt == "alpaca":
        system, instruction, extra, output = alpaca_parts(record, names)
        msgs = [
            {"role": "user", "content": user_turn(instruction, extra, style)},
            {"role": "assistant", "content": output},
        ]
        if system and system.strip():
            msgs.insert(0, {"role": "system", "content": system})
    else:
        return None
    _check_order(msgs, names["messages"] if fmt != "alpaca" else "turns")
    return msgs


# The Stanford Alpaca prompt (as its repository publishes it), which axolotl's and torchtune's alpaca formats keep.
ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)
ALPACA_PREAMBLE_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)
PROMPT_STYLES = ("plain", "alpaca", "torchtune", "llamafactory")


def alpaca_parts(record: dict, names: Names = IDENTITY) -> tuple[str | None, str, str, str]:
    """(system, instruction, input, output) of a canonical alpaca row, validated; input is "" when absent."""
    if "instruction" not in record:
        raise _missing(record, names["instruction"], "instruction")
    if "output" not in record:
        raise _missing(record, names["output"], "output")
    instruction = nonempty_str(record["instruction"], names["instruction"])
    extra = record.get("input") or ""
    if not isinstance(extra, str):
        raise ValueError(f"{names['input']} must be a string, got {type(extra).__name__}")
    output = nonempty_str(record["output"], names["output"])
    system = record.get("system")
    if system is not None and not isinstance(system, str):
        raise ValueError(f"{names['system']} must be a string, got {type(system).__name__}")
    return system, instruction, extra if extra.strip() else "", output


def alpaca_prompt(instruction: str, extra: str, preamble: str | None = None) -> str:
    """The Alpaca prompt up to and with `### Response:` and its newline; the preamble is the one for the row's kind."""
    if extra:
        head = preamble or ALPACA_PREAMBLE_INPUT
        return f"{head}\n\n### Instruction:\n{instruction}\n\n### Input:\n{extra}\n\n### Response:\n"
    return f"{preamble or ALPACA_PREAMBLE}\n\n### Instruction:\n{instruction}\n\n### Response:\n"


def user_turn(instruction: str, extra: str, style: str) -> str:
    """An alpaca row's user turn in a chat template, by data.prompt_style."""
    if style == "torchtune":  # torchtune's alpaca datasets put the whole Alpaca prompt in the user message
        return alpaca_prompt(instruction, extra)
    if style == "llamafactory":  # LLaMA-Factory's alpaca converter: instruction and input joined by a newline
        return f"{instruction}\n{extra}" if extra else instruction
    return f"{instruction}\n\n{extra}" if extra else instruction


def plain_text(fmt: str, style: str = "plain") -> bool:
    """Whether rows of this format are rendered without a chat template (so they get a BOS where the tokenizer
    adds one): text, prompt_completion, and alpaca rows in the original Alpaca style."""
    return fmt not in CHAT_FORMATS or (fmt == "alpaca" and style == "alpaca")


def alpaca_text(record: dict, names: Names = IDENTITY) -> tuple[str, str]:
    """prompt_style alpaca: (the Alpaca prompt, the response). A row's system text stands in for the preamble."""
    system, instruction, extra, output = alpaca_parts(record, names)
    return alpaca_prompt(instruction, extra, system if system and system.strip() else None), output


def _check_order(msgs: list[dict], key: str) -> None:
    start = 1 if msgs[0]["role"] == "system" else 0
    for i, m in enumerate(msgs[start:], start):
        expected = "user" if (i - start) % 2 == 0 else "assistant"
        if m["role"] == "system":
            raise ValueError(f"{key}[{i}]: a system message may only come first")
        if m["role"] != expected:
            raise ValueError(
                f"{key}[{i}] is {m['role']!r}, expected {expected!r} (turns alternate user/assistant after an optional system message)"
            )
    if len(msgs) == start or msgs[-1]["role"] != "assistant":
        raise ValueError("the conversation must end with an assistant turn")


# ---------------------------------------------------------------- chat templates


def resolve_chat_template(setting: str | None, tokenizer) -> tuple[str, str | None]:
    """(template, warning): data.chat_template by name or as Jinja, else the model's own, else ChatML."""
    if setting:
        return template_text(setting), None
    own = tokenizer.chat_template
    if isinstance(own, dict):  # several named templates: the default one is for chat
        own = own.get("default")
    if own:
        return own, None
    warning = "the model has no chat template; using ChatML (set data.chat_template to choose one)"
    vocab = tokenizer.get_vocab()
    if "<|im_start|>" not in vocab or "<|im_end|>" not in vocab:
        warning += "; <|im_start|>/<|im_end|> are not tokens of this model, so they are learned as plain text"
    return DEFAULT_CHAT_TEMPLATE, warning


# ---------------------------------------------------------------- rendering


@functools.lru_cache(maxsize=16)
def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer itself puts a BOS in front of a plain text (most chat models' do not).

    Texts are tokenized without special tokens (chat templates write their own), so examples of the formats
    without a template (text, prompt_completion) get the BOS id in front, as Llama and Gemma see at inference.
    As an id, not as text: a SentencePiece prefix space goes only on a text that starts the input."""
    bos_id = getattr(tokenizer, "bos_token_id", None)
    ids = tokenizer("a")["input_ids"]
    return bos_id is not None and bool(ids) and ids[0] == bos_id


def render(
    record: dict,
    fmt: str,
    tokenizer,
    train_on: str,
    template: str | None = None,
    names: Names = IDENTITY,
    style: str = "plain",
) -> list[tuple[str, bool]]:
    """Split a canonical record into (text, trained) segments using the chat template's own rendering."""
    msgs = None if plain_text(fmt, style) else to_messages(record, fmt, names, style)
    if msgs is None:
        eos = tokenizer.eos_token or ""
        if fmt == "alpaca":
            prompt, output = alpaca_text(record, names)
            return [(prompt, train_on == "all"), (output + eos, True)]
        if fmt == "prompt_completion":
            prompt = nonempty_str(record.get("prompt"), names["prompt"])
            completion = nonempty_str(record.get("completion"), names["completion"])
            return [(prompt, train_on == "all"), (completion + eos, True)]
        return [(nonempty_str(record.get("text"), names["text"]) + eos, True)]
    template = template or resolve_chat_template(None, tokenizer)[0]

    def text(upto: int, generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(
            msgs[:upto], chat_template=template, tokenize=False, add_generation_prompt=generation_prompt
        )

    assistant_turns = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
    trained = set(assistant_turns[-1:] if train_on == "last_assistant" else assistant_turns)
    segments: list[tuple[str, bool]] = []
    done = ""
    eos = tokenizer.eos_token or ""
    for i in assistant_turns:
        prompt = text(i, True)
        turn = text(i + 1, False)
        if eos and done.endswith(eos) and not prompt.startswith(done) and prompt.startswith(done[: -len(eos)]):
            # A template that closes the whole conversation with EOS (Phi-3's): only the last turn keeps it.
            done = done[: -len(eos)]
            core = segments[-2][0][: -len(eos)] if segments[-2][0].endswith(eos) else segments[-2][0]
            segments[-2:] = [(core.rstrip(), segments[-2][1]), (core[len(core.rstrip()) :], train_on == "all")]
        if not (prompt.startswith(done) and turn.startswith(prompt)):
            raise DataError(
                "the chat template does not render conversations prefix by prefix, so assistant turns cannot be masked",
                "set data.chat_template: chatml (or another template that renders each turn independently)",
            )
        reply = turn[len(prompt) :]
        reply_core = reply.rstrip()  # the end-of-turn token is trained; the newline after it is not
        segments.append((prompt[len(done) :], train_on == "all"))
        segments.append((reply_core, i in trained or train_on == "all"))
        segments.append((reply[len(reply_core) :], train_on == "all"))
        done = turn
    # Conversations end with an assistant turn (validated), so `done` is the whole rendering.
    return [s for s in segments if s[0]]
