"""`lorafit eval` on a preference run: held-out preference pairs scored by the base, the reference and the
adapter.

For each model: the mean log-probability of the chosen and the rejected completions (summed over the completion's
tokens, end-of-turn included, as TRL scores them), and its log-prob accuracy (the share of pairs whose chosen side
is the more likely). For the adapter (and the base) also DPO's implicit reward against the reference,
beta * (log p - log p_ref): the reward accuracy (chosen rewarded above rejected, TRL's rewards/accuracies) and the
mean reward margin. ORPO and SimPO have no reference: their rewards are taken against the base. KTO's held-out
examples are unpaired: each label's mean reward, and the share of examples whose reward has the label's sign.

Then what each model says: greedy answers to the held-out prompts, scored like SFT's task metric (the answer
contains the row's `reference`, else the chosen reply), overall and per `category`. And, for a run chained onto
an SFT run (adapter.init_from), what the preference step cost the first task: the parent's own held-out loss
and task metric under the parent's adapter and under the trained one. And what it did off-task (`--general`): the drift of
the adapter from its reference (the base without one) on general prompts, as SFT's eval measures it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorafit import runs

REF = "lorafit_reference"  # the name the reference adapter is loaded under
PARENT = "lorafit_parent"  # adapter.init_from's adapter, where it is not the reference already


def _encode(record: dict, side: str, tokenizer, max_length: int) -> tuple[list[int], int]:
    """(input_ids, prompt length) of prompt + one completion, rendered as TRL renders it."""
    prompt, completion = record["prompt"], record[side]
    if isinstance(prompt, str):
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ids = tokenizer(prompt + completion + (tokenizer.eos_token or ""), add_special_tokens=False)["input_ids"]
    else:
        render = lambda turns, gen: tokenizer.apply_chat_template(  # noqa: E731
            turns, tokenize=False, add_generation_prompt=gen
        )
        prompt_ids = tokenizer(render(prompt, True), add_special_tokens=False)["input_ids"]
        ids = tokenizer(render(prompt + completion, False), add_special_tokens=False)["input_ids"]
    start = 0
    while start < min(len(ids), len(prompt_ids)) and ids[start] == prompt_ids[start]:
        start += 1
    return ids[:max_length], start


def _logp(model, ids: list[int], start: int) -> float:
    """Summed log-probability of the tokens from `start` on."""
    import torch

    if start >= len(ids):
        return 0.0
    x = torch.tensor([ids], device=model.device)
    with torch.no_grad():
        logits = model(input_ids=x).logits[:, -len(ids) :].float()
    logps = torch.log_softmax(logits[0, :-1], dim=-1).gather(1, x[0, 1:, None])[:, 0]
    return float(logps[start - 1 :].sum()) if start > 0 else float(logps.sum())


def _reference(model, recipe) -> str | None:
    """The reference as an adapter name on `model` ("" for the bare base), None for reference-free objectives."""
    p, a = recipe.preference, recipe.adapter
    if p.reference is None:
        return None
    run = a.init_from if p.reference == "init" else None if p.reference == "base" else p.reference
    if run is None:
        return ""
    from lorafit.runs import lineage

    model.load_adapter(str(lineage.adapter_dir(Path(run))), adapter_name=REF, is_trainable=False)
    return REF


def _score_all(model, encoded: list[tuple[list[int], int]], adapter: str | None) -> list[float]:
    """Log-probs under one model: the adapter `adapter`, or the base (None / "")."""
    from lorafit.artifacts.scoring import as_model

    with as_model(model, adapter):
        return [_logp(model, ids, start) for ids, start in encoded]


def _text(side: str | list) -> str:
    return side if isinstance(side, str) else side[-1]["content"]


def tasks_from(rows) -> list:
    """One generation task per held-out prompt: a pair's chosen reply, or a KTO example labelled desirable, is
    the expected answer; the row's `reference` (data generator's phrase) is what a correct answer contains."""
    from lorafit.artifacts.scoring import UNCATEGORISED, Task, phrases, references

    tasks = []
    for row in rows:
        record = row.record
        if "chosen" in record:
            expected = _text(record["chosen"])
        elif record.get("label"):
            expected = _text(record["completion"])
        else:
            continue
        category = row.meta.get("category")
        tasks.append(
            Task(
                record["prompt"],
                expected,
                references(row.meta, expected),
                str(category) if category not in (None, "") else UNCATEGORISED,
                f"{row.source}:{row.line}",
                phrases(row.meta, "avoid"),
            )
        )
    return tasks


def _generation(model, tokenizer, tasks: list, models: dict[str, str], max_new_tokens: int, batch: int) -> dict:
    """Every model's greedy answers to the tasks' prompts, scored (scoring.score_tasks)."""
    from lorafit.artifacts import scoring

    prompts, batch = [t.prompt for t in tasks], max(batch, scoring.GENERATE_BATCH)
    outputs = {}
    for name, which in models.items():
        with scoring.as_model(model, which, merge=True):
            outputs[name] = scoring.answers(model, tokenizer, prompts, max_new_tokens, batch)
    scored = scoring.score_tasks(tasks, outputs)
    # answers by model name apart from the row's phrases: one of the models is called "reference"
    scored["samples"] = [
        {
            "prompt": scoring.last_turn(t.prompt),
            "reference": t.references,
            "answers": {n: o[i] for n, o in outputs.items()},
        }
        for i, t in enumerate(tasks[:3])
    ]
    return scored


def parent_task(
    recipe, model, tokenizer, reference: str | None, limit: int = 200, max_new_tokens: int = 96
) -> dict[str, Any] | None:
    """Does it still do the first task? The parent SFT run's held-out loss, and its task metric (greedy answers
    scored against each row's `reference`, `limit` rows as for the preference prompts), under the parent's own
    adapter and under this run's. None without an SFT parent that has held-out data."""
    from lorafit.artifacts import scoring
    from lorafit.runs import lineage

    if recipe.adapter.init_from is None:
        return None
    parent = Path(recipe.adapter.init_from)
    parent_recipe, _ = runs.load_run(parent)
    if parent_recipe.training.objective != "sft":
        return None
    from lorafit import data

    prepared = data.prepare(parent_recipe, tokenizer)
    if prepared.eval is None:
        return None
    which = reference if reference == REF and recipe.preference.reference == "init" else PARENT
    if which == PARENT:
        model.load_adapter(str(lineage.adapter_dir(parent)), adapter_name=PARENT, is_trainable=False)
    bs = parent_recipe.training.batch_size
    adapters = {"parent": which, "adapter": "default"}
    losses = {}
    for name, adapter in adapters.items():
        model.set_adapter(adapter)
        losses[name] = scoring.token_loss(model, prepared.eval, bs)
    model.set_adapter("default")
    report: dict[str, Any] = {
        "run": str(parent),
        "examples": len(prepared.eval),
        "parent_loss": round(losses["parent"], 4),
        "adapter_loss": round(losses["adapter"], 4),
        "change": round(losses["adapter"] / losses["parent"] - 1, 4),
    }
    tasks = scoring.tasks_from(prepared.eval_rows, parent_recipe.data.prompt_style)
    tasks = tasks[: limit if limit > 0 else None] if limit >= 0 else []
    if tasks:
        scored = _generation(model, tokenizer, tasks, adapters, max_new_tokens, bs)
        report.update(
            generated=len(tasks),
            parent_accuracy=scored["accuracy"]["parent"],
            adapter_accuracy=scored["accuracy"]["adapter"],
            failures=scored["failures"],
        )
    return report


def evaluate(
    run_dir: Path,
    recipe,
    model,
    tokenizer,
    prepared,
    data_label: str,
    limit: int = 200,
    max_new_tokens: int = 96,
    general: Path | None = None,
    max_kl: float = 0.1,
) -> dict[str, Any]:
    """The report for eval.json (see the module's docstring); `limit` held-out prompts are generated for (0:
    all, none below 0); with `general`, the off-task drift from the reference (the base without one)."""
    rows = prepared.eval.to_list()
    beta, max_length = recipe.preference.beta, recipe.training.max_length
    paired = "chosen" in rows[0]
    sides = ("chosen", "rejected") if paired else ("completion",)
    encoded = {side: [_encode(r, side, tokenizer, max_length) for r in rows] for side in sides}
    reference = _reference(model, recipe)
    models = {"base": "", "adapter": "default"}
    if reference is not None:
        models = {"base": "", "reference": reference, "adapter": "default"}
    logps = {name: {side: _score_all(model, encoded[side], which) for side in sides} for name, which in models.items()}
    against = "reference" if reference is not None else "base"
    report: dict[str, Any] = {
        "objective": recipe.training.objective,
        "data": data_label,
        "examples": len(rows),
        "rewards_against": against,
        "beta": beta,
    }
    n = len(rows)
    for name, scored in logps.items():
        out: dict[str, Any] = {}
        if paired:
            c, r = scored["chosen"], scored["rejected"]
            out["chosen_logp"] = round(sum(c) / n, 4)
            out["rejected_logp"] = round(sum(r) / n, 4)
            out["logp_accuracy"] = round(sum(x > y for x, y in zip(c, r)) / n, 4)
            if name != against:
                rc = [beta * (x - y) for x, y in zip(c, logps[against]["chosen"])]
                rr = [beta * (x - y) for x, y in zip(r, logps[against]["rejected"])]
                out["reward_accuracy"] = round(sum(x > y for x, y in zip(rc, rr)) / n, 4)
                out["reward_margin"] = round(sum(x - y for x, y in zip(rc, rr)) / n, 4)
        else:
            labels = [row["label"] for row in rows]
            lp = scored["completion"]
            for label, key in ((True, "desirable"), (False, "undesirable")):
                picked = [x for x, keep in zip(lp, labels) if keep is label]
                out[f"{key}_logp"] = round(sum(picked) / len(picked), 4) if picked else None
            if name != against:
                rewards = [beta * (x - y) for x, y in zip(lp, logps[against]["completion"])]
                out["reward_accuracy"] = round(sum((rw > 0) == lab for rw, lab in zip(rewards, labels)) / n, 4)
                good = [rw for rw, lab in zip(rewards, labels) if lab]
                bad = [rw for rw, lab in zip(rewards, labels) if not lab]
                if good and bad:
                    out["reward_margin"] = round(sum(good) / len(good) - sum(bad) / len(bad), 4)
        report[name] = out
    tasks = tasks_from(prepared.eval_rows)[: limit if limit > 0 else None] if limit >= 0 else []
    if tasks:
        scored = _generation(model, tokenizer, tasks, models, max_new_tokens, recipe.training.batch_size)
        for name in models:
            report[name]["generation_accuracy"] = scored["accuracy"][name]
        report["generation"] = {
            "examples": len(tasks),
            "max_new_tokens": max_new_tokens,
            "categories": scored["categories"],
            "failures": scored["failures"],
            "samples": scored["samples"],
        }
    first_task = parent_task(recipe, model, tokenizer, reference, limit, max_new_tokens)
    if first_task is not None:
        report["parent_task"] = first_task
    if general is not None:
        from lorafit.artifacts.drift import general_report

        against = ("reference", reference) if reference else ("base", "")
        report["general"] = general_report(
            model, tokenizer, recipe, general, recipe.training.batch_size, max_kl, against
        )
    runs.atomic_write_json(Path(run_dir) / "eval.json", report)
    runs.update_run_json(run_dir, eval_report=str(Path(run_dir) / "eval.json"))
    return report


def show(report: dict, console) -> None:
    from rich.table import Table

    names = [n for n in ("base", "reference", "adapter") if n in report]
    table = Table(
        title=f"held-out preference ({report['objective']}): {report['examples']} examples from {report['data']}; "
        f"rewards against the {report['rewards_against']}, beta {report['beta']:g}"
    )
    table.add_column("metric")
    for name in names:
        table.add_column(name, justify="right")
    keys = list(dict.fromkeys(k for n in names for k in report[n]))
    for key in keys:
        table.add_row(key, *("-" if report[n].get(key) is None else str(report[n][key]) for n in names))
    console.print(table)
    generation = report.get("generation")
    if generation:
        per = Table(
            title=f"greedy answers to {generation['examples']} held-out prompts: share containing the reference"
        )
        per.add_column("category")
        per.add_column("examples", justify="right")
        for name in names:
            per.add_column(name, justify="right")
        for category, row in generation["categories"].items():
            per.add_row(category, str(row["examples"]), *(f"{row[n]:.0%}" for n in names))
        console.print(per)
    first = report.get("parent_task")
    if first:
        console.print(
            f"the parent's task ({first['run']}, {first['examples']} held-out examples): loss {first['parent_loss']}"
            f" with its adapter, {first['adapter_loss']} with this one ({first['change']:+.1%})"
        )
        if "generated" in first:
            console.print(
                f"  its greedy answers containing the reference ({first['generated']} prompts): "
                f"{first['parent_accuracy']:.1%} with its adapter, {first['adapter_accuracy']:.1%} with this one"
            )
    from lorafit.artifacts.drift import show_general

    show_general(report.get("general"), console)
