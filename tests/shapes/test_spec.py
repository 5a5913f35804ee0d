import numpy as np
import pytest

from dreamlite.shapes import language
from dreamlite.shapes.geometry import relative_position
from dreamlite.shapes.spec import TAGS, Clause, PromptSpec, SpecError, sample_spec, scene_for_spec

RNG = np.random.default_rng(0)


def test_canonical_phrasings_are_genevals():
    assert language.prompt_one("circle", "red", RNG, "canonical") == "a photo of a red circle"
    assert language.prompt_one("star", "orange", RNG, "canonical") == "a photo of an orange star"
    assert language.prompt_two(("circle", None), ("star", None), RNG, "canonical") == "a photo of a circle and a star"
    assert language.prompt_count("heart", 3, RNG, "canonical") == "a photo of three hearts"
    assert language.prompt_position("star", "left of", "square", RNG, "canonical") == \
        "a photo of a star left of a square"
    assert language.prompt_two(("circle", "red"), ("star", "blue"), RNG, "canonical") == \
        "a photo of a red circle and a blue star"


def test_position_metadata_follows_genevals_schema():
    rng = np.random.default_rng(3)
    row = {"tag": "position", "include": [{"class": "square", "count": 1},
                                          {"class": "star", "count": 1, "position": ["left of", 0]}],
           "prompt": "a photo of a star left of a square"}
    spec = PromptSpec.from_dict(row)
    assert spec.include[1] == Clause("star", 1, None, ("left of", 0))
    assert spec.to_dict() == row
    sampled = sample_spec(rng, "position", "canonical")
    subject, reference = sampled.include[1].cls, sampled.include[0].cls
    assert sampled.prompt == f"a photo of a {subject} {sampled.include[1].position[0]} a {reference}"
    assert sampled.include[1].position[1] == 0


@pytest.mark.parametrize("tag", TAGS)
def test_sampled_specs_have_the_tag_shape_and_round_trip(tag):
    rng = np.random.default_rng(5)
    for _ in range(30):
        spec = sample_spec(rng, tag, "train")
        assert PromptSpec.from_dict(spec.to_dict()) == spec
        classes = [c.cls for c in spec.include]
        if tag in ("two_object", "position", "color_attr"):
            assert len(classes) == 2 and classes[0] != classes[1]
        if tag == "color_attr":
            assert spec.include[0].color != spec.include[1].color and spec.include[0].color is not None
        if tag == "counting":
            n = spec.include[0].count
            assert n in (2, 3, 4) and spec.exclude == (Clause(classes[0], n + 1),)
            assert language.number_word(n) in spec.prompt


def test_heldout_phrasings_never_appear_in_train():
    train, heldout = language.all_templates("train"), language.all_templates("heldout")
    assert set(train) == set(heldout)
    for form in train:
        assert not set(train[form]) & set(heldout[form]), form
    rng = np.random.default_rng(7)
    train_prompts = {sample_spec(rng, t, "train").prompt for t in TAGS for _ in range(300)}
    heldout_prompts = {sample_spec(rng, t, "heldout").prompt for t in TAGS for _ in range(300)}
    assert not train_prompts & heldout_prompts
    assert any(p.startswith("a photo of") for p in train_prompts)
    assert not any(p.startswith("a photo of") for p in heldout_prompts)


def test_scenes_satisfy_their_specs():
    rng = np.random.default_rng(11)
    for tag in TAGS:
        for _ in range(25):
            spec = sample_spec(rng, tag)
            scene = scene_for_spec(rng, spec)
            scene.validate()
            assert len(scene.objects) == sum(c.count for c in spec.include)  # no distractors
            for c in spec.include:
                objs = [o for o in scene.objects if o.shape == c.cls]
                assert len(objs) >= c.count
                if c.color:
                    assert all(o.color == c.color for o in objs)
            for c in spec.exclude:
                assert sum(o.shape == c.cls for o in scene.objects) < c.count
            if tag == "position":
                ref = next(o for o in scene.objects if o.shape == spec.include[0].cls)
                sub = next(o for o in scene.objects if o.shape == spec.include[1].cls)
                assert spec.include[1].position[0] in relative_position(np.array(sub.box), np.array(ref.box))


def test_malformed_metadata_is_named():
    with pytest.raises(SpecError, match="count"):
        PromptSpec.from_dict({"tag": "counting", "include": [{"class": "star", "count": 0}], "prompt": "x"})
    with pytest.raises(SpecError, match="position"):
        PromptSpec.from_dict({"tag": "position", "include": [{"class": "star", "count": 1,
                                                              "position": ["near", 0]}], "prompt": "x"})
    with pytest.raises(SpecError, match="must come before"):
        PromptSpec.from_dict({"tag": "position", "include": [{"class": "star", "count": 1,
                                                              "position": ["above", 0]}], "prompt": "x"})
    assert PromptSpec.from_dict({"tag": "single_object", "include": [{"class": "bench", "count": 1}],
                                 "prompt": "a photo of a bench"}).unknown_names() == ["class 'bench'"]
