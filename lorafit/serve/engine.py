"""The `transformers` engine: one base model in memory with every run's adapter loaded (PEFT multi-adapter), each
request routed to its adapter, or to none for the base. One request decodes at a time (PEFT's active adapter is
the model's state); a laptop, a CPU box or a test is what it is for."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

from lorafit.core.errors import RecipeError
from lorafit.models.generation import Stream, chat_prompt
from lorafit.serve.served import adapter_tokenizer

if TYPE_CHECKING:
    from lorafit.serve.served import ServedRun


@dataclass
class Reply:
    """One request's answer as it is decoded; iterate it once (inside the engine's lock)."""

    engine: Engine
    model: str
    stream: Stream

    def __iter__(self) -> Iterator[str]:
        with self.engine.using(self.model):
            yield from self.stream

    @property
    def finish_reason(self) -> str:
        return "stop" if self.stream.finished else "length"

    @property
    def usage(self) -> dict:
        completion = len(self.stream.ids) + int(self.stream.finished)
        prompt = self.stream.prompt_tokens
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class Engine:
    def __init__(self, model, tokenizers: dict, base_name: str, context: int | None):
        self.model, self.tokenizers, self.base_name, self.context = model, tokenizers, base_name, context
        self.lock = threading.Lock()
        self.closing = threading.Event()  # set at shutdown: requests still waiting for the model give up

    @property
    def names(self) -> list[str]:
        return list(self.tokenizers)

    def prompt(self, model: str, messages: list[dict]) -> str:
        """The chat prompt as this model's own chat template writes it."""
        return chat_prompt(self.tokenizers[model], messages)

    def reply(self, model: str, prompt: str, max_tokens: int, *, chat: bool = True, sampling: dict | None = None):
        """A chat prompt carries its specials already; a plain completion prompt gets the tokenizer's (BOS)."""
        stream = Stream(
            self.model, self.tokenizers[model], prompt, max_tokens, add_special_tokens=not chat, sampling=sampling
        )
        return Reply(self, model, stream)

    def prompt_tokens(self, model: str, prompt: str, *, chat: bool = True) -> int:
        return len(self.tokenizers[model](prompt, add_special_tokens=not chat)["input_ids"])

    @contextmanager
    def using(self, model: str):
        """Hold the model with this model's adapter active (none for the base) while one request decodes."""
        while not self.lock.acquire(timeout=0.5):
            if self.closing.is_set():
                raise RuntimeError("the server is shutting down")
        try:
            if model == self.base_name:
                with self.model.disable_adapter():
                    yield
            else:
                self.model.set_adapter(model)
                yield
        finally:
            self.lock.release()

    def answer(self, model: str, text: str, max_tokens: int) -> str:
        """A greedy chat answer through the path requests take (the liveness probe asks this)."""
        reply = self.reply(model, self.prompt(model, [{"role": "user", "content": text}]), max_tokens)
        for _ in reply:
            pass
        return reply.stream.text


def load(runs: list[ServedRun], base_name: str, probe: str) -> tuple[Engine, dict[str, str]]:
    """The base once, PEFT's reference answers to the probe (each adapter alone), then every adapter on the one
    base; returns the engine and the references."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    from lorafit import models
    from lorafit.core import hub
    from lorafit.core.modelinfo import positions
    from lorafit.serve import liveness

    kinds = {run.config.get("peft_type") for run in runs}
    if len(kinds) > 1:
        listed = ", ".join(f"{run.name} ({run.config.get('peft_type')})" for run in runs)
        raise RecipeError(
            f"one PEFT model holds adapters of one kind, and these differ: {listed}",
            "serve each kind on a server of its own (another --port)",
        )
    recipe = runs[0].recipe
    path = models.resolve_model_path(recipe)
    base = models.load_model(recipe, path).eval()
    # The base's own tokenizer and chat template: a run's data.chat_template is that run's
    with hub.for_model(path):
        base_tokenizer = AutoTokenizer.from_pretrained(path, revision=recipe.model.revision)
    if base_tokenizer.pad_token is None:
        base_tokenizer.pad_token = base_tokenizer.eos_token
    references, base = liveness.reference_answers(base, base_tokenizer, runs, base_name, probe)
    model = PeftModel.from_pretrained(base, str(runs[0].adapter_dir), adapter_name=runs[0].name)
    for run in runs[1:]:
        model.load_adapter(str(run.adapter_dir), adapter_name=run.name)
    model.eval()
    tokenizers = {run.name: adapter_tokenizer(run) for run in runs}
    tokenizers[base_name] = base_tokenizer
    found = positions(base.config.to_dict())
    return Engine(model, tokenizers, base_name, found[0] if found else None), references
