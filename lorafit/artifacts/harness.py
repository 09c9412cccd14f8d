"""`lorafit eval RUN --harness TASKS`: EleutherAI's lm-evaluation-harness on the base and on base + adapter.

The run's model is loaded once (lorafit's own loading: embedded and local bases, the run's dtype and
quantization, the adapter's tokenizer) and handed to lm-eval's Hugging Face backend as an object. The base
side runs inside PEFT's `disable_adapter()`, so both sides score the very same weights, dtype, device and
tokenizer and the delta is the adapter alone; loading HFLM twice (`pretrained=BASE` and `peft=ADAPTER`)
would cost a second load and resolve the model, dtype and tokenizer lm-eval's way, not the run's.

Tasks are resolved and their datasets loaded before any model is (`prepare`), so a task that cannot run
(unknown name, a hub dataset while offline, a bad local file) fails in one line and at once. lm-eval's
built-in index (~14,000 tasks) takes ~20 s to build on a laptop CPU: it is built only when a name is
neither a task YAML path nor a task in --harness-include.

Checked against lm-eval 0.4.13 (its private `HFLM._model_call` is overridden once, in `_RunLM`).
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from lorafit import runs
from lorafit.core.errors import DataError, MissingError, RecipeError

KEY = "harness"  # eval.json: {task: {metric: {"base", "adapter", "delta"}}}
INFO_KEY = "harness_info"  # eval.json: lm-eval version, tasks asked for, examples per task, settings, seconds
INSTALL_HINT = "pip install 'lorafit[harness]'"
_NOT_METRICS = {"alias", "name", "sample_len", "samples"}


@dataclass(frozen=True)
class Tasks:
    """Task specs lm-eval accepted (names or YAML paths), the task manager that resolved them, and the
    task names each spec expands to."""

    specs: tuple[str, ...]
    names: tuple[str, ...]
    manager: object


def _import():
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager  # noqa: F401
    except ImportError:
        raise MissingError(
            "--harness needs EleutherAI's lm-evaluation-harness (the lm-eval package), which is not installed",
            INSTALL_HINT,
        ) from None
    logging.getLogger("lm_eval").setLevel(
        logging.ERROR
    )  # lorafit says what runs; lm-eval's notes are about its own CLI
    return lm_eval


def parse(text: str) -> list[str]:
    specs = [s.strip() for s in text.split(",") if s.strip()]
    if not specs:
        raise RecipeError(
            "--harness: no task given", "name one or more lm-eval tasks, e.g. --harness arc_easy,hellaswag"
        )
    return specs


def _is_path(spec: str) -> bool:
    return spec.endswith((".yaml", ".yml")) or os.sep in spec


def _manager(specs: list[str], include: Path | None):
    """The smallest task index that knows every spec: --harness-include alone when it does, else lm-eval's too."""
    from lm_eval.tasks import TaskManager

    if include is not None and not Path(include).is_dir():
        raise MissingError(f"--harness-include: {include} is not a directory", "give a directory of lm-eval task YAMLs")
    include_path = str(include) if include is not None else None
    local = TaskManager(include_path=include_path, include_defaults=False)
    if all(_is_path(s) or local.match_tasks([s]) for s in specs):
        return local
    return TaskManager(include_path=include_path, include_defaults=True)


def _unknown(spec: str, manager) -> RecipeError:
    from difflib import get_close_matches

    near = get_close_matches(spec, manager.all_tasks, n=3)
    return RecipeError(
        f"--harness: {spec!r} is not an lm-eval task, group or tag"
        + (f"; did you mean {', '.join(near)}?" if near else ""),
        "list the names with `lm-eval ls tasks` (`--include_path DIR` adds your own), or give a task YAML: "
        "--harness path/to/task.yaml, or --harness NAME --harness-include DIR",
    )


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _load(spec: str, manager) -> list[str]:
    """The task names `spec` expands to, with its datasets loaded (so a missing one fails here, by name)."""
    try:
        loaded = manager.load([spec])
    except ConnectionError as exc:  # datasets: "Couldn't reach 'org/name' on the Hub (OfflineModeIsEnabled)"
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise MissingError(
            f"lm-eval task {spec!r} needs a dataset from the Hugging Face hub, which cannot be reached"
            f"{' (HF_HUB_OFFLINE=1)' if _offline() else ''}: {reason}",
            "go online once to cache it (unset HF_HUB_OFFLINE), or write a local task YAML over your own files "
            "(dataset_path: json, dataset_kwargs: {data_files: ...}) and pass it: --harness FILE.yaml, or --harness-include DIR",
        ) from None
    except Exception as exc:  # a task config or its local data: lm-eval and datasets raise many kinds
        reason = (str(exc).strip().splitlines() or [""])[0][:300]
        raise DataError(
            f"lm-eval task {spec!r} could not be loaded: {type(exc).__name__}: {reason}",
            "check the task YAML and its data_files (relative paths are read from the current directory)",
        ) from None
    return list(loaded["tasks"])


def prepare(text: str, include: Path | None = None) -> Tasks:
    """Resolve `--harness` before anything heavy: lm-eval installed, every task known, its data loadable."""
    _import()
    specs = parse(text)
    for spec in specs:
        if _is_path(spec) and not Path(spec).is_file():
            raise MissingError(f"--harness: task file not found: {spec}", "give the path of an lm-eval task YAML")
    manager = _manager(specs, include)
    expanded: list[str] = []
    for spec in specs:
        matches = (
            [str(Path(spec).resolve())] if _is_path(spec) else manager.match_tasks([spec])
        )  # names, globs (mmlu_*)
        if not matches:
            raise _unknown(spec, manager)
        expanded += [m for m in matches if m not in expanded]
    names: list[str] = []
    owner: dict[str, str] = {}
    for spec in expanded:
        for name in _load(spec, manager):
            if name in owner:  # lm-eval refuses a task asked for twice (a group and one of its tasks, mmlu*)
                raise RecipeError(
                    f"--harness: task {name!r} comes from both {owner[name]!r} and {spec!r}", "name each task once"
                )
            owner[name] = spec
            names.append(name)
    return Tasks(tuple(expanded), tuple(names), manager)


def _lm_class():
    from lm_eval.models.huggingface import HFLM

    class _RunLM(HFLM):
        """HFLM over lorafit's loaded model. Prompt tuning prepends its virtual tokens to the logits, and HFLM
        picks the continuation's logits by position from the start: keep the real positions only (a no-op for
        every other method, and for the base with the adapter disabled)."""

        def _model_call(self, inps, attn_mask=None, labels=None):
            logits = super()._model_call(inps, attn_mask=attn_mask, labels=labels)
            return logits[:, -inps.shape[1] :] if attn_mask is None else logits

    return _RunLM


def _place(model, recipe) -> None:
    """On the training device: `lorafit train` ran there. A quantized model is already where bitsandbytes put it."""
    from lorafit.core import device

    kind = device.detect().kind
    quantized = recipe.quantization.load_in_4bit or recipe.quantization.load_in_8bit
    if not quantized and model.device.type != kind:
        model.to(kind)


def _number(value) -> float | None:
    return (
        float(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        else None
    )


def metrics(results: dict) -> dict[str, dict[str, tuple[float, float | None]]]:
    """{task: {metric: (value, stderr)}} from simple_evaluate's "results". lm-eval keys a metric "name,filter";
    the filter is dropped when it is lm-eval's default "none" (acc,none -> acc; exact_match,strict-match stays)."""
    out: dict[str, dict[str, tuple[float, float | None]]] = {}
    for task, row in results.items():
        values = {}
        for key, value in row.items():
            metric, _, filt = key.partition(",")
            if metric in _NOT_METRICS or metric.endswith("_stderr") or _number(value) is None:
                continue
            name = metric if filt in ("", "none") else key
            values[name] = (_number(value), _number(row.get(f"{metric}_stderr,{filt}" if filt else f"{metric}_stderr")))
        if values:
            out[task] = values
    return out


def compare(base: dict, adapter: dict, higher_is_better: dict | None = None) -> dict:
    """{task: {metric: {"base", "adapter", "delta" = adapter - base, each side's stderr where lm-eval gives one,
    and higher_is_better where the task says (perplexity: false)}}}."""
    out: dict = {}
    for task, values in adapter.items():
        for metric, (y, y_err) in values.items():
            if metric not in base.get(task, {}):
                continue
            x, x_err = base[task][metric]
            entry = {"base": x, "adapter": y, "delta": y - x}
            if x_err is not None and y_err is not None:
                entry.update(base_stderr=x_err, adapter_stderr=y_err)
            better = ((higher_is_better or {}).get(task) or {}).get(metric.partition(",")[0])
            if isinstance(better, bool):
                entry["higher_is_better"] = better
            out.setdefault(task, {})[metric] = entry
    return out


def _evaluate(lm, tasks: Tasks, limit: int | None, chat_template: bool) -> dict:
    from lm_eval import simple_evaluate

    # Bootstrapped stderrs (perplexity, f1, ...) would start a process pool per metric: serial, and few draws.
    os.environ.setdefault("DISABLE_MULTIPROC", "1")
    return simple_evaluate(
        lm,
        tasks=list(tasks.specs),
        task_manager=tasks.manager,
        limit=limit,
        bootstrap_iters=100,
        log_samples=False,
        apply_chat_template=chat_template,
    )


def run(run_dir: Path, tasks: Tasks, *, limit: int | None = None, chat_template: bool = False, console=None) -> dict:
    """Both sides on every task; returns {KEY: {task: {metric: ...}}, INFO_KEY: {...}} for eval.json."""
    lm_eval = _import()
    from lorafit import models

    recipe, _ = runs.load_run(run_dir)
    model, tokenizer = models.load_with_adapter(recipe, runs.adapter_path(run_dir))
    _place(model, recipe)
    lm = _lm_class()(pretrained=model, tokenizer=tokenizer, batch_size=recipe.training.batch_size)
    started = time.perf_counter()
    if console is not None:
        console.print(
            f"lm-eval {lm_eval.__version__}: {', '.join(tasks.names)} on the base, then base + adapter", highlight=False
        )
    with model.disable_adapter():
        base = _evaluate(lm, tasks, limit, chat_template)
    adapter = _evaluate(lm, tasks, limit, chat_template)
    examples = {t: (adapter.get("n-samples") or {}).get(t, {}).get("effective") for t in adapter["results"]}
    return {
        KEY: compare(metrics(base["results"]), metrics(adapter["results"]), adapter.get("higher_is_better")),
        INFO_KEY: {
            "lm_eval_version": lm_eval.__version__,
            "tasks": list(tasks.specs),
            "limit": limit,
            "examples": {t: n for t, n in examples.items() if n is not None},
            "chat_template": chat_template,
            "n_shot": adapter.get("n-shot"),
            "device": str(model.device),
            "seconds": round(time.perf_counter() - started, 2),
        },
    }


def merge_into_eval_json(run_dir: Path, report: dict) -> Path:
    """Add the harness results to the eval.json `lorafit eval` just wrote (or start one)."""
    import json

    path = Path(run_dir) / "eval.json"  # lorafit.evaluate.EVAL_JSON; not imported: it may change independently
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.update(report)
    runs.atomic_write_json(path, data)
    return path


def show(report: dict, console) -> None:
    from rich.table import Table

    info = report[INFO_KEY]
    table = Table(title=f"lm-eval {info['lm_eval_version']}: base vs adapter ({info['seconds']} s)")
    for col, justify in (
        ("task", "left"),
        ("metric", "left"),
        ("examples", "right"),
        ("base", "right"),
        ("adapter", "right"),
        ("delta", "right"),
    ):
        table.add_column(col, justify=justify)
    for task, values in report[KEY].items():
        for metric, v in values.items():
            gain = v["delta"] if v.get("higher_is_better", True) else -v["delta"]
            color = "green" if gain > 0 else "red" if gain < 0 else "dim"
            err = lambda side: f" ±{v[side + '_stderr']:.3g}" if side + "_stderr" in v else ""  # noqa: E731
            table.add_row(
                task,
                metric,
                str(info["examples"].get(task, "-")),
                f"{v['base']:.4g}{err('base')}",
                f"{v['adapter']:.4g}{err('adapter')}",
                f"[{color}]{v['delta']:+.4g}[/]",
            )
    console.print(table)
