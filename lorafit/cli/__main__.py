"""`python -m lorafit.cli`: what `lorafit launch` and the sbatch template run on every rank."""

from lorafit.cli import app

app()
