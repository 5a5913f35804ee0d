"""Shipped recipes: ``shapes_tiny`` (the recipe from nothing, its post-training stages, CI-sized versions, the
ablation arms), ``shapes_tiny_rounds`` and ``shapes_tiny_consolidation`` (the measured rounds that made the shipped
model, in order), ``shapes_tiny_grounding`` and ``shapes_tiny_resolution`` (measured experiments from the shipped
base, not shipped), ``dreamlite_039b`` (the paper-scale preset). ``get_recipe(name_or_path)`` also reads a recipe
JSON file."""

from __future__ import annotations

import json
from importlib import import_module
from pathlib import Path

from dreamlite.train.config import Recipe

# each defines ``RECIPES``: name -> Recipe (plain configs, cheap to import)
_MODULES = ("shapes_tiny", "shapes_tiny_rounds", "shapes_tiny_consolidation", "shapes_tiny_grounding",
            "shapes_tiny_resolution", "shapes_tiny_dmd", "dreamlite_039b")


def _registry() -> dict[str, str]:
    """Recipe name -> the module defining it; a name defined twice is an error, not a silent override."""
    out: dict[str, str] = {}
    for module in _MODULES:
        for name in import_module(f"dreamlite.train.recipes.{module}").RECIPES:
            if name in out:
                raise RuntimeError(f"recipe {name!r} is defined in both {out[name]} and {module}")
            out[name] = module
    return out


RECIPES = _registry()


def get_recipe(name: str) -> Recipe:
    if name in RECIPES:
        module = import_module(f"dreamlite.train.recipes.{RECIPES[name]}")
        return module.RECIPES[name]
    path = Path(name)
    if path.suffix == ".json":
        if not path.is_file():
            raise FileNotFoundError(f"recipe file not found: {path}")
        try:
            return Recipe.from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as e:
            raise ValueError(f"recipe file {path} is not valid JSON: {e}") from None
    raise KeyError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)} (or a path to a recipe .json)")
