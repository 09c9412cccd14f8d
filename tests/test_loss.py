"""training.lm_head: trained: the LM head scores only trained positions, and the loss and gradients equal
transformers' own full-logits loss, padded or packed, with or without num_items_in_batch."""

from __future__ import annotations

import pytest

from lorafit import data
from lorafit.recipe import Recipe

from conftest import chat_records, write_jsonl


def _trainer(tmp_path, tiny_model_dir, packing: bool, mode: str):
    import torch

    from lorafit import models
    from lorafit.models import adapters
    from lorafit.train import trainer as training

    records = chat_records(10)
    records[2]["messages"].extend(
        [{"role": "user", "content": "And the return?"}, {"role": "assistant", "content": "30 days."}]
    )
    path = write_jsonl(tmp_path / "d.jsonl", records)
    recipe = Recipe.model_validate(
        {
            "model": {"name": str(tiny_model_dir)},
            "data": {"train": str(path), "eval_split": None, "packing": packing},
            "adapter": {"dropout": 0.0},
            "training": {"max_length": 256, "batch_size": 10, "group_by_length": False, "lm_head": mode},
        }
    )
    tok = models.load_tokenizer(recipe, str(tiny_model_dir))
    prepared = data.prepare(recipe, tok)
    torch.manual_seed(0)
    model = adapters.wrap(models.load_model(recipe, str(tiny_model_dir)), recipe, str(tiny_model_dir))
    for name, p in model.named_parameters():  # B starts at zero; give the adapter a non-trivial value
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    args = training.sft_config(recipe, tmp_path / f"run-{mode}-{packing}", "float32", "cpu", False, False)
    trainer = training.LorafitTrainer(model=model, args=args, train_dataset=prepared.train, processing_class=tok)
    trainer.configure_loss(mode)
    rows = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
    return trainer, trainer.data_collator(rows)


def _loss_and_grads(trainer, batch, num_items=None):
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=num_items)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    return float(loss.detach()), grads


@pytest.mark.parametrize("packing", [False, True])
@pytest.mark.parametrize("num_items", [None, 37])
def test_trained_positions_give_the_full_heads_loss_and_gradients(tmp_path, tiny_model_dir, packing, num_items):
    import torch

    results = {}
    for mode in ("full", "trained"):
        trainer, batch = _trainer(tmp_path, tiny_model_dir, packing, mode)
        n = None if num_items is None else torch.tensor(num_items)
        results[mode] = _loss_and_grads(trainer, batch, n)
    (full_loss, full_grads), (loss, grads) = results["full"], results["trained"]
    assert loss == pytest.approx(full_loss, rel=1e-5)
    assert full_grads.keys() == grads.keys() and len(grads) > 0
    for name, g in grads.items():
        assert torch.allclose(g, full_grads[name], atol=1e-6, rtol=1e-4), name
    assert any(g.abs().max() > 0 for g in grads.values())


def test_the_head_sees_only_trained_positions_and_nothing_else_changes(tmp_path, tiny_model_dir):
    import torch

    trainer, batch = _trainer(tmp_path, tiny_model_dir, False, "trained")
    labels = batch["labels"]
    trained = int((labels[:, 1:] != -100).sum())
    seen = []
    head = trainer.model.get_output_embeddings()
    handle = head.register_forward_hook(lambda module, args, out: seen.append(tuple(out.shape)))
    with torch.no_grad():
        trainer.compute_loss(trainer.model, dict(batch))
        assert seen[-1] == (trained, head.out_features)
        assert trained < 0.8 * batch["attention_mask"].sum()  # prompts are not scored
        # outside a loss computation (generation, plain forwards) the head scores every position again
        out = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    handle.remove()
    assert out.logits.shape[:2] == batch["input_ids"].shape


def test_auto_resolves_by_device_and_method():
    from lorafit.models.loss import resolve

    assert resolve("auto", "cpu", "lora") == "trained"
    assert resolve("auto", "cuda", "lora") == "chunked"
    assert resolve("auto", "cpu", "prompt_tuning") == "full"
    assert resolve("full", "cuda", "lora") == "full"


def test_trained_head_with_prompt_tuning_is_refused():
    from lorafit.core.errors import RecipeError
    from lorafit.recipe import recipe_from_yaml_text

    with pytest.raises(RecipeError, match="lm_head: trained"):
        recipe_from_yaml_text(
            "data: {train: x.jsonl}\nadapter: {method: prompt_tuning}\ntraining: {lm_head: trained}\n"
        )


@pytest.mark.parametrize(("old", "new"), [("on", "chunked"), ("off", "full"), ("auto", "auto")])
def test_run_dirs_from_before_the_rename_still_load(old, new):
    """lorafit 0.1 resolved `training.fused_lm_head`; their recipe.yaml must still load for resume, eval, merge."""
    from lorafit.recipe import recipe_from_yaml_text

    recipe = recipe_from_yaml_text(f"data: {{train: x.jsonl}}\ntraining: {{fused_lm_head: {old}}}\n")
    assert recipe.training.lm_head == new
    assert "fused_lm_head" not in recipe.to_yaml()
