"""lorafit eval --harness: lm-eval's numbers for the base and for base + adapter, checked against the model itself."""

import json
import math
import shutil
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lorafit.cli import app

from conftest import TOPICS, chat_records, write_jsonl

runner = CliRunner()

SYSTEM = "You are the warehouse support assistant."


def _context(question: str) -> str:
    return f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


def write_tasks(root: Path) -> tuple[Path, list[dict]]:
    """Two local lm-eval tasks over one JSONL of held-out-style questions: a loglikelihood task (perplexity of the
    reference answer) and a multiple-choice task (the right policy vs another topic's)."""
    rows = []
    for i, record in enumerate(chat_records(8, seed=3)):
        question, answer = record["messages"][1]["content"], record["messages"][2]["content"]
        wrong = answer.split(": ", 1)[0] + ": " + TOPICS[(i + 1) % len(TOPICS)][1]
        rows.append({"context": _context(question), "answer": answer, "choices": [answer, wrong], "label": 0})
    data = write_jsonl(root / "support.jsonl", rows)
    tasks = root / "tasks"
    tasks.mkdir()
    common = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\ndoc_to_text: context\ntarget_delimiter: ''\n"
    (tasks / "ll.yaml").write_text(
        f"task: support_ll\n{common}output_type: loglikelihood\ndoc_to_target: answer\n"
        "metric_list:\n  - metric: perplexity\n  - metric: acc\n"
    )
    (tasks / "mc.yaml").write_text(
        f"task: support_mc\n{common}output_type: multiple_choice\ndoc_to_target: label\n"
        "doc_to_choice: choices\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n"
    )
    return tasks, rows


def loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """log P(continuation | context), tokenized as lm-eval's HF backend does: the context's trailing whitespace
    joins the continuation, the pair is encoded whole, and the continuation is what follows the context's tokens."""
    import torch

    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=False).input_ids
    ctx = tokenizer(context, add_special_tokens=False).input_ids
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([whole[:-1]])).logits[0].float(), -1)
    return sum(logp[len(ctx) - 1 + i, t].item() for i, t in enumerate(whole[len(ctx) :]))


def direct(run: Path, rows: list[dict]) -> dict:
    """{side: (perplexity of the answers, multiple-choice accuracy)} computed with the run's model, no lm-eval."""
    from lorafit import models, runs

    recipe, _ = runs.load_run(run)
    model, tokenizer = models.load_with_adapter(recipe, run / runs.ADAPTER)
    out = {}
    for side in ("base", "adapter"):
        with model.disable_adapter() if side == "base" else _nothing():
            lls = [loglikelihood(model, tokenizer, r["context"], r["answer"]) for r in rows]
            picks = [
                max(range(2), key=lambda c: loglikelihood(model, tokenizer, r["context"], r["choices"][c]))
                for r in rows
            ]
        out[side] = (math.exp(-sum(lls) / len(lls)), sum(p == r["label"] for p, r in zip(picks, rows)) / len(rows))
    return out


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_harness_reports_base_adapter_and_delta(trained_run, tmp_path):
    import time

    lm_eval = pytest.importorskip("lm_eval")
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    tasks, rows = write_tasks(tmp_path)
    started = time.perf_counter()
    result = runner.invoke(
        app,
        [
            "eval",
            str(run),
            "--limit",
            "1",
            "--samples",
            "0",
            "--max-new-tokens",
            "2",
            "--harness",
            f"support_ll,{tasks / 'mc.yaml'}",
            "--harness-include",
            str(tasks),
        ],
    )  # a name and a path
    seconds = time.perf_counter() - started
    assert result.exit_code == 0, result.output
    report = json.loads((run / "eval.json").read_text())
    assert report["adapter"]["loss"] < report["base"]["loss"]  # lorafit's own eval is still there
    harness, info = report["harness"], report["harness_info"]
    assert info["lm_eval_version"] == lm_eval.__version__ and info["examples"] == {"support_ll": 8, "support_mc": 8}
    assert set(harness) == {"support_ll", "support_mc"}
    assert set(harness["support_ll"]) == {"perplexity", "acc"} and set(harness["support_mc"]) == {"acc", "acc_norm"}
    for values in harness.values():
        for v in values.values():
            assert all(math.isfinite(v[k]) for k in ("base", "adapter", "delta"))
            assert v["delta"] == pytest.approx(v["adapter"] - v["base"], abs=1e-12)
    assert harness["support_ll"]["perplexity"]["higher_is_better"] is False

    expected = direct(run, rows)
    for side in ("base", "adapter"):
        # lm-eval's perplexity is per document (exp of minus the mean summed log-likelihood): compare its log
        assert math.log(harness["support_ll"]["perplexity"][side]) == pytest.approx(
            math.log(expected[side][0]), rel=1e-5, abs=1e-3
        )
        assert harness["support_mc"]["acc"][side] == pytest.approx(expected[side][1])
    # the adapter was trained on exactly these answers: lm-eval saw it on one side and not the other
    assert harness["support_ll"]["perplexity"]["adapter"] < 0.9 * harness["support_ll"]["perplexity"]["base"]
    assert "support_ll" in result.output and "lm-eval" in result.output

    shown = runner.invoke(app, ["runs", "show", str(run)])
    assert shown.exit_code == 0, shown.output
    assert "harness support_ll" in shown.output and "perplexity" in shown.output
    print(f"harness test: eval + harness through the CLI in {seconds:.1f} s")


def test_hub_task_offline_is_one_clear_error(trained_run, tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    import datasets
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(
        datasets.config, "HF_HUB_OFFLINE", True, raising=False
    )  # read at import, maybe before the env was set
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True, raising=False)
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "hub.yaml").write_text(
        "task: hub_mc\ndataset_path: lorafit-tests/not-a-local-dataset\ntest_split: test\n"
        "output_type: multiple_choice\ndoc_to_text: q\ndoc_to_target: 0\ndoc_to_choice: choices\n"
    )
    result = runner.invoke(app, ["eval", str(trained_run), "--harness", "hub_mc", "--harness-include", str(tasks)])
    assert result.exit_code == 7, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    assert "'hub_mc'" in result.output and "HF_HUB_OFFLINE" in result.output and "local task YAML" in result.output
    assert not (trained_run / "eval.json").exists()  # refused before any model was loaded


def test_unknown_task_names_how_to_find_names(trained_run, tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    from lorafit.artifacts import harness

    tasks, _ = write_tasks(tmp_path)
    # lm-eval's own index takes ~20 s to build; this test is about the message, so only the local tasks are known
    monkeypatch.setattr(
        harness, "_manager", lambda specs, include: TaskManager(include_path=str(include), include_defaults=False)
    )
    result = runner.invoke(app, ["eval", str(trained_run), "--harness", "support_lll", "--harness-include", str(tasks)])
    assert result.exit_code == 2, result.output
    assert "did you mean support_ll" in result.output and "lm-eval ls tasks" in result.output


def test_harness_without_lm_eval_says_how_to_install(trained_run, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` now raises ImportError
    result = runner.invoke(app, ["eval", str(trained_run), "--harness", "arc_easy"])
    assert result.exit_code == 7, result.output
    assert "pip install 'lorafit[harness]'" in result.output
    assert isinstance(result.exception, SystemExit)


def test_metric_names_and_delta_from_lm_eval_results():
    from lorafit.artifacts import harness

    results = {
        "gsm8k": {
            "alias": "gsm8k",
            "exact_match,strict-match": 0.25,
            "exact_match_stderr,strict-match": 0.1,
            "exact_match,flexible-extract": 0.5,
            "exact_match_stderr,flexible-extract": "N/A",
        },
        "arc": {"acc,none": 0.5, "acc_stderr,none": 0.05, "sample_len": 8},
    }
    base = harness.metrics(results)
    assert base == {
        "gsm8k": {"exact_match,strict-match": (0.25, 0.1), "exact_match,flexible-extract": (0.5, None)},
        "arc": {"acc": (0.5, 0.05)},
    }
    adapter = {"arc": {"acc": (0.75, 0.04)}}
    assert harness.compare(base, adapter, {"arc": {"acc": True}}) == {
        "arc": {
            "acc": {
                "base": 0.5,
                "adapter": 0.75,
                "delta": 0.25,
                "base_stderr": 0.05,
                "adapter_stderr": 0.04,
                "higher_is_better": True,
            }
        }
    }
