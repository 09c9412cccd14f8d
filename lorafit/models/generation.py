"""Greedy generation with a loaded model: chat prompts, the tokens that end a reply, batched decoding.
Shared by `lorafit eval`, `lorafit generate`, `lorafit export`, `lorafit serve` and data.preserve."""

from __future__ import annotations

import queue
import threading
from typing import Iterator

from lorafit.core.chat_templates import DEFAULT_CHAT_TEMPLATE


def chat_prompt(tokenizer, messages: list[dict], template: str | None = None) -> str:
    return tokenizer.apply_chat_template(
        messages,
        chat_template=template or tokenizer.chat_template or DEFAULT_CHAT_TEMPLATE,
        tokenize=False,
        add_generation_prompt=True,
    )


def stop_token_ids(model, tokenizer) -> list[int]:
    """Every token that ends a reply: the model's generation_config eos (often several, e.g. Gemma's <eos> and
    <end_of_turn>), the tokenizer's eos, and the chat template's end-of-turn token (ChatML's <|im_end|> on a
    base model whose eos is <|endoftext|>). An explicit eos_token_id would replace generation_config's list."""
    from jinja2 import TemplateError

    ids: list[int] = []
    for value in (getattr(getattr(model, "generation_config", None), "eos_token_id", None), tokenizer.eos_token_id):
        ids += value if isinstance(value, list) else [value] if value is not None else []
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
    template = tokenizer.chat_template or DEFAULT_CHAT_TEMPLATE
    try:
        prompt = tokenizer.apply_chat_template(
            msgs[:1], chat_template=template, tokenize=False, add_generation_prompt=True
        )
        turn = tokenizer.apply_chat_template(msgs, chat_template=template, tokenize=False)
    except TemplateError:  # a template with rules of its own (a system turn first, ...): the eos ids above stay
        turn = prompt = ""
    if turn.startswith(prompt) and turn[len(prompt) :].strip():
        last = tokenizer(turn[len(prompt) :].rstrip(), add_special_tokens=False)["input_ids"][-1]
        if last in set(tokenizer.get_added_vocab().values()):  # a token of its own, not the tail of a word
            ids.append(last)
    return list(dict.fromkeys(ids))


def generate(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int = 64,
    batch_size: int = 8,
    add_special_tokens: bool = False,
) -> list[str]:
    """Greedy continuations, cut at the first token that ends a reply. add_special_tokens: for plain
    prompts (no chat template to write them)."""
    return [
        text
        for text, _ in generate_with_ends(model, tokenizer, prompts, max_new_tokens, batch_size, add_special_tokens)
    ]


def generate_with_ends(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int = 64,
    batch_size: int = 8,
    add_special_tokens: bool = False,
) -> list[tuple[str, bool]]:
    """(greedy continuation, whether it ended before max_new_tokens), batched with left padding (what
    decoder-only generation needs)."""
    import torch

    stops = stop_token_ids(model, tokenizer)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    outputs: list[tuple[str, bool]] = []
    try:
        for start in range(0, len(prompts), batch_size):
            batch = tokenizer(
                prompts[start : start + batch_size],
                return_tensors="pt",
                padding=True,
                add_special_tokens=add_special_tokens,
            )
            batch = {k: v.to(model.device) for k, v in batch.items()}
            with torch.no_grad():
                out = model.generate(
                    **batch,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=stops or None,
                )
            for row in out[:, batch["input_ids"].shape[1] :].tolist():
                end = next((i for i, t in enumerate(row) if t in stops), None)
                text = tokenizer.decode(row[: len(row) if end is None else end], skip_special_tokens=True).strip()
                outputs.append((text, end is not None))
    finally:
        tokenizer.padding_side = side
    return outputs


class Stream:
    """One prompt's continuation, piece by piece as it is decoded (`lorafit serve`). Cut and stripped where
    `generate` cuts it (the first token that ends a reply), so greedy `text` is `generate`'s answer for the prompt,
    and the joined pieces are `text`. Iterate it once; `close()` (or leaving the loop early) stops the decoding."""

    def __init__(
        self,
        model,
        tokenizer,
        prompt: str,
        max_new_tokens: int,
        *,
        add_special_tokens: bool = False,
        sampling: dict | None = None,
    ):
        self.model, self.tokenizer, self.max_new_tokens = model, tokenizer, max_new_tokens
        self.inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=add_special_tokens)
        self.prompt_tokens = int(self.inputs["input_ids"].shape[1])
        self.sampling = sampling or {"do_sample": False}
        self.ids: list[int] = []
        self.finished = False  # ended by a stop token (OpenAI's finish_reason "stop"), not by max_new_tokens
        self.text = ""
        self._cancel = threading.Event()
        self._pieces = self._run()

    def __iter__(self) -> Iterator[str]:
        return self._pieces

    def close(self) -> None:
        self._pieces.close()

    def _run(self) -> Iterator[str]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        stops = stop_token_ids(self.model, self.tokenizer)
        tokens: queue.Queue = queue.Queue()
        cancel, failure = self._cancel, []

        class Ids(BaseStreamer):
            prompt_seen = False

            def put(self, value):
                if self.prompt_seen:
                    tokens.put(value.reshape(-1).tolist())
                self.prompt_seen = True  # generate() first pushes the prompt itself

            def end(self):
                tokens.put(None)

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device)

        sampling = dict(self.sampling)
        seed = sampling.pop("seed", None)

        def work():
            try:
                if seed is not None:
                    torch.manual_seed(seed)
                with torch.no_grad():
                    self.model.generate(
                        **{k: v.to(self.model.device) for k, v in self.inputs.items()},
                        max_new_tokens=self.max_new_tokens,
                        pad_token_id=self.tokenizer.pad_token_id,
                        eos_token_id=stops or None,
                        streamer=Ids(),
                        stopping_criteria=StoppingCriteriaList([Cancelled()]),
                        **sampling,
                    )
            except BaseException as exc:  # raised again in the reader's thread
                failure.append(exc)
                tokens.put(None)

        thread = threading.Thread(target=work, name="lorafit-generate", daemon=True)
        thread.start()
        sent = ""
        try:
            while (new := tokens.get()) is not None:
                for token in new:
                    if self.finished:
                        break
                    if token in stops:
                        self.finished = True
                    else:
                        self.ids.append(token)
                # What is safe to show: generate()'s answer is stripped, so trailing blanks wait for what follows,
                # and a half-decoded character (U+FFFD) waits for the rest of its bytes.
                shown = self.tokenizer.decode(self.ids, skip_special_tokens=True).strip()
                if not shown.endswith("\ufffd") and shown.startswith(sent) and len(shown) > len(sent):
                    yield shown[len(sent) :]
                    sent = shown
            if failure:
                raise failure[0]
            self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True).strip()
            if self.text.startswith(sent) and len(self.text) > len(sent):
                yield self.text[len(sent) :]
        finally:
            cancel.set()
            thread.join()
