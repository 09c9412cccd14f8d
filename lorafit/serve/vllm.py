"""The `vllm` engine: lorafit builds the `vllm serve` command (every run a LoRA module, --max-lora-rank and
--max-loras computed from the adapters), runs it as a child process from vLLM's own environment (vLLM pins its
own torch and transformers, so it never shares lorafit's), proves every adapter live over HTTP, and ends the
child with itself. Adapters vLLM cannot serve are refused before anything starts."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from lorafit.core.errors import MissingError, RecipeError

if TYPE_CHECKING:
    from lorafit.serve.served import ServedRun

# vLLM's LoRAConfig accepts these --max-lora-rank values only; the rank given is the smallest that covers them all.
RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
READY_TIMEOUT_S = 900  # vLLM's start-up: ~60 s on a CPU, longer when it compiles or downloads
STOP_TIMEOUT_S = 15  # after SIGTERM, before SIGKILL


def find(executable: Path | None, *, required: bool = True) -> Path | None:
    """--vllm PATH (the executable, or the environment's folder holding bin/vllm), else `vllm` on PATH."""
    if executable is not None:
        path = Path(executable).expanduser()
        path = path / "bin" / "vllm" if path.is_dir() else path
        if path.is_file() and os.access(path, os.X_OK):
            return path
        if required:
            raise MissingError(
                f"--vllm {executable}: no vllm executable there", "give the path of bin/vllm in its venv"
            )
        return None
    found = shutil.which("vllm")
    if found is None and required:
        raise MissingError(
            "--engine vllm: no `vllm` executable on PATH",
            "install vLLM in a venv of its own (it pins its own torch) and give it: --vllm /path/to/venv/bin/vllm; "
            "or serve with --engine transformers",
        )
    return Path(found) if found else None


def refusals(run: ServedRun) -> list[str]:
    """Why vLLM cannot serve this adapter as trained (empty when it can)."""
    config = run.config
    fix = f"merge it (lorafit merge {run.run_dir}) and serve the merged model, or use --engine transformers"
    kind = config.get("peft_type")
    out = []
    if kind != "LORA":
        out.append(f"{run.name}: vLLM serves LoRA adapters only, not {kind}; {fix}")
    elif config.get("use_dora"):
        out.append(f"{run.name}: vLLM does not apply DoRA's magnitude vector (it would serve a plain LoRA); {fix}")
    if config.get("modules_to_save"):
        listed = ", ".join(config["modules_to_save"])
        out.append(f"{run.name}: vLLM ignores modules_to_save ({listed}), which this adapter trains in full; {fix}")
    if kind == "LORA" and run.rank > RANKS[-1]:
        out.append(f"{run.name}: rank {run.rank} is above vLLM's largest LoRA rank {RANKS[-1]}; {fix}")
    return out


def command(runs: list[ServedRun], base_name: str, *, executable: Path, host: str, port: int, dtype: str,
            api_key: str | None, base_path: str) -> list[str]:  # fmt: skip
    """The `vllm serve` command line; RecipeError listing every adapter it cannot serve."""
    refused = [reason for run in runs for reason in refusals(run)]
    if refused:
        raise RecipeError("--engine vllm cannot serve: " + "; ".join(refused))
    rank = next(r for r in RANKS if r >= max(run.rank for run in runs))
    argv = [str(executable), "serve", base_path, "--served-model-name", base_name, "--host", host, "--port", str(port)]
    argv += ["--dtype", dtype, "--enable-lora", "--max-lora-rank", str(rank), "--max-loras", str(len(runs))]
    argv += ["--lora-modules", *(f"{run.name}={run.adapter_dir.resolve()}" for run in runs)]
    if api_key:
        argv += ["--api-key", api_key]
    return argv


def chat(url: str, model: str, text: str, max_tokens: int, api_key: str | None, timeout: float = 120) -> str:
    """One greedy chat answer over HTTP (the probe), its text stripped as lorafit's own generate strips it."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    request = urllib.request.Request(f"{url}/chat/completions", json.dumps(body).encode(), _headers(api_key))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return (json.loads(response.read())["choices"][0]["message"]["content"] or "").strip()
    except urllib.error.HTTPError as exc:  # vLLM's own error body says why (its log above has the rest)
        detail = exc.read().decode("utf-8", "replace")[:500]
        raise MissingError(
            f"vllm answered the liveness probe for {model} with HTTP {exc.code}: {detail}",
            "see vLLM's log above; serve with --engine transformers where vLLM cannot run this model",
        ) from None


def _headers(api_key: str | None) -> dict:
    return {"Content-Type": "application/json", **({"Authorization": f"Bearer {api_key}"} if api_key else {})}


def wait_ready(process: subprocess.Popen, url: str, api_key: str | None, timeout: float = READY_TIMEOUT_S) -> None:
    """Until /v1/models answers; MissingError when the child exits first or never answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            if process.returncode == -signal.SIGILL:
                raise MissingError(
                    "vllm died of an illegal instruction before it was ready: a library in its environment was built "
                    "for instructions this CPU lacks (CUDA builds of torchvision / torchaudio / torchcodec beside a "
                    "CPU torch do this)",
                    "serve with --engine transformers here, or run vLLM on a machine it was built for",
                )
            raise MissingError(f"vllm exited with code {process.returncode} before it was ready", "see its log above")
        try:
            with urllib.request.urlopen(urllib.request.Request(f"{url}/models", headers=_headers(api_key)), timeout=5):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(1)
    raise MissingError(f"vllm did not answer at {url} within {timeout:.0f} s", "see its log above")


def stop(process: subprocess.Popen) -> None:
    """End the child and everything it started (its own process group): SIGTERM, then SIGKILL."""
    if process.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def serve(runs, base_name: str, *, host, port, api_key, max_tokens, probe, executable, console) -> None:
    """PEFT's reference answers first (the base is then freed), vLLM started, probed, and waited on until Ctrl-C."""
    from lorafit import models
    from lorafit.core import device
    from lorafit.serve import liveness

    exe = find(executable)
    if port == 0:  # vLLM must be told the port: take a free one now
        from lorafit.serve.listen import bind

        with bind(host, 0) as sock:
            port = sock.getsockname()[1]
    recipe = runs[0].recipe
    base_path = models.resolve_model_path(recipe)
    dtype = device.compute_dtype_name(recipe.training.precision, recipe.model.dtype, device.detect())
    argv = command(runs, base_name, executable=exe, host=host, port=port, dtype=dtype, api_key=api_key,
                   base_path=base_path)  # fmt: skip
    references = reference_answers(runs, base_name, probe, console)
    console.print("starting: " + " ".join(a if a != api_key else "***" for a in argv), highlight=False, markup=False)
    process = subprocess.Popen(argv, start_new_session=True)
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}/v1"
    try:
        wait_ready(process, url, api_key)
        liveness.check(lambda name: chat(url, name, probe, liveness.PROBE_TOKENS, api_key), references, base_name)
        console.print(f"[green]ready[/] {url}: {', '.join([run.name for run in runs] + [base_name])}", highlight=False)
        process.wait()
        if process.returncode:
            raise MissingError(f"vllm exited with code {process.returncode}", "see its log above")
    except KeyboardInterrupt:
        console.print("stopped", highlight=False)
    finally:
        stop(process)


def reference_answers(runs, base_name: str, probe: str, console) -> dict[str, str]:
    """PEFT's greedy probe answers, each adapter alone on the base, computed in lorafit's process before vLLM
    starts; the base is freed again so the two never hold a model at once."""
    import gc

    from lorafit import models
    from lorafit.serve import liveness

    recipe = runs[0].recipe
    path = models.resolve_model_path(recipe)
    with console.status("PEFT's answers to the probe, for the liveness check..."):
        from transformers import AutoTokenizer

        base = models.load_model(recipe, path).eval()
        tokenizer = AutoTokenizer.from_pretrained(path, revision=recipe.model.revision)
        tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
        answers, base = liveness.reference_answers(base, tokenizer, runs, base_name, probe)
    del base
    gc.collect()
    return answers
