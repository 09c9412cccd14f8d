"""lorafit: LoRA-family fine-tuning from YAML recipes.

The package follows the pipeline, recipe -> data / models -> train -> artifacts -> cli, with the run directory
below the stages that write it. Each folder is a layer, listed from the bottom up: a module imports only from
its own folder and the folders listed before it (data and models share a rank). tests/test_layers.py checks this
statically, function-level imports included, and that no imports form a cycle.

core/       errors.py (exit codes), paths.py (cache, registry, configs), methods.py (adapter families, target
            sets, optimizers), chat_templates.py, modelinfo.py (a model's context without loading it),
            textfiles.py (what a non-UTF-8 file is), device.py (device and dtype rule), dist.py (ranks),
            hub.py (whether the hub, or a tracker's server, is reachable)
recipe/     sections.py and training.py (the sections' fields), schema.py (the Recipe, cross-section rules),
            parsing.py (bounded YAML with line numbers), diagnostics.py (errors as file:line with a fix),
            extends.py (`extends` layering, data paths), loader.py (load_recipe, --set, check_hardware),
            preference.py (the preference section), peers/ (other tools' keys: spec.py, convert.py, keys.py),
            importer.py (`lorafit import`), import_datasets.py (its dataset references)
runs/       the run directory (layout, atomic writes, checkpoints), run_record.py (run.json's schema),
            registry.py (the index of runs), registry_db.py (its SQLite file), comparison.py (`runs compare`),
            plots.py (loss.png)
data/       prepare (the whole data step); scan.py (validation, splits, weights), tokens.py (ids and masks),
            cache.py (the tokenization cache), results.py (Example, DataStats, Prepared), sources.py (files, hub
            datasets), formats.py (record formats, rendering), data_report.py (`lorafit data`), preserve.py
            (data.preserve)
models/     model and tokenizer loading, quantization; adapters.py (PEFT configs), targets.py (target modules
            and their checks), plan.py (memory arithmetic), recipe_plan.py (a recipe's plan, `lorafit plan`),
            loss.py (LM-head paths), generation.py (greedy decoding)
train/      one run as named phases: pipeline.py (the run), phases.py, state.py, trainer.py (the TRL trainer
            and every library private; preference.py DPO's), sampling.py (length grouping), callbacks.py,
            signals.py, rundir.py (resume), oom.py, outputs.py, reproduce.py (`lorafit reproduce`'s checks);
            tracking.py (TensorBoard / MLflow / W&B / Trackio), health.py (divergence, over-fitting)
artifacts/  evaluate.py, preference_eval.py, drift.py (off-task drift), scoring.py and harness.py (`lorafit eval`),
            merge.py, export.py, generate.py
cli/        the app (`python -m lorafit.cli`), common.py (consoles, shared arguments, errors to exit codes);
            commands by stage: check_cli.py (validate, data, plan, schema), train_cli.py (train, launch, slurm),
            artifacts_cli.py (eval, merge, export, generate), runs_cli.py (`lorafit runs`, `lorafit reproduce`);
            launching.py (the accelerate command and sbatch script behind launch and slurm)

Where a change goes: a new adapter method in core/methods.py and models/adapters.py; a new training objective
in train/trainer.py (trainer_for); a new command in cli/, its work in the layer it belongs to.
"""

__version__ = "0.2.0"
