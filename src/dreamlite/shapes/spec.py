"""GenEval-schema prompt specifications: parse/validate metadata rows, sample them, and build scenes that
satisfy them.

A GenEval metadata row is ``{"tag": ..., "include": [clause, ...], "exclude": [clause, ...], "prompt": ...}``
with clauses ``{"class": str, "count": int, "color"?: str, "position"?: [relation, group index]}``. The six
tags and their clause shapes:

    single_object  include [{class, count 1}]
    two_object     include [{A, 1}, {B, 1}]                          (A != B)
    counting       include [{X, n}], exclude [{X, n + 1}]            (n in 2..4)
    colors         include [{X, 1, color c}]
    position       include [{B, 1}, {A, 1, position [rel, 0]}]       ("a photo of an A rel a B")
    color_attr     include [{A, 1, color c1}, {B, 1, color c2}]      (A != B, c1 != c2)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from dreamlite.shapes import language
from dreamlite.shapes.geometry import RELATIONS, SHAPES
from dreamlite.shapes.scene import (COLORS, MAX_OBJECTS, SIZE_NAMES, PlacementError, RelationConstraint, Scene,
                                    SceneError, layout, random_background)

TAGS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
COUNTS: tuple[int, ...] = (2, 3, 4)


class SpecError(ValueError):
    """A metadata row does not follow GenEval's schema."""


@dataclass(frozen=True)
class Clause:
    cls: str
    count: int
    color: str | None = None
    position: tuple[str, int] | None = None  # (relation, index of the referenced include clause)

    def to_dict(self) -> dict:
        d: dict = {"class": self.cls, "count": self.count}
        if self.color is not None:
            d["color"] = self.color
        if self.position is not None:
            d["position"] = [self.position[0], self.position[1]]
        return d

    @classmethod
    def from_dict(cls, d: object, where: str) -> Clause:
        if not isinstance(d, dict):
            raise SpecError(f"{where}: a clause must be an object, got {type(d).__name__}")
        name, count = d.get("class"), d.get("count", 1)
        if not isinstance(name, str) or not name:
            raise SpecError(f"{where}: clause needs a 'class' string")
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise SpecError(f"{where}: 'count' must be a positive integer, got {count!r}")
        color = d.get("color")
        if color is not None and not isinstance(color, str):
            raise SpecError(f"{where}: 'color' must be a string, got {color!r}")
        position = d.get("position")
        if position is not None:
            ok = (isinstance(position, (list, tuple)) and len(position) == 2 and position[0] in RELATIONS
                  and isinstance(position[1], int) and not isinstance(position[1], bool))
            if not ok:
                raise SpecError(f"{where}: 'position' must be [relation in {list(RELATIONS)}, clause index], "
                                f"got {position!r}")
            position = (str(position[0]), int(position[1]))
        return cls(name, count, color, position)


@dataclass(frozen=True)
class PromptSpec:
    tag: str
    include: tuple[Clause, ...]
    exclude: tuple[Clause, ...]
    prompt: str

    def to_dict(self) -> dict:
        d: dict = {"tag": self.tag, "include": [c.to_dict() for c in self.include]}
        if self.exclude:
            d["exclude"] = [c.to_dict() for c in self.exclude]
        d["prompt"] = self.prompt
        return d

    @classmethod
    def from_dict(cls, d: object, where: str = "metadata") -> PromptSpec:
        if not isinstance(d, dict):
            raise SpecError(f"{where}: a metadata row must be a JSON object")
        tag, prompt = d.get("tag"), d.get("prompt")
        if not isinstance(tag, str) or not isinstance(prompt, str):
            raise SpecError(f"{where}: needs string 'tag' and 'prompt'")
        include_raw, exclude_raw = d.get("include", []), d.get("exclude", [])
        if not isinstance(include_raw, list) or not isinstance(exclude_raw, list):
            raise SpecError(f"{where}: 'include' and 'exclude' must be lists")
        include = tuple(Clause.from_dict(c, f"{where}: include[{i}]") for i, c in enumerate(include_raw))
        exclude = tuple(Clause.from_dict(c, f"{where}: exclude[{i}]") for i, c in enumerate(exclude_raw))
        for i, c in enumerate(include):
            if c.position is not None and not 0 <= c.position[1] < i:
                raise SpecError(f"{where}: include[{i}] refers to clause {c.position[1]}, which must come "
                                "before it")
        return cls(tag, include, exclude, prompt)

    def unknown_names(self) -> list[str]:
        """Classes and colours this world cannot draw or detect (the row is then unscorable here)."""
        out = []
        for c in self.include + self.exclude:
            if c.cls not in SHAPES:
                out.append(f"class {c.cls!r}")
            if c.color is not None and c.color not in COLORS:
                out.append(f"colour {c.color!r}")
        return sorted(set(out))


def _pick(rng: np.random.Generator, options: Sequence[str], k: int = 1) -> list[str]:
    return [options[int(i)] for i in rng.choice(len(options), size=k, replace=False)]


def sample_spec(rng: np.random.Generator, tag: str, phrasings: str = "train") -> PromptSpec:
    """A random prompt of ``tag`` in GenEval's schema, phrased from the ``phrasings`` set."""
    if tag == "single_object":
        (a,) = _pick(rng, SHAPES)
        return PromptSpec(tag, (Clause(a, 1),), (), language.prompt_one(a, None, rng, phrasings))
    if tag == "colors":
        (a,), (c,) = _pick(rng, SHAPES), _pick(rng, COLORS)
        return PromptSpec(tag, (Clause(a, 1, c),), (), language.prompt_one(a, c, rng, phrasings))
    if tag == "two_object":
        a, b = _pick(rng, SHAPES, 2)
        text = language.prompt_two((a, None), (b, None), rng, phrasings)
        return PromptSpec(tag, (Clause(a, 1), Clause(b, 1)), (), text)
    if tag == "color_attr":
        (a, b), (ca, cb) = _pick(rng, SHAPES, 2), _pick(rng, COLORS, 2)
        text = language.prompt_two((a, ca), (b, cb), rng, phrasings)
        return PromptSpec(tag, (Clause(a, 1, ca), Clause(b, 1, cb)), (), text)
    if tag == "counting":
        (a,), n = _pick(rng, SHAPES), COUNTS[int(rng.integers(len(COUNTS)))]
        return PromptSpec(tag, (Clause(a, n),), (Clause(a, n + 1),), language.prompt_count(a, n, rng, phrasings))
    if tag == "position":
        subject, reference = _pick(rng, SHAPES, 2)
        (rel,) = _pick(rng, RELATIONS)
        text = language.prompt_position(subject, rel, reference, rng, phrasings)
        return PromptSpec(tag, (Clause(reference, 1), Clause(subject, 1, position=(rel, 0))), (), text)
    raise ValueError(f"unknown tag {tag!r}; known: {', '.join(TAGS)}")


def rephrase(spec: PromptSpec, rng: np.random.Generator, phrasings: str) -> PromptSpec:
    """``spec`` with its prompt drawn again from the ``phrasings`` set: the same clauses, so the same scoring."""
    inc = spec.include
    if spec.tag in ("single_object", "colors"):
        text = language.prompt_one(inc[0].cls, inc[0].color, rng, phrasings)
    elif spec.tag in ("two_object", "color_attr"):
        text = language.prompt_two((inc[0].cls, inc[0].color), (inc[1].cls, inc[1].color), rng, phrasings)
    elif spec.tag == "counting":
        text = language.prompt_count(inc[0].cls, inc[0].count, rng, phrasings)
    elif spec.tag == "position":
        text = language.prompt_position(inc[1].cls, inc[1].position[0], inc[0].cls, rng, phrasings)
    else:
        raise ValueError(f"cannot rephrase a {spec.tag!r} row")
    return PromptSpec(spec.tag, spec.include, spec.exclude, text)


def _object_colors(rng: np.random.Generator, clause: Clause) -> list[str]:
    if clause.color is not None:
        return [clause.color] * clause.count
    if clause.count > 1 and rng.random() < 0.5:  # counted groups are often one colour, sometimes mixed
        return [COLORS[int(rng.integers(len(COLORS)))]] * clause.count
    return [COLORS[int(i)] for i in rng.integers(len(COLORS), size=clause.count)]


def scene_for_spec(rng: np.random.Generator, spec: PromptSpec, attempts: int = 8) -> Scene:
    """A random scene that satisfies ``spec`` under GenEval's rules: exactly the included objects (colours
    where given, random otherwise), every position relation held with a margin, no distractors."""
    unknown = spec.unknown_names()
    if unknown:
        raise SceneError(f"cannot draw {', '.join(unknown)}: not in the Shapes world")
    limits: Mapping[str, int] = {c.cls: c.count for c in spec.exclude}
    totals: dict[str, int] = {}
    for c in spec.include:
        totals[c.cls] = totals.get(c.cls, 0) + c.count
    for cls, n in totals.items():
        if cls in limits and n >= limits[cls]:
            raise SceneError(f"{spec.prompt!r}: includes {n} {cls} but excludes {limits[cls]} or more")
    if sum(totals.values()) > MAX_OBJECTS:
        raise SceneError(f"{spec.prompt!r}: needs {sum(totals.values())} objects; a scene holds {MAX_OBJECTS}")
    attrs, groups = [], []
    for clause in spec.include:
        start = len(attrs)
        attrs += [(clause.cls, color, SIZE_NAMES[int(rng.integers(len(SIZE_NAMES)))])
                  for color in _object_colors(rng, clause)]
        groups.append(range(start, len(attrs)))
    relations = [RelationConstraint(i, clause.position[0], j)
                 for clause, group in zip(spec.include, groups) if clause.position is not None
                 for i in group for j in groups[clause.position[1]]]
    for attempt in range(attempts):
        try:
            return layout(rng, attrs, random_background(rng), relations)
        except PlacementError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")
