"""Preference objectives (DPO, KTO, ORPO, SimPO): the recipe's rules, preference data with file:line errors,
and each objective training the tiny model through the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from lorafit.cli import app

from conftest import pair_records, tiny_recipe_text, write_jsonl

runner = CliRunner()


def pref_recipe(tmp_path: Path, model_dir: Path, data_file: Path, objective: str, **sections) -> Path:
    training = {"objective": objective, "max_steps": 6, "lr": 5e-3, "batch_size": 4, "group_by_length": False}
    training.update(sections.pop("training", {}))
    text = tiny_recipe_text(model_dir, data_file, tmp_path / f"run-{objective}", training=training, **sections)
    path = tmp_path / f"{objective}.yaml"
    path.write_text(text)
    return path


def losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


@pytest.mark.parametrize("objective", ["dpo", "kto", "orpo", "simpo"])
def test_each_objective_trains_the_adapter_through_the_cli(tmp_path, tiny_model_dir, objective):
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_records(32))
    recipe = pref_recipe(tmp_path, tiny_model_dir, data, objective)
    result = runner.invoke(app, ["train", str(recipe)])
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / f"run-{objective}"
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] in ("finished", "worse_than_base"), record["status"]
    seen = losses(run_dir)
    assert len(seen) >= 3 and all(abs(x) < 1e6 for x in seen)
    assert seen[-1] != seen[0]
    resolved = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    assert resolved["training"]["objective"] == objective
    assert resolved["preference"]["beta"] == 0.1
    saved = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    assert saved and all("lora_" in k for k in saved)
    assert not (run_dir / "adapter" / "ref").exists(), "TRL's reference adapter is not part of the saved adapter"
    if objective in ("dpo", "kto"):  # held-out preference accuracy and reward margin, base vs reference vs adapter
        evaluated = runner.invoke(app, ["eval", str(run_dir), "--general", "none"])
        assert evaluated.exit_code == 0, evaluated.output
        report = json.loads((run_dir / "eval.json").read_text())
        assert report["objective"] == objective and report["rewards_against"] == "reference"
        assert set(report) >= {"base", "reference", "adapter"}
        assert "reward_accuracy" in report["adapter"] and "reward_margin" in report["adapter"]
        if objective == "dpo":
            assert report["reference"]["chosen_logp"] == report["base"]["chosen_logp"]  # a fresh adapter's reference
            assert report["adapter"]["reward_margin"] > 0, report
        generation = report["generation"]  # greedy answers to the held-out prompts, every model
        assert generation["examples"] == 8  # one per held-out prompt (KTO scores each pair as two examples)
        for name in ("base", "reference", "adapter"):
            assert 0 <= report[name]["generation_accuracy"] <= 1
        assert sum(row["examples"] for row in generation["categories"].values()) == 8
        assert len(generation["failures"]) == round((1 - report["adapter"]["generation_accuracy"]) * 8)
        sample = generation["samples"][0]  # the row's phrases, and each model's answer apart from them
        assert isinstance(sample["reference"], list) and set(sample["answers"]) == {"base", "reference", "adapter"}


def test_rpo_alpha_adds_trls_nll_term_on_the_chosen_side(tmp_path, tiny_model_dir):
    """RPO: DPO's loss plus alpha x the chosen side's NLL (TRL's loss_type [sigmoid, sft]). The same steps with the
    term raise the chosen side's log-probability further than plain DPO does."""
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_records(32))
    chosen = {}
    for alpha in (0.0, 1.0):
        out = tmp_path / f"a{alpha}"
        out.mkdir()
        recipe = pref_recipe(out, tiny_model_dir, data, "dpo", preference={"rpo_alpha": alpha})
        result = runner.invoke(app, ["train", str(recipe)])
        assert result.exit_code == 0, result.output
        rows = [json.loads(line) for line in (out / "run-dpo" / "metrics.jsonl").read_text().splitlines()]
        chosen[alpha] = [r["logps/chosen"] for r in rows if "logps/chosen" in r]
        assert yaml.safe_load((out / "run-dpo" / "recipe.yaml").read_text())["preference"]["rpo_alpha"] == alpha
    assert chosen[0.0][0] == pytest.approx(chosen[1.0][0])  # the same start
    assert chosen[1.0][-1] > chosen[0.0][-1], chosen


# ---------------------------------------------------------------- chained onto an SFT run


def test_dpo_groups_pairs_by_length_and_evaluates_them_in_order(tmp_path, tiny_model_dir, monkeypatch):
    """DPO's default training.group_by_length: the first micro-batch holds the longest pair (so a run that would
    run out of memory does so at once), and the held-out pairs, which have no input_ids to group by, are
    evaluated in order."""
    from lorafit.train.preference import LorafitDPOTrainer

    batches = []
    original = LorafitDPOTrainer.compute_loss

    def recording(self, model, inputs, *args, **kwargs):
        if model.training:
            batches.append(int(inputs["attention_mask"].sum(-1).max()))
        return original(self, model, inputs, *args, **kwargs)

    data = write_jsonl(tmp_path / "pairs.jsonl", pair_records(32))
    recipe = pref_recipe(tmp_path, tiny_model_dir, data, "dpo", training={"group_by_length": True})
    monkeypatch.setattr(LorafitDPOTrainer, "compute_loss", recording)
    result = runner.invoke(app, ["train", str(recipe)])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "run-dpo" / "run.json").read_text())
    assert record["status"] in ("finished", "worse_than_base") and record["eval"]["loss_after"] is not None
    assert len(batches) == 6 and batches[0] == max(batches), batches
    assert yaml.safe_load((tmp_path / "run-dpo" / "recipe.yaml").read_text())["training"]["group_by_length"] is True


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _logits(model, tokenizer):
    import torch

    ids = tokenizer(["Question about order 1234: what about damaged? Report damage within 48 hours."])["input_ids"]
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids)).logits


def test_dpo_continues_the_sft_adapter_against_the_sft_policy(tmp_path, tiny_model_dir, trained_run):
    """adapter.init_from: the DPO policy starts as the SFT adapter, and the reference TRL scores against is
    base + the frozen SFT adapter (not the bare base); the parent's adapter file is left as it was."""
    import torch
    from peft import PeftModel
    from rich.console import Console
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.trainer.utils import use_adapter

    from lorafit.recipe import load_recipe
    from lorafit.train import pipeline as train

    parent_weights = trained_run / "adapter" / "adapter_model.safetensors"
    before = _sha(parent_weights)
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_records(24))
    recipe = pref_recipe(tmp_path, tiny_model_dir, data, "dpo", adapter={"init_from": str(trained_run)})
    result = train.run(load_recipe(recipe, ["training.max_steps=4"]), console=Console(quiet=True), quiet=True)
    model = result.model.eval()
    assert set(model.peft_config) == {"default", "ref"}

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    base_logits = _logits(base, tokenizer)
    sft = PeftModel.from_pretrained(base, str(trained_run / "adapter")).eval()
    sft_logits = _logits(sft, tokenizer)
    with use_adapter(model, "ref"):  # how TRL 1.16 scores the reference
        ref_logits = _logits(model, tokenizer)
    policy_logits = _logits(model, tokenizer)
    assert torch.allclose(ref_logits, sft_logits, atol=1e-5), "the reference is base + the SFT adapter"
    assert not torch.allclose(sft_logits, base_logits, atol=1e-3), "the SFT adapter changes the model"
    assert not torch.allclose(policy_logits, ref_logits, atol=1e-6), "DPO trained the policy away from the reference"

    # only the trained adapter changed: the base and the frozen reference copy are as loaded
    original = load_file(str(tiny_model_dir / "model.safetensors"))
    parent = load_file(str(parent_weights))
    for name, param in model.named_parameters():
        if ".default." in name:
            assert param.requires_grad
        elif ".ref." in name:
            assert not param.requires_grad
            key = name.replace(".ref.", ".")
            assert torch.equal(param.detach(), parent[key]), f"{name} changed"
        else:
            assert not param.requires_grad, name
            key = name.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(param.detach(), original[key]), f"{name} changed"
    assert _sha(parent_weights) == before, "the parent's adapter is never written"

    run_dir = tmp_path / "run-dpo"
    record = json.loads((run_dir / "run.json").read_text())
    assert record["lineage"]["parent"] == str(trained_run)
    assert record["lineage"]["parent_adapter_sha256"] == before
    assert "base + the parent's adapter" in record["lineage"]["reference"]
    resolved = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    assert resolved["adapter"]["init_sha256"] == before

    # eval: what the preference step cost the parent's task (its held-out loss and task metric under both adapters)
    # and what it changed off-task (drift from the reference, the SFT policy, on general prompts)
    general = write_jsonl(
        tmp_path / "general.jsonl",
        [
            {"messages": [{"role": "user", "content": f"Say {w}."}, {"role": "assistant", "content": f"{w}!"}]}
            for w in ("hi", "ok", "yes")
        ],
    )
    evaluated = runner.invoke(app, ["eval", str(run_dir), "--general", str(general), "--limit", "2"])
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads((run_dir / "eval.json").read_text())
    assert report["generation"]["examples"] == 2  # --limit
    first = report["parent_task"]
    parent_record = json.loads((trained_run / "run.json").read_text())
    assert first["run"] == str(trained_run) and first["examples"] == 12
    assert first["parent_loss"] == pytest.approx(parent_record["eval"]["loss_after"], rel=1e-4)
    assert first["adapter_loss"] != first["parent_loss"]
    # and its task metric: the parent's greedy answers under its own adapter score as `lorafit eval` of the parent
    assert first["generated"] == 2 and len(first["failures"]) == round(2 * (1 - first["adapter_accuracy"]))
    parent_copy = shutil.copytree(trained_run, tmp_path / "parent-copy")  # the fixture's run stays read-only
    parent_eval = runner.invoke(app, ["eval", str(parent_copy), "--general", str(general), "--limit", "2"])
    assert parent_eval.exit_code == 0, parent_eval.output
    parent_report = json.loads((parent_copy / "eval.json").read_text())
    assert first["parent_accuracy"] == parent_report["adapter"]["accuracy"]
    # the drift is the DPO adapter's from the SFT policy: the reference's loss there is the parent's own
    drift, parent_drift = report["general"], parent_report["general"]
    assert drift["against"] == "reference" and parent_drift["against"] == "base" and drift["prompts"] == 3
    assert drift["reference_loss"] == pytest.approx(parent_drift["adapter_loss"], rel=1e-4)
    assert drift["kl"] > 0 and drift["adapter_loss"] != drift["reference_loss"]
    assert "off-task drift" in evaluated.output and "KL from reference" in evaluated.output
    shown = runner.invoke(app, ["runs", "show", str(run_dir)])
    assert shown.exit_code == 0, shown.output
    assert "parent" in shown.output and before[:16] in shown.output and "objective" in shown.output


def test_refuses_a_parent_whose_adapter_is_missing_or_changed(tmp_path, tiny_model_dir, trained_run):
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_records(16))
    missing = pref_recipe(tmp_path, tiny_model_dir, data, "dpo", adapter={"init_from": str(tmp_path / "nope")})
    result = runner.invoke(app, ["train", str(missing)])
    assert result.exit_code == 7, result.output
    assert "has no adapter" in result.output

    parent = tmp_path / "parent"
    shutil.copytree(trained_run, parent)
    recorded = _sha(parent / "adapter" / "adapter_model.safetensors")
    changed = pref_recipe(
        tmp_path, tiny_model_dir, data, "dpo", adapter={"init_from": str(parent), "init_sha256": recorded}
    )
    weights = parent / "adapter" / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    from safetensors.torch import save_file

    save_file({k: v * 2 for k, v in tensors.items()}, str(weights))
    result = runner.invoke(app, ["train", str(changed)])
    assert result.exit_code == 2, result.output
    assert "changed since this run recorded it" in result.output
    assert not (tmp_path / "run-dpo" / "run.json").exists(), "refused before the run directory was written"


def test_reference_base_or_a_run_directory(tmp_path, tiny_model_dir, trained_run):
    """preference.reference: base is the bare base even with init_from; a run directory is base + its adapter."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lorafit.recipe import load_recipe
    from lorafit.train.preference import reference_model

    data = write_jsonl(tmp_path / "pairs.jsonl", pair_records(8))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    base_logits = _logits(base, tokenizer)
    sft_logits = _logits(PeftModel.from_pretrained(base, str(trained_run / "adapter")).eval(), tokenizer)

    as_base = pref_recipe(
        tmp_path, tiny_model_dir, data, "dpo", adapter={"init_from": str(trained_run)}, preference={"reference": "base"}
    )
    assert torch.allclose(_logits(reference_model(load_recipe(as_base)), tokenizer), base_logits, atol=1e-6)
    as_run = pref_recipe(tmp_path, tiny_model_dir, data, "kto", preference={"reference": str(trained_run)})
    ref = reference_model(load_recipe(as_run))
    assert not any(p.requires_grad for p in ref.parameters())
    assert torch.allclose(_logits(ref, tokenizer), sft_logits, atol=1e-5)
    assert reference_model(load_recipe(pref_recipe(tmp_path, tiny_model_dir, data, "dpo"))) is None  # TRL's copy


# ---------------------------------------------------------------- preference data


def _user(text: str) -> dict:
    return {"role": "user", "content": text}


def _bot(text: str) -> dict:
    return {"role": "assistant", "content": text}


BAD_RECORDS = {
    "missing side": ({"prompt": "Where is it?", "chosen": "On its way."}, "missing field 'rejected'"),
    "identical": ({"prompt": "Where is it?", "chosen": "On its way.", "rejected": " On its way. "}, "are identical"),
    "different prompts": (
        {"chosen": [_user("Where is it?"), _bot("On its way.")], "rejected": [_user("Refund?"), _bot("No.")]},
        "have different prompts",
    ),
    "prompt differs from the conversation": (
        {
            "prompt": [_user("Where is it?")],
            "chosen": [_user("Refund?"), _bot("On its way.")],
            "rejected": [_bot("No.")],
        },
        "prompt differs",
    ),
    "empty completion": ({"prompt": "Where is it?", "chosen": "  ", "rejected": "No."}, "chosen is empty"),
    "empty chat completion": (
        {"prompt": [_user("Where is it?")], "chosen": [_bot("")], "rejected": [_bot("No.")]},
        "is empty",
    ),
    "unpaired under dpo": (
        {"prompt": "Where is it?", "completion": "On its way.", "label": True},
        "needs training.objective: kto",
    ),
    "prompt ends with the assistant": (
        {"prompt": [_user("Hi"), _bot("Hello")], "chosen": "a", "rejected": "b"},
        "must end with a user turn",
    ),
}


@pytest.mark.parametrize("kind", list(BAD_RECORDS))
def test_each_bad_record_is_reported_as_file_and_line(tmp_path, tiny_model_dir, kind):
    bad, message = BAD_RECORDS[kind]
    records = pair_records(4, chat=False)
    records.insert(2, bad)
    data = write_jsonl(tmp_path / "pairs.jsonl", records)
    recipe = pref_recipe(tmp_path, tiny_model_dir, data, "dpo")
    result = runner.invoke(app, ["validate", str(recipe)])
    assert result.exit_code == 3, result.output
    assert f"{data}:3: " in result.output and message in result.output, result.output
    assert "1 bad record" in result.output


def test_kto_unpaired_label_must_be_a_boolean(tmp_path, tiny_model_dir):
    records = [{"prompt": "Where?", "completion": "Here.", "label": True}] * 3
    records.append({"prompt": "Where?", "completion": "There.", "label": "yes"})
    data = write_jsonl(tmp_path / "kto.jsonl", records)
    result = runner.invoke(app, ["validate", str(pref_recipe(tmp_path, tiny_model_dir, data, "kto"))])
    assert result.exit_code == 3 and f"{data}:4: label must be true or false" in result.output, result.output


def test_record_shapes_are_detected_and_renamed(tmp_path, tiny_model_dir):
    """Explicit prompts (text or chat), implicit-prompt conversations and data.fields renames all become TRL's
    prompt/chosen/rejected; KTO splits each pair into a desirable and an undesirable example."""
    from transformers import AutoTokenizer

    from lorafit.data import preference
    from lorafit.recipe import load_recipe

    records = [
        {"question": "Where is it?", "good": "On its way.", "bad": "Lost."},
        {"good": [_user("Refund?"), _bot("Within 30 days.")], "bad": [_user("Refund?"), _bot("Never.")]},
        {"question": [_user("Damaged?")], "good": [_bot("Send a photo.")], "bad": "Too bad."},
    ]
    data = write_jsonl(tmp_path / "mixed.jsonl", records)
    fields = {"fields": {"prompt": "question", "chosen": "good", "rejected": "bad"}, "eval_split": None}
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    recipe = load_recipe(pref_recipe(tmp_path, tiny_model_dir, data, "dpo", data=fields))
    prepared = preference.prepare(recipe, tokenizer)
    rows = prepared.train.to_list()
    assert rows[0] == {"prompt": [_user("Where is it?")], "chosen": [_bot("On its way.")], "rejected": [_bot("Lost.")]}
    assert rows[1] == {"prompt": [_user("Refund?")], "chosen": [_bot("Within 30 days.")], "rejected": [_bot("Never.")]}
    assert rows[2]["rejected"] == [_bot("Too bad.")]
    assert prepared.stats.format == "preference" and prepared.stats.preference["pairs"] == 3  # the most common shape
    assert tokenizer.chat_template  # installed for TRL to render the conversations

    kto = load_recipe(pref_recipe(tmp_path, tiny_model_dir, data, "kto", data=fields))
    unpaired = preference.prepare(kto, AutoTokenizer.from_pretrained(tiny_model_dir))
    labels = sorted(r["label"] for r in unpaired.train.to_list())
    assert labels == [False] * 3 + [True] * 3
    assert unpaired.stats.preference["desirable"] == 3 and unpaired.stats.preference["undesirable"] == 3


def test_validate_reports_length_bias_and_truncation(tmp_path, tiny_model_dir):
    records = [
        {"prompt": f"Where is order {i}?", "chosen": "It is on its way. " * 30, "rejected": "Lost."} for i in range(8)
    ]
    data = write_jsonl(tmp_path / "long.jsonl", records)
    recipe = pref_recipe(tmp_path, tiny_model_dir, data, "dpo", training={"max_length": 64})
    result = runner.invoke(app, ["validate", str(recipe)])
    assert result.exit_code == 0, result.output
    assert "length bias: the chosen reply is the longer one in 100% of 6 pairs" in result.output  # 2 held out
    assert "6 chosen and 0 rejected sides are longer than training.max_length" in result.output
    assert '"chosen_longer_share": 1.0' in result.output


# ---------------------------------------------------------------- the recipe's rules


@pytest.mark.parametrize(
    "objective, sections, message, key",
    [
        ("kto", {"training": {"batch_size": 1}}, "batch_size must be > 1 for kto", "batch_size"),
        ("orpo", {"preference": {"reference": "base"}}, "reference-free", "reference"),
        ("simpo", {"preference": {"reference": "init"}}, "reference-free", "reference"),
        ("dpo", {"preference": {"loss_type": "simpo"}}, "not a dpo loss", "loss_type"),
        ("dpo", {"preference": {"simpo_gamma": 1.0}}, "simpo_gamma only applies to simpo", "simpo_gamma"),
        ("dpo", {"preference": {"sync_ref_model": True}}, "cannot sync a reference", "sync_ref_model"),
        ("kto", {"preference": {"label_smoothing": 0.1}}, "label_smoothing only applies to dpo", "label_smoothing"),
        ("simpo", {"preference": {"rpo_alpha": 1.0}}, "rpo_alpha only applies to dpo", "rpo_alpha"),
        ("dpo", {"preference": {"loss_type": "sft", "rpo_alpha": 1.0}}, "NLL would count twice", "rpo_alpha"),
        ("orpo", {"preference": {"loss_type": "sigmoid"}}, "it has one loss", "loss_type"),
        ("simpo", {"training": {"group_by_length": True}}, "group_by_length does not apply", "group_by_length"),
        ("dpo", {"adapter": {"method": "pissa"}}, "trains adapter methods", "objective"),
        ("sft", {"preference": {"beta": 0.2}}, "preference applies to a preference objective", "objective"),
        ("dpo", {"preference": {"bta": 0.2}}, "unknown field", "bta"),
    ],
)
def test_rules_across_fields_name_the_yaml_line(tmp_path, tiny_model_dir, objective, sections, message, key):
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_records(4))
    recipe = pref_recipe(tmp_path, tiny_model_dir, data, objective, **sections)
    lines = recipe.read_text().splitlines()
    line = next(i for i, text in enumerate(lines, 1) if text.strip().startswith(f"{key}:"))
    result = runner.invoke(app, ["validate", "--schema-only", str(recipe)])
    assert result.exit_code == 2, result.output
    assert message in result.output, result.output
    assert f"{recipe}:{line}:" in result.output, result.output


def test_resolved_recipe_writes_trl_defaults(tmp_path, tiny_model_dir):
    from trl import DPOConfig, KTOConfig

    from lorafit.recipe import load_recipe

    data = write_jsonl(tmp_path / "pairs.jsonl", pair_records(4))
    dpo = load_recipe(pref_recipe(tmp_path, tiny_model_dir, data, "dpo")).preference
    defaults = DPOConfig.__dataclass_fields__
    assert dpo.beta == defaults["beta"].default and dpo.label_smoothing == defaults["label_smoothing"].default
    assert [dpo.loss_type] == defaults["loss_type"].default_factory()
    assert dpo.reference == "init" and dpo.precompute_ref_log_probs is False
    kto = load_recipe(pref_recipe(tmp_path, tiny_model_dir, data, "kto")).preference
    k = KTOConfig.__dataclass_fields__
    assert kto.loss_type == k["loss_type"].default and kto.desirable_weight == k["desirable_weight"].default
    simpo = load_recipe(pref_recipe(tmp_path, tiny_model_dir, data, "simpo")).preference
    assert simpo.loss_type == "simpo" and simpo.reference is None and simpo.simpo_gamma == 0.5
    assert load_recipe(pref_recipe(tmp_path, tiny_model_dir, data, "sft")).preference is None


def test_memory_plan_counts_both_sides_of_a_pair(tmp_path, tiny_model_dir):
    from lorafit import models
    from lorafit.models import recipe_plan
    from lorafit.recipe import load_recipe

    data = write_jsonl(tmp_path / "pairs.jsonl", pair_records(4))
    sft = load_recipe(pref_recipe(tmp_path, tiny_model_dir, data, "sft", adapter={"dropout": 0.1}))
    dpo = load_recipe(pref_recipe(tmp_path, tiny_model_dir, data, "dpo", adapter={"dropout": 0.1}))
    config = models.model_config(sft)
    one, two = recipe_plan.recipe_settings(sft, config, "cpu"), recipe_plan.recipe_settings(dpo, config, "cpu")
    assert two["batch_size"] == 2 * one["batch_size"] and two["lora_dropout"] == 0.0
    assert (
        recipe_plan.for_recipe(dpo, config, "cpu").activations > recipe_plan.for_recipe(sft, config, "cpu").activations
    )
