"""What is made from a finished run directory: `lorafit eval` (evaluate.py, preference_eval.py, drift.py, harness.py), `lorafit merge`,
`lorafit export` and `lorafit generate`."""
