"""Proof that each served adapter is live, before the server says ready: the served greedy answer to a probe
equals PEFT's own greedy answer with that adapter alone on the base, and differs from the base's answer. Peers'
trackers are full of servers that silently answered with the base; this turns that into an error at start-up."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from lorafit.core.errors import AdapterNotLive
from lorafit.models.generation import chat_prompt, generate

if TYPE_CHECKING:
    from lorafit.serve.served import ServedRun

PROBE = "Hello! Who are you, and what can you help me with?"
PROBE_TOKENS = 24  # enough greedy tokens for an adapter to show itself, few enough to probe in seconds on a CPU


def reference_answers(base, base_tokenizer, runs: list[ServedRun], base_name: str, probe: str) -> tuple[dict, object]:
    """{model name: PEFT's greedy answer to the probe}, each adapter loaded alone onto `base` (and unloaded again,
    so the base stays in memory once), and the base's own; returns the base model without any adapter."""
    from peft import PeftModel

    from lorafit.serve.served import adapter_tokenizer

    messages = [{"role": "user", "content": probe}]
    answers = {base_name: generate(base, base_tokenizer, [chat_prompt(base_tokenizer, messages)], PROBE_TOKENS)[0]}
    for run in runs:
        tokenizer = adapter_tokenizer(run)
        alone = PeftModel.from_pretrained(base, str(run.adapter_dir)).eval()
        answers[run.name] = generate(alone, tokenizer, [chat_prompt(tokenizer, messages)], PROBE_TOKENS)[0]
        # prompt learning leaves the base's modules untouched; every other method is unloaded from them again
        base = alone.get_base_model() if alone.active_peft_config.is_prompt_learning else alone.unload()
    return answers, base


def check(served: Callable[[str], str], references: dict[str, str], base_name: str) -> dict[str, str]:
    """Ask every model the probe through the server's own path; AdapterNotLive naming the run and both answers when
    one differs from PEFT's or equals the base's. Returns the served answers."""
    answers = {name: served(name) for name in references}
    for name, answer in answers.items():
        if answer != references[name]:
            raise AdapterNotLive(
                f"{name}: the served answer to the probe is not PEFT's: served {answer!r}, PEFT {references[name]!r}",
                "the server does not apply this adapter as PEFT does; serve it with --engine transformers, or "
                "merge it (lorafit merge) and serve the merged model",
            )
        if name != base_name and answer == answers[base_name]:
            raise AdapterNotLive(
                f"{name}: the adapter answers the probe exactly as the base does ({answer!r}): it is not applied "
                "(empty or damaged weights, or target modules this base does not have)",
                "check the adapter with `lorafit eval`; if it only changes answers on its own task, give "
                "--probe a prompt from its training data",
            )
    return answers
