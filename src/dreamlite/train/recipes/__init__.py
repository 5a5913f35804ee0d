"""Shipped recipes, one file each; ``get_recipe(name_or_path)`` also reads a recipe JSON file."""

from __future__ import annotations

import json
from importlib import import_module
from pathlib import Path

from dreamlite.train.config import Recipe

RECIPES = {"shapes-tiny": "shapes_tiny", "shapes-tiny-plus": "shapes_tiny", "shapes-tiny-quick": "shapes_tiny",
           "shapes-tiny-post": "shapes_tiny", "shapes-tiny-post-quick": "shapes_tiny",
           **{f"ablation-{arm}": "shapes_tiny" for arm in ("progressive", "joint", "t2i", "edit")},
           "dreamlite-0.39b": "dreamlite_039b", "dreamlite-0.39b-smoke": "dreamlite_039b"}


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
