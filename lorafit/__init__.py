"""lorafit: LoRA-family fine-tuning from YAML recipes."""

__version__ = "0.2.0"
