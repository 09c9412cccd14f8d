"""The training stage: one run of a recipe, from its inputs to the adapter in the run directory.

- pipeline.py   the run as named phases (`run` is the entry point the CLI calls)
- trainer.py    the TRL trainer and config a recipe gets, and every touch of a library private
- callbacks.py  Trainer callbacks, one concern each
- signals.py    SIGUSR1 / SIGINT / SIGTERM: stop after the step with a resumable checkpoint
- rundir.py     the run directory check, --no-resume's fresh directory, the resume point
- outputs.py    what a run leaves: versions, model card, adapter, loss.png
"""
