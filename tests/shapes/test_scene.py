import itertools

import numpy as np
import pytest

from dreamlite.shapes.geometry import relative_position
from dreamlite.shapes.scene import (BACKGROUND_COLORS, EDGE_MARGIN, GAP, OBJECT_COLORS, PlacementError,
                                    RelationConstraint, Scene, SceneError, ShapeObject, box_separation, layout,
                                    place, random_object_attrs)


def test_backgrounds_never_resemble_object_colours():
    for bg, obj in itertools.product(BACKGROUND_COLORS.values(), OBJECT_COLORS.values()):
        assert np.linalg.norm(np.subtract(bg, obj)) >= 80
    for a, b in itertools.combinations(OBJECT_COLORS.values(), 2):
        assert np.linalg.norm(np.subtract(a, b)) >= 90


def test_scene_json_round_trip_and_validation():
    scene = Scene("gray", (ShapeObject("star", "red", "small", 0.25, 0.3), ShapeObject("heart", "blue", "large",
                                                                                          0.7, 0.7)))
    assert Scene.from_dict(scene.to_dict()) == scene
    with pytest.raises(SceneError, match="unknown colour 'cyan'"):
        Scene.from_dict({"background": "gray", "objects": [{"shape": "star", "color": "cyan", "size": "small",
                                                            "x": 0.5, "y": 0.5}]})
    with pytest.raises(SceneError, match="leaves the image"):
        ShapeObject("circle", "red", "large", 0.05, 0.5).validate()
    with pytest.raises(SceneError, match="overlap"):
        Scene("gray", (ShapeObject("circle", "red", "large", 0.5, 0.5),
                       ShapeObject("square", "red", "large", 0.6, 0.5))).validate()
    with pytest.raises(SceneError, match="background"):
        Scene.from_dict({"background": "red", "objects": []})


def test_layouts_keep_gaps_and_margins():
    rng = np.random.default_rng(0)
    for _ in range(200):
        scene = layout(rng, random_object_attrs(rng, int(rng.integers(1, 6))), "gray")
        scene.validate()
        boxes = scene.boxes()
        assert boxes[:, :2].min() >= EDGE_MARGIN - 1e-9 and boxes[:, 2:].max() <= 1 - EDGE_MARGIN + 1e-9
        for a, b in itertools.combinations(boxes, 2):
            assert box_separation(a, b) >= GAP - 1e-9


@pytest.mark.parametrize("relation", ["left of", "right of", "above", "below"])
def test_place_satisfies_relations(relation):
    rng = np.random.default_rng(1)
    half = np.array([[0.12, 0.12], [0.1, 0.1]])
    for _ in range(20):
        c = place(rng, half, relations=[RelationConstraint(1, relation, 0)])
        boxes = np.concatenate([c - half, c + half], axis=1)
        assert relation in relative_position(boxes[1], boxes[0])


def test_place_gives_up_when_nothing_fits():
    with pytest.raises(PlacementError):
        place(np.random.default_rng(0), np.full((6, 2), 0.2), rounds=2)
    fixed = np.array([[0.0, 0.0, 1.0, 1.0]])
    with pytest.raises(PlacementError):
        place(np.random.default_rng(0), np.array([[0.1, 0.1]]), fixed_boxes=fixed, rounds=2)
