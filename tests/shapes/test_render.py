import numpy as np
import pytest

from dreamlite.shapes.geometry import AREAS, SHAPES
from dreamlite.shapes.render import coverage, render, render_batch
from dreamlite.shapes.scene import BACKGROUND_COLORS, OBJECT_COLORS, Scene, ShapeObject


def _scene(shape="circle", color="red", size="large", x=0.5, y=0.5, bg="gray"):
    return Scene(bg, (ShapeObject(shape, color, size, x, y),))


def test_same_scene_same_pixels_and_batch_equals_single():
    scenes = [_scene(s, c, "medium", 0.3 + 0.1 * i, 0.6) for i, (s, c) in enumerate(zip(SHAPES, ["red", "blue",
                                                                                               "white", "black", "pink"]))]
    batch = render_batch(scenes, 64)
    assert batch.shape == (5, 64, 64, 3) and batch.dtype == np.uint8
    for scene, img in zip(scenes, batch):
        assert np.array_equal(render(scene, 64), img)
    assert np.array_equal(render_batch(scenes, 64), batch)


def test_interior_is_object_colour_far_pixels_are_background_edges_are_blended():
    img = render(_scene("square", "blue", "large", 0.5, 0.5, "beige"), 64).astype(int)
    assert tuple(img[32, 32]) == OBJECT_COLORS["blue"]
    assert tuple(img[2, 2]) == BACKGROUND_COLORS["beige"]
    row = img[32, :, 2]  # blue channel across the square's middle
    known = {OBJECT_COLORS["blue"][2], BACKGROUND_COLORS["beige"][2]}
    assert any(v not in known for v in row), "expected anti-aliased edge pixels"


@pytest.mark.parametrize("shape", SHAPES)
def test_rendered_area_matches_outline_area(shape):
    r = 60.0
    cov = coverage([shape], np.array([[70.0, 70.0]]), np.array([r]), np.zeros((1, 2)), 140)
    assert cov.sum() / r**2 == pytest.approx(AREAS[shape], rel=0.01)


@pytest.mark.parametrize("shape", SHAPES)
def test_rendered_box_matches_scene_box(shape):
    obj = ShapeObject(shape, "black", "large", 0.47, 0.52)
    img = render(Scene("beige", (obj,)), 256)
    ys, xs = np.nonzero(np.linalg.norm(img.astype(float) - BACKGROUND_COLORS["beige"], axis=2) > 100)
    x0, y0, x1, y1 = (v * 256 for v in obj.box)
    assert abs(xs.min() - x0) <= 1.5 and abs(xs.max() + 1 - x1) <= 1.5
    assert abs(ys.min() - y0) <= 1.5 and abs(ys.max() + 1 - y1) <= 1.5


def test_sizes_and_bad_size():
    scene = _scene(x=0.2, y=0.8)
    for size in (32, 48, 512):
        img = render(scene, size)
        assert img.shape == (size, size, 3)
        assert tuple(img[int(0.8 * size), int(0.2 * size)]) == OBJECT_COLORS["red"]
    with pytest.raises(ValueError, match="outside"):
        render(scene, 1024)


def test_object_touching_the_border_is_drawn_fully_and_empty_scene_is_background():
    obj = ShapeObject("circle", "green", "large", 0.165, 0.835)  # box touches the left and bottom edges
    img = render(Scene("navy", (obj,)), 64)
    assert tuple(img[int(0.835 * 64), 1]) == OBJECT_COLORS["green"]
    assert tuple(img[0, 63]) == BACKGROUND_COLORS["navy"]
    blank = render(Scene("teal"), 32)
    assert np.all(blank == np.array(BACKGROUND_COLORS["teal"], dtype=np.uint8))
