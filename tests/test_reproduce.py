"""`lorafit reproduce`: the same recipe and seed give the same adapter, and every drift is one warning."""


def test_reproduce_gives_an_identical_adapter_and_warns_about_drift(tmp_path, tiny_model_dir, monkeypatch):
    import json

    from typer.testing import CliRunner

    from lorafit.cli import app
    from lorafit.train import outputs, reproduce

    from conftest import chat_records, run_train, tiny_recipe_text, write_jsonl

    monkeypatch.setenv("LORAFIT_REGISTRY", str(tmp_path / "reg.sqlite"))
    runner = CliRunner()
    data = write_jsonl(tmp_path / "d.jsonl", chat_records(32))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(tiny_recipe_text(tiny_model_dir, data, tmp_path / "run", training={"max_steps": 4, "seed": 7}))
    assert run_train(recipe).exit_code == 0

    result = runner.invoke(app, ["reproduce", str(tmp_path / "run"), "--out", str(tmp_path / "again")])
    assert result.exit_code == 0, result.output
    assert "seed 7" in result.output and "identical" in result.output and "warning" not in result.output
    original = (tmp_path / "run" / "adapter" / "adapter_model.safetensors").read_bytes()
    assert (tmp_path / "again" / "adapter" / "adapter_model.safetensors").read_bytes() == original
    assert json.loads((tmp_path / "again" / "run.json").read_text())["seed"] == 7

    # Drift: a library upgraded, a data file edited. Each is one warning line, before any training.
    real = outputs.versions
    monkeypatch.setattr(outputs, "versions", lambda: {**real(), "transformers": "9.9.9"})
    with data.open("a") as f:
        f.write(json.dumps(chat_records(1, seed=5)[0]) + "\n")
    warnings = reproduce.checks(tmp_path / "run")
    assert len(warnings) == 2
    assert warnings[0].startswith("transformers 9.9.9 here, ") and "in the original run" in warnings[0]
    assert warnings[1].startswith(f"data file {data} changed (sha256 ")
    assert reproduce.default_out(tmp_path / "run") == tmp_path / "run-repro"
