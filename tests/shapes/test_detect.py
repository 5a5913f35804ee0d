import numpy as np
import pytest

from dreamlite.shapes.detect import MIN_IMAGE_SIDE, analyse, detect
from dreamlite.shapes.render import render, render_batch
from dreamlite.shapes.scene import BACKGROUND_COLORS, Scene, ShapeObject, layout, random_background, random_object_attrs


def _scenes(seed, n):
    rng = np.random.default_rng(seed)
    return [layout(rng, random_object_attrs(rng, int(rng.integers(1, 5))), random_background(rng)) for _ in range(n)]


def _match(scene, dets, size):
    """Per object: the detection closest to its centre (None when none is within 5% of the side)."""
    out = []
    for o in scene.objects:
        best = min(dets, key=lambda d: np.hypot(d.center[0] - o.x * size, d.center[1] - o.y * size), default=None)
        ok = best is not None and np.hypot(best.center[0] - o.x * size, best.center[1] - o.y * size) < 0.05 * size
        out.append(best if ok else None)
    return out


def _iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.mark.parametrize("size", [64, 32, 256])
def test_finds_every_object_with_class_colour_and_box(size):
    scenes = _scenes(size, 40)
    for scene, img in zip(scenes, render_batch(scenes, size)):
        analysis = analyse(img)
        assert analysis.background == scene.background
        assert len(analysis.detections) == len(scene.objects)
        for obj, det in zip(scene.objects, _match(scene, list(analysis.detections), size)):
            assert det is not None and (det.cls, det.color) == (obj.shape, obj.color)
            # a 0.4 px error is a lot for the 5.8 px box of a small object at 32x32
            assert _iou(det.box, [v * size for v in obj.box]) > (0.8 if size >= 64 else 0.65)
        scores = [d.score for d in analysis.detections]
        assert scores == sorted(scores, reverse=True)


def test_blank_and_noise_images_hold_no_objects():
    rng = np.random.default_rng(0)
    for bg in BACKGROUND_COLORS.values():
        assert detect(np.broadcast_to(np.array(bg, np.uint8), (64, 64, 3)).copy()) == []
    for _ in range(20):
        assert detect(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) == []


def test_objects_in_an_unknown_background_are_still_found():
    img = render(Scene("gray", (ShapeObject("star", "yellow", "medium", 0.5, 0.5),)), 64)
    img[img.sum(axis=2) == 3 * 128] = (90, 90, 40)  # a dark olive the palette does not have
    analysis = analyse(img)
    assert analysis.background is None
    assert [(d.cls, d.color) for d in analysis.detections] == [("star", "yellow")]


def test_rejects_what_it_cannot_read():
    with pytest.raises(ValueError, match="minimum"):
        detect(np.zeros((MIN_IMAGE_SIDE - 1, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="RGB"):
        detect(np.zeros((64, 64), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        detect(np.zeros((64, 64, 3), np.float32))
