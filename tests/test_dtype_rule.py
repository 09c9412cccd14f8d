"""The memory plan counts the base weights at the dtype training loads them in, on every kind of device.

No accelerator is needed: the device probes are replaced, so detect() reports the device under test."""

from types import SimpleNamespace

import pytest
import torch

from lorafit import models
from lorafit.core import device
from lorafit.models import recipe_plan
from lorafit.recipe import load_recipe

CASES = [  # (device kind, fast bf16, training.precision, the dtype training uses)
    ("cuda", True, "fp32", "float32"),
    ("cuda", True, "bf16", "bfloat16"),
    ("cuda", True, "fp16", "float16"),
    ("cuda", True, "auto", "bfloat16"),
    ("cuda", False, "auto", "float16"),
    ("mps", False, "auto", "float32"),
    ("mps", False, "fp32", "float32"),
    ("cpu", False, "auto", "float32"),
    ("cpu", False, "fp32", "float32"),
]


@pytest.fixture()
def fake_device(monkeypatch):
    def use(kind: str, bf16: bool) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: kind == "cuda")
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
        monkeypatch.setattr(
            torch.cuda, "get_device_properties", lambda i: SimpleNamespace(name="fake", total_memory=80 * 2**30)
        )
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: kind == "mps")

    return use


@pytest.mark.parametrize(("kind", "bf16", "precision", "expected"), CASES)
def test_plan_and_training_agree_on_the_dtype(fake_device, tiny_recipe, kind, bf16, precision, expected):
    fake_device(kind, bf16)
    info = device.detect()
    assert info.kind == kind
    recipe = load_recipe(tiny_recipe, [f"training.precision={precision}"])
    loaded = models.torch_dtype(recipe)  # what load_model gives from_pretrained
    assert loaded == getattr(torch, expected)
    config = models.model_config(recipe)
    for where in (info, kind):  # the detected device, and a plan for a device of that kind elsewhere
        assert recipe_plan.recipe_settings(recipe, config, where)["weight_bytes"] == loaded.itemsize, (where, expected)
