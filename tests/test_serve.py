"""`lorafit serve` with the transformers engine, through the real `openai` client: two tiny adapters over one base,
each answering exactly as PEFT does with it, streamed or not; errors as OpenAI bodies; the liveness check; Ctrl-C.

One server for the module (a subprocess, as a user starts it) and one pair of tiny runs trained in a few steps."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

from conftest import chat_records, run_train, tiny_recipe_text, write_jsonl  # noqa: E402

pytestmark = pytest.mark.xdist_group("serve")  # one worker starts the one server
KEY = "sk-test-18"
TAG = "serve-test"
QUESTION = "Question about order 4242: what about return?"


@pytest.fixture(scope="module")
def served_runs(tmp_path_factory, tiny_model_dir) -> dict[str, Path]:
    """Two tiny LoRA runs on one base (different data seeds); the second is registered with a tag."""
    root = tmp_path_factory.mktemp("serve")
    out = {}
    for name, seed, tags in (("serve-alpha", 0, []), ("serve-beta", 1, [TAG])):
        data = write_jsonl(root / f"{name}.jsonl", chat_records(48, seed=seed))
        recipe = root / f"{name}.yaml"
        text = tiny_recipe_text(tiny_model_dir, data, root / name, training={"seed": seed}, output={"tags": tags})
        recipe.write_text(text)
        result = run_train(recipe)
        assert result.exit_code == 0, result.output
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def server(served_runs):
    """`lorafit serve RUN_DIR --tag TAG` on a free port, as a user starts it; yields (process, base url)."""
    argv = [sys.executable, "-m", "lorafit.cli", "serve", str(served_runs["serve-alpha"]), "--tag", TAG]
    argv += ["--engine", "transformers", "--port", "0", "--api-key", KEY]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.monotonic() + 180
    for line in process.stdout:
        lines.append(line)
        found = re.search(r"ready (http://\S+/v1)", line)
        if found or time.monotonic() > deadline:
            break
    assert found, "".join(lines)
    yield process, found.group(1)
    if process.poll() is None:
        process.kill()
        process.wait()


def client(url: str, key: str = KEY):
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def peft_answers(served_runs, tiny_model_dir) -> dict[str, str]:
    """PEFT's own greedy answers to QUESTION, each adapter alone on a fresh base, and the base's."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lorafit.models.generation import chat_prompt, generate

    messages = [{"role": "user", "content": QUESTION}]
    answers = {}
    for name, run in [*served_runs.items(), ("base", None)]:
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
        model = PeftModel.from_pretrained(base, str(run / "adapter")).eval() if run else base
        tokenizer = AutoTokenizer.from_pretrained(run / "adapter" if run else tiny_model_dir)
        answers[name] = generate(model, tokenizer, [chat_prompt(tokenizer, messages)], 40)[0]
    return answers


def test_models_are_the_runs_and_the_base(server, tiny_model_dir):
    models = {m.id: m for m in client(server[1]).models.list().data}
    assert set(models) == {"serve-alpha", "serve-beta", tiny_model_dir.name}
    assert models["serve-alpha"].parent == tiny_model_dir.name


def test_each_model_answers_as_peft_streamed_or_not(server, peft_answers, tiny_model_dir):
    api = client(server[1])
    names = {"serve-alpha": "serve-alpha", "serve-beta": "serve-beta", "base": tiny_model_dir.name}
    assert peft_answers["serve-alpha"] != peft_answers["base"] and peft_answers["serve-beta"] != peft_answers["base"]
    for key, model in names.items():
        ask = dict(model=model, messages=[{"role": "user", "content": QUESTION}], max_tokens=40, temperature=0)
        reply = api.chat.completions.create(**ask)
        assert reply.choices[0].message.content == peft_answers[key], model
        assert reply.usage.completion_tokens <= 40 and reply.choices[0].finish_reason in ("stop", "length")
        chunks = list(api.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True}))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == peft_answers[key], model
        assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens


def test_concurrent_requests_each_get_their_adapters_answer(server, peft_answers, tiny_model_dir):
    """Requests for different adapters at once, streamed and not: each answer is PEFT's for its own adapter."""
    from concurrent.futures import ThreadPoolExecutor

    api = client(server[1])
    names = {"serve-alpha": "serve-alpha", "serve-beta": "serve-beta", "base": tiny_model_dir.name}

    def ask(i: int) -> tuple[str, str]:
        key = list(names)[i % 3]
        ask = dict(model=names[key], messages=[{"role": "user", "content": QUESTION}], max_tokens=40, temperature=0)
        if i % 2:
            return key, "".join(
                c.choices[0].delta.content or "" for c in api.chat.completions.create(**ask, stream=True)
            )
        return key, api.chat.completions.create(**ask).choices[0].message.content

    with ThreadPoolExecutor(9) as pool:
        answers = list(pool.map(ask, range(9)))
    assert all(answer == peft_answers[key] for key, answer in answers), answers


def test_completions_streamed_or_not(server):
    api = client(server[1])
    ask = dict(model="serve-beta", prompt="For order 4242:", max_tokens=12, temperature=0)
    text = api.completions.create(**ask).choices[0].text
    assert text and "".join(c.choices[0].text for c in api.completions.create(**ask, stream=True)) == text


def test_a_dropped_stream_frees_the_server(server):
    api = client(server[1])
    stream = api.chat.completions.create(
        model="serve-alpha", messages=[{"role": "user", "content": QUESTION}], max_tokens=200, stream=True
    )
    next(iter(stream))
    stream.close()
    started = time.monotonic()
    api.chat.completions.create(model="serve-beta", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert time.monotonic() - started < 30


def test_bad_requests_get_openai_error_bodies(server, tiny_model_dir):
    api = client(server[1])
    with pytest.raises(openai.NotFoundError) as exc:
        api.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert exc.value.body["code"] == "model_not_found"
    assert all(name in exc.value.body["message"] for name in ("serve-alpha", "serve-beta", tiny_model_dir.name))
    with pytest.raises(openai.BadRequestError) as exc:
        api.chat.completions.create(model="serve-alpha", messages=[{"role": "user", "content": "hi"}], max_tokens=10**6)
    assert exc.value.body["param"] == "max_tokens"
    request = urllib.request.Request(
        f"{server[1]}/chat/completions", b"{not json", {"Authorization": f"Bearer {KEY}"}, method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as http:
        urllib.request.urlopen(request, timeout=30)
    body = json.loads(http.value.read())
    assert http.value.code == 400 and body["error"]["code"] == "invalid_json" and "Traceback" not in str(body)


def test_the_api_key_is_required(server):
    with pytest.raises(openai.AuthenticationError):
        client(server[1], key="wrong").models.list()
    assert client(server[1]).models.list().data


def test_a_dead_adapter_stops_the_server_before_ready(served_runs, tmp_path):
    """An adapter whose weights do nothing (B zeroed: what a broken save or a wrong target list serves) is caught
    at start-up, naming the run and both answers."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file
    from typer.testing import CliRunner

    from lorafit.cli import app

    run = tmp_path / "dead"
    shutil.copytree(served_runs["serve-alpha"], run)
    weights = run / "adapter" / "adapter_model.safetensors"
    tensors = load_file(weights)
    save_file({k: torch.zeros_like(v) if "lora_B" in k else v for k, v in tensors.items()}, weights)
    result = CliRunner().invoke(app, ["serve", str(run), "--engine", "transformers", "--port", "0"])
    assert result.exit_code == 3, result.output
    assert "dead: the adapter answers the probe exactly as the base does" in result.output


def test_ctrl_c_leaves_nothing_running(server):
    process, url = server
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    os.kill(process.pid, signal.SIGINT)
    assert process.wait(timeout=30) == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
