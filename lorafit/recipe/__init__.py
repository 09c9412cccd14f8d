"""The recipe: a frozen, typed description of one run, read from YAML with every error at once and its line.

sections.py and training.py hold the sections' fields, schema.py the whole recipe and its cross-section rules;
parsing.py reads YAML within bounds and keeps line numbers, diagnostics.py turns validation errors into
`file:line` messages, extends.py layers a recipe over its bases, loader.py reads, overrides and validates one;
preference.py holds the preference objectives' section and rules.
Here: the names the rest of lorafit imports.
"""

from lorafit.recipe.loader import check_hardware, load_recipe, parse_override, recipe_from_yaml_text
from lorafit.recipe.parsing import MAX_EXTENDS, MAX_RECIPE_BYTES, parse_yaml_text
from lorafit.recipe.schema import Recipe
from lorafit.recipe.sections import DataSection
from lorafit.recipe.training import TrainingSection

__all__ = [
    "MAX_EXTENDS",
    "MAX_RECIPE_BYTES",
    "DataSection",
    "Recipe",
    "TrainingSection",
    "check_hardware",
    "load_recipe",
    "parse_override",
    "parse_yaml_text",
    "recipe_from_yaml_text",
]
