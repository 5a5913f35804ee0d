"""Prompt words: the role-swapped twin of a binding prompt."""

import numpy as np
import pytest

from dreamlite.shapes.language import role_swap
from dreamlite.shapes.spec import PromptSpec
from dreamlite.shapes.tasks import sample_t2i_prompts


def test_position_twin_trades_the_shapes_and_keeps_the_relation():
    assert role_swap("a photo of a star left of a square", "position") == "a photo of a square left of a star"
    assert role_swap("a picture where a heart is above a circle", "position") == \
        "a picture where a circle is above a heart"


def test_color_attr_twin_trades_the_colours_and_fixes_the_articles():
    assert role_swap("a photo of a red circle and an orange star", "color_attr") == \
        "a photo of an orange circle and a red star"


@pytest.mark.parametrize("prompt, tag", [
    ("a photo of a circle and a star", "two_object"),  # same image whichever comes first: no twin
    ("a photo of a red circle", "colors"),
    ("a photo of three hearts", "counting"),
    ("a photo of a star left of a star", "position"),  # nothing to trade
    ("a photo of a red circle and a red star", "color_attr"),
])
def test_prompts_without_two_roles_have_no_twin(prompt, tag):
    assert role_swap(prompt, tag) is None


def test_every_train_binding_prompt_has_a_twin_that_swaps_back_and_means_the_swapped_scene():
    rng = np.random.default_rng(3)
    seen = 0
    for prompt, meta in sample_t2i_prompts(rng, 300, tag_weights={"position": 1.0, "color_attr": 1.0}):
        twin = role_swap(prompt, meta["tag"])
        assert twin is not None and twin != prompt
        assert role_swap(twin, meta["tag"]) == prompt  # an involution
        first, second = PromptSpec.from_dict(meta).include
        if meta["tag"] == "position":  # the twin's subject is the prompt's reference
            assert twin.index(first.cls) < twin.index(second.cls)
        else:  # each shape now carries the other's colour
            assert f"{second.color} {first.cls}" in twin and f"{first.color} {second.cls}" in twin
        seen += 1
    assert seen == 300
