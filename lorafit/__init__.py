"""lorafit: LoRA-family fine-tuning from YAML recipes.

The package follows the pipeline, recipe -> data / model -> train -> artifacts -> cli, with the run directory
below the stages that write it. The layers below go from the bottom up: a module imports only from its own
layer and the layers listed before it (data and model share a rank). tests/test_layers.py checks this
statically, function-level imports included, and finds no import cycle.

core        errors.py (exit codes), paths.py (cache, registry, configs), methods.py (adapter families, target
            sets, optimizers), chat_templates.py, modelinfo.py (a model's context without loading it),
            textfiles.py (what a non-UTF-8 file is), device.py (device and dtype rule), dist.py (ranks)
recipe      recipe.py: the schema, its YAML loader with line numbers, --set overrides
runs        runs.py (run directory layout, atomic writes), run_record.py (run.json's schema), registry.py
            (the SQLite index of runs), plots.py (loss.png)
data        sources.py (files, hub datasets), formats.py (record formats, rendering), data.py (validate,
            mask, split, tokenize, cache), data_report.py (`lorafit data`), preserve.py (data.preserve)
model       models.py (model and tokenizer loading, quantization), adapters.py (PEFT configs), plan.py
            (memory plan), loss.py (LM-head paths), generation.py (greedy decoding)
train       train/ (the run as named phases: pipeline.py, phases.py, trainer.py, callbacks.py, ...),
            tracking.py (TensorBoard / MLflow / W&B / Trackio), health.py (divergence and over-fitting rules)
artifacts   evaluate.py, harness.py (`lorafit eval`), merge.py, export.py, generate.py, launch.py (`lorafit
            launch` / `lorafit slurm`)
cli         cli.py (the commands), cli_common.py (consoles, errors to exit codes), runs_cli.py (`lorafit runs`)

Where a change goes: a new adapter method in methods.py and adapters.py; a new training objective in
train/trainer.py (trainer_for); a new command in cli.py, its work in the layer it belongs to.
"""

__version__ = "0.2.0"
