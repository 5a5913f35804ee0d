"""Edit cases of the Shapes world, modelled on ImgEdit's basic edit types.

An edit case is (source scene, instruction, target scene). Every source scene has unique (shape, colour)
pairs, so "the red circle" always names exactly one object. What each type changes in the target:

    add         one new object (a shape/colour pair not yet in the scene) anywhere free
    remove      one named object is gone
    replace     one named object becomes another shape; colour, size and centre kept
    alter       one named object takes another colour
    move        one named object moves left/right/up/down along one axis, from one half into the far 40%
    background  the background colour changes
    resize      one named object grows or shrinks one size step about its centre
    count       the number of objects of one (shape, colour) group changes (1..4); new ones are added free,
                removed ones are picked at random
Everything not named stays identical (same object, same place).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from dreamlite.shapes import language
from dreamlite.shapes.geometry import SHAPES, half_extent
from dreamlite.shapes.scene import (COLORS, GAP, SIZE_NAMES, SIZES, PlacementError, Scene, SceneError, ShapeObject,
                                    box_separation, layout, place, random_background)

EDIT_TYPES: tuple[str, ...] = ("add", "remove", "replace", "alter", "move", "background", "resize", "count")
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
MOVE_FROM, MOVE_TO = 0.55, 0.40  # move "left": from centre x >= 0.55 to centre x <= 0.40 (mirrored for others)


@dataclass(frozen=True)
class EditCase:
    edit_type: str
    source: Scene
    target: Scene
    instruction: str


def _source(rng: np.random.Generator, n_min: int, n_max: int) -> Scene:
    """A random scene of n_min..n_max objects with unique (shape, colour) pairs."""
    n = int(rng.integers(n_min, n_max + 1))
    pairs = rng.choice(len(SHAPES) * len(COLORS), size=n, replace=False)
    attrs = [(SHAPES[p // len(COLORS)], COLORS[p % len(COLORS)], SIZE_NAMES[int(rng.integers(len(SIZE_NAMES)))])
             for p in pairs]
    return layout(rng, attrs, random_background(rng))


def _refer(obj: ShapeObject, scene: Scene, rng: np.random.Generator, phrasings: str) -> str:
    """'the red circle', or 'the circle' (train phrasings, sometimes) when no other circle is present."""
    unique_class = sum(o.shape == obj.shape for o in scene.objects) == 1
    if phrasings == "train" and unique_class and rng.random() < 0.25:
        return f"the {obj.shape}"
    return f"the {obj.color} {obj.shape}"


def _fits(obj: ShapeObject, others: list[ShapeObject]) -> bool:
    try:
        obj.validate()
    except SceneError:
        return False
    box = np.array(obj.box)
    return all(box_separation(box, np.array(o.box)) >= GAP for o in others)


def _pairs(scene: Scene) -> set[tuple[str, str]]:
    return {(o.shape, o.color) for o in scene.objects}


def _pick_index(rng: np.random.Generator, scene: Scene) -> int:
    return int(rng.integers(len(scene.objects)))


def _add(rng: np.random.Generator, phrasings: str) -> EditCase:
    src = _source(rng, 1, 4)
    free = [(s, c) for s in SHAPES for c in COLORS if (s, c) not in _pairs(src)]
    shape, color = free[int(rng.integers(len(free)))]
    tgt = layout(rng, [(shape, color, SIZE_NAMES[int(rng.integers(len(SIZE_NAMES)))])], src.background,
                 fixed=src.objects)
    text = language.edit_instruction("add", rng, phrasings, a=language.noun_phrase(shape, color))
    return EditCase("add", src, tgt, text)


def _remove(rng: np.random.Generator, phrasings: str) -> EditCase:
    src = _source(rng, 2, 4)
    i = _pick_index(rng, src)
    tgt = src.with_objects(src.objects[:i] + src.objects[i + 1:])
    text = language.edit_instruction("remove", rng, phrasings, the=_refer(src.objects[i], src, rng, phrasings))
    return EditCase("remove", src, tgt, text)


def _swap(rng: np.random.Generator, phrasings: str, kind: str) -> EditCase:
    """replace (new shape) or alter (new colour) of one object in place."""
    src = _source(rng, 1, 4)
    i = _pick_index(rng, src)
    old = src.objects[i]
    if kind == "replace":
        options = [ShapeObject(s, old.color, old.size, old.x, old.y) for s in SHAPES if s != old.shape]
    else:
        options = [ShapeObject(old.shape, c, old.size, old.x, old.y) for c in COLORS if c != old.color]
    others = list(src.objects[:i] + src.objects[i + 1:])
    options = [o for o in options if (o.shape, o.color) not in _pairs(src) and _fits(o, others)]
    if not options:
        raise PlacementError(f"no {kind} fits")
    new = options[int(rng.integers(len(options)))]
    tgt = src.with_objects(src.objects[:i] + (new,) + src.objects[i + 1:])
    the = _refer(old, src, rng, phrasings)
    if kind == "replace":
        text = language.edit_instruction("replace", rng, phrasings, the=the, a=language.noun_phrase(new.shape))
    else:
        text = language.edit_instruction("alter", rng, phrasings, the=the, color=new.color)
    return EditCase(kind, src, tgt, text)


def _move(rng: np.random.Generator, phrasings: str) -> EditCase:
    src = _source(rng, 1, 4)
    i = _pick_index(rng, src)
    old = src.objects[i]
    coord = {"left": old.x, "right": 1 - old.x, "up": old.y, "down": 1 - old.y}
    ok = [d for d in DIRECTIONS if coord[d] >= MOVE_FROM]
    if not ok:
        raise PlacementError("object sits in the middle")
    direction = ok[int(rng.integers(len(ok)))]
    bounds = {"left": (0.0, old.y, MOVE_TO, old.y), "right": (1 - MOVE_TO, old.y, 1.0, old.y),
              "up": (old.x, 0.0, old.x, MOVE_TO), "down": (old.x, 1 - MOVE_TO, old.x, 1.0)}[direction]
    others = src.objects[:i] + src.objects[i + 1:]
    hx, hy = (h * SIZES[old.size] for h in half_extent(old.shape))
    (x, y), = place(rng, np.array([[hx, hy]]), np.array([o.box for o in others]).reshape(-1, 4),
                    center_bounds=np.array([bounds]))
    new = ShapeObject(old.shape, old.color, old.size, float(x), float(y))
    tgt = src.with_objects(src.objects[:i] + (new,) + src.objects[i + 1:])
    text = language.edit_instruction("move", rng, phrasings, the=_refer(old, src, rng, phrasings),
                                     dir=language.direction_phrase(direction, rng, phrasings))
    return EditCase("move", src, tgt, text)


def _background(rng: np.random.Generator, phrasings: str) -> EditCase:
    src = _source(rng, 1, 4)
    bg = random_background(rng, exclude=src.background)
    text = language.edit_instruction("background", rng, phrasings, bg=bg)
    return EditCase("background", src, Scene(bg, src.objects), text)


def _resize(rng: np.random.Generator, phrasings: str) -> EditCase:
    src = _source(rng, 1, 4)
    i = _pick_index(rng, src)
    old = src.objects[i]
    rank = SIZE_NAMES.index(old.size)
    steps = [s for s in (-1, 1) if 0 <= rank + s < len(SIZE_NAMES)]
    step = steps[int(rng.integers(len(steps)))]
    new = ShapeObject(old.shape, old.color, SIZE_NAMES[rank + step], old.x, old.y)
    if not _fits(new, list(src.objects[:i] + src.objects[i + 1:])):
        raise PlacementError("no room to grow")
    tgt = src.with_objects(src.objects[:i] + (new,) + src.objects[i + 1:])
    form = "resize_bigger" if step > 0 else "resize_smaller"
    text = language.edit_instruction(form, rng, phrasings, the=_refer(old, src, rng, phrasings))
    return EditCase("resize", src, tgt, text)


def _count(rng: np.random.Generator, phrasings: str) -> EditCase:
    n_src, n_tgt = (int(v) + 1 for v in rng.choice(4, size=2, replace=False))
    shape_i, other_i = rng.choice(len(SHAPES), size=2, replace=False)
    shape, color = SHAPES[shape_i], COLORS[int(rng.integers(len(COLORS)))]
    size = SIZE_NAMES[int(rng.integers(len(SIZE_NAMES)))]
    attrs = [(shape, color, size)] * n_src
    if rng.random() < 0.5:  # sometimes an object of another shape stands by, to be left alone
        attrs.append((SHAPES[other_i], COLORS[int(rng.integers(len(COLORS)))], SIZE_NAMES[int(rng.integers(3))]))
    src = layout(rng, attrs, random_background(rng))
    group = [o for o in src.objects if o.shape == shape and o.color == color]
    rest = [o for o in src.objects if not (o.shape == shape and o.color == color)]
    if n_tgt > n_src:
        tgt = layout(rng, [(shape, color, group[0].size)] * (n_tgt - n_src), src.background, fixed=src.objects)
    else:
        keep = sorted(rng.choice(n_src, size=n_tgt, replace=False))
        tgt = src.with_objects(rest + [group[int(k)] for k in keep])
    noun = shape if n_tgt == 1 else language.plural(shape)
    text = language.edit_instruction("count", rng, phrasings, n=language.number_word(n_tgt), color=color,
                                     xs=noun, pxs=language.plural(shape))
    return EditCase("count", src, tgt, text)


_SAMPLERS = MappingProxyType({
    "add": _add, "remove": _remove, "replace": lambda r, p: _swap(r, p, "replace"),
    "alter": lambda r, p: _swap(r, p, "alter"), "move": _move, "background": _background, "resize": _resize,
    "count": _count,
})


def sample_edit_case(rng: np.random.Generator, edit_type: str, phrasings: str = "train",
                     attempts: int = 50) -> EditCase:
    """A random edit of ``edit_type`` with its instruction from the ``phrasings`` set."""
    if edit_type not in _SAMPLERS:
        raise ValueError(f"unknown edit type {edit_type!r}; known: {', '.join(EDIT_TYPES)}")
    for _ in range(attempts):
        try:
            return _SAMPLERS[edit_type](rng, phrasings)
        except PlacementError:
            continue  # the drawn scene had no room for this edit: draw another
    raise PlacementError(f"could not sample a {edit_type} edit in {attempts} attempts")
