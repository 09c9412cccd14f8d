"""run.json through its typed record: what the current code writes reads back, and an old run directory
(exports as export_gguf_<type> keys, no schema_version) still loads, upgraded."""

import json

from lorafit import runs
from lorafit.runs import registry, run_record


def test_a_run_written_now_reads_back_as_its_record(trained_run):
    raw = json.loads((trained_run / runs.RUN_JSON).read_text())
    assert raw["schema_version"] == run_record.SCHEMA_VERSION
    record = runs.read_record(trained_run)
    assert record.status == "finished" and record.train.steps == raw["train"]["steps"] > 0
    assert record.train.tokens > 0 and record.seed == raw["seed"] and record.versions["python"]
    assert runs.read_run_json(trained_run) == raw  # nothing lost or added by the round trip
    assert registry.read_dir(trained_run)["steps"] == raw["train"]["steps"]


def old_run_dir(tmp_path):
    """A run directory as lorafit 0.2 left it after `lorafit export --format gguf`."""
    run_dir = tmp_path / "old"
    run_dir.mkdir()
    gguf = {"path": str(run_dir / "export" / "model-q8_0.gguf"), "type": "q8_0", "greedy_agreement": 1.0}
    (run_dir / runs.RUN_JSON).write_text(
        json.dumps(
            {
                "status": "finished",
                "seed": 42,
                "versions": {"torch": "2.13.0"},
                "train": {"steps": 4, "tokens": 900, "seconds": 1.5, "tokens_per_s": 600.0, "peak_memory_mb": 700.0},
                "eval": {"loss_before": 2.5, "loss_after": 1.9},
                "export_gguf_q8_0": gguf,
                "from_a_later_version": {"x": 1},
            }
        )
    )
    return run_dir, gguf


def test_an_old_run_dir_still_loads(tmp_path):
    run_dir, gguf = old_run_dir(tmp_path)
    record = runs.read_record(run_dir)
    assert record.exports == {"gguf_q8_0": gguf} and record.train.tokens == 900 and record.eval["loss_after"] == 1.9
    assert record.from_a_later_version == {"x": 1}  # unknown keys are kept
    assert registry.read_dir(run_dir)["exports_json"] == {"gguf_q8_0": gguf["path"]}
    runs.record_export(run_dir, "gguf_f16", {"path": "/x/model-f16.gguf"})  # rewriting upgrades the file
    raw = json.loads((run_dir / runs.RUN_JSON).read_text())
    assert raw["schema_version"] == 2 and "export_gguf_q8_0" not in raw
    assert set(raw["exports"]) == {"gguf_q8_0", "gguf_f16"} and raw["from_a_later_version"] == {"x": 1}


def test_a_value_of_the_wrong_type_is_left_out_not_a_crash(tmp_path):
    run_dir = tmp_path / "edited"
    run_dir.mkdir()
    (run_dir / runs.RUN_JSON).write_text(
        json.dumps({"status": "finished", "seed": [1, 2], "train": {"steps": "many", "tokens": 5}})
    )
    record = runs.read_record(run_dir)
    assert (
        record.seed is None and record.train.steps is None and record.train.tokens == 5 and record.status == "finished"
    )
