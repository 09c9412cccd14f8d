"""Serving figures for `lorafit serve` (transformers engine): every run and the base behind one server, against
the same requests served one adapter at a time (a server per model, as without multi-LoRA serving).

Each request is a held-out warehouse question, greedy, sent through the `openai` client; every answer is checked
against PEFT's own greedy answer for its adapter (the adapter alone on a fresh base). Reports requests/s, p50/p95
latency and each server's peak RSS, then one JSON line.

    python scripts/serve_bench.py runs/a runs/b runs/c               # 24 requests over 3 runs + the base
    python scripts/serve_bench.py runs/a runs/b --requests 16 --max-tokens 32
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

EVAL = ROOT / "recipes" / "data" / "warehouse_eval.jsonl"


def questions(count: int) -> list[list[dict]]:
    rows = [json.loads(line) for line in EVAL.read_text().splitlines() if line.strip()]
    return [[m for m in row["messages"] if m["role"] != "assistant"][:2] for row in rows[:count]]


def peft_answers(runs: list[Path], asks: list[tuple[str, list[dict]]], max_tokens: int) -> dict[tuple, str]:
    """PEFT's greedy answer for each (model, question): the adapter alone on a fresh base, one prompt at a time."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    from lorafit.models.generation import chat_prompt, generate
    from lorafit.serve import served

    loaded = served.load(runs[0])
    base_name = served.base_name(loaded)
    references = {}
    for model_name in [base_name, *(run.name for run in runs)]:
        base = load_base(loaded)
        run = next((r for r in runs if r.name == model_name), None)
        model = PeftModel.from_pretrained(base, str(run / "adapter")).eval() if run else base
        tokenizer = AutoTokenizer.from_pretrained(run / "adapter" if run else resolve_base(loaded))
        for name, messages in asks:
            if name == model_name and (name, str(messages)) not in references:
                prompt = chat_prompt(tokenizer, messages)
                references[(name, str(messages))] = generate(model, tokenizer, [prompt], max_tokens, batch_size=1)[0]
    return references


def resolve_base(run) -> str:
    from lorafit import models

    return str(models.resolve_model_path(run.recipe))


def load_base(run):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(resolve_base(run), dtype=torch.float32).eval()


def start(refs: list[str]) -> tuple[subprocess.Popen, str, float]:
    argv = [sys.executable, "-m", "lorafit.cli", "serve", *refs, "--engine", "transformers", "--port", "0"]
    began = time.monotonic()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in process.stdout:
        lines.append(line)
        found = re.search(r"ready (http://\S+/v1)", line)
        if found:
            return process, found.group(1), time.monotonic() - began
    raise SystemExit("lorafit serve did not become ready:\n" + "".join(lines[-30:]))


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def fire(url: str, asks: list[tuple[str, list[dict]]], max_tokens: int) -> tuple[list[str], list[float], float]:
    """Every request at once; (answers, latencies, wall seconds)."""
    import openai

    api = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=900)

    def one(ask):
        began = time.monotonic()
        reply = api.chat.completions.create(model=ask[0], messages=ask[1], max_tokens=max_tokens, temperature=0)
        return reply.choices[0].message.content, time.monotonic() - began

    began = time.monotonic()
    with ThreadPoolExecutor(len(asks)) as pool:
        done = list(pool.map(one, asks))
    return [a for a, _ in done], [t for _, t in done], time.monotonic() - began


def stop(process: subprocess.Popen) -> None:
    process.send_signal(2)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def summary(latencies: list[float], wall: float) -> dict:
    ordered = sorted(latencies)
    return {
        "requests": len(latencies),
        "req_s": round(len(latencies) / wall, 3),
        "p50_s": round(statistics.median(ordered), 2),
        "p95_s": round(ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))], 2),
        "wall_s": round(wall, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args()

    from lorafit.serve import served

    runs = [run.resolve() for run in args.runs]
    base_name = served.base_name(served.load(runs[0]))
    names = [*(run.name for run in runs), base_name]
    pool = questions(args.requests)
    asks = [(names[i % len(names)], pool[i]) for i in range(args.requests)]
    references = peft_answers(runs, asks, args.max_tokens)

    process, url, startup = start([str(run) for run in runs])
    answers, latencies, wall = fire(url, asks, args.max_tokens)
    together = {
        **summary(latencies, wall),
        "startup_s": round(startup, 1),
        "peak_rss_mb": round(peak_rss_mb(process.pid)),
    }
    stop(process)
    together["equal_to_peft"] = sum(a == references[(n, str(m))] for a, (n, m) in zip(answers, asks))

    apart_latencies, apart_wall, apart_equal, apart_rss = [], 0.0, 0, []
    for run_name in names:
        mine = [ask for ask in asks if ask[0] == run_name]
        process, url, _ = start([str(run) for run in runs if run.name == run_name] or [str(runs[0])])
        got, lat, took = fire(url, mine, args.max_tokens)
        apart_rss.append(peak_rss_mb(process.pid))
        stop(process)
        apart_latencies += lat
        apart_wall += took
        apart_equal += sum(a == references[(n, str(m))] for a, (n, m) in zip(got, mine))
    apart = {**summary(apart_latencies, apart_wall), "peak_rss_mb_sum": round(sum(apart_rss))}
    apart["equal_to_peft"] = apart_equal

    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"{args.requests} chat requests over {len(runs)} adapters + the base, max_tokens {args.max_tokens}"
    )
    for col in ("", "req/s", "p50 s", "p95 s", "equal to PEFT", "peak RSS MB"):
        table.add_column(col)
    table.add_row(
        "one server, every adapter",
        f"{together['req_s']:.2f}",
        f"{together['p50_s']:.1f}",
        f"{together['p95_s']:.1f}",
        f"{together['equal_to_peft']}/{args.requests}",
        f"{together['peak_rss_mb']}",
    )
    table.add_row(
        "a server per model, in turn",
        f"{apart['req_s']:.2f}",
        f"{apart['p50_s']:.1f}",
        f"{apart['p95_s']:.1f}",
        f"{apart['equal_to_peft']}/{args.requests}",
        f"{apart['peak_rss_mb_sum']} (sum)",
    )
    Console().print(table)
    print(json.dumps({"together": together, "one_at_a_time": apart}))
    return 0 if together["equal_to_peft"] == args.requests else 1


if __name__ == "__main__":
    raise SystemExit(main())
