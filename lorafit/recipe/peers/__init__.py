"""What other fine-tuning tools call lorafit's settings, and what each of their settings means here.

One table for two readers: recipe diagnostics (an unknown key or value that is a peer's spelling gets the lorafit
field and what the peer setting means, instead of a string-similar guess) and `lorafit import`, which converts a
peer config with the same entries. The facts are from the peers' documented options (axolotl, LLaMA-Factory,
torchtune, TRL, unsloth); no code of theirs is used. Stdlib only: `lorafit validate` reads it before anything heavy.
"""

from lorafit.recipe.peers.convert import chat_template_for, names
from lorafit.recipe.peers.keys import KEYS, LAUNCH, NO_EFFECT, NULL_MATTERS, key_for
from lorafit.recipe.peers.spec import (
    AXOLOTL,
    HF,
    LLAMAFACTORY,
    TORCHTUNE,
    TRL,
    UNSLOTH,
    VALUES,
    PeerKey,
    PeerValue,
    Unmapped,
    tool_names,
    translate_value,
    value_for,
)

__all__ = [
    "AXOLOTL",
    "HF",
    "KEYS",
    "LAUNCH",
    "LLAMAFACTORY",
    "NO_EFFECT",
    "NULL_MATTERS",
    "TORCHTUNE",
    "TRL",
    "UNSLOTH",
    "VALUES",
    "PeerKey",
    "PeerValue",
    "Unmapped",
    "chat_template_for",
    "key_for",
    "names",
    "tool_names",
    "translate_value",
    "value_for",
]
