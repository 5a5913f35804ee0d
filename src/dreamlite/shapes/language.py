"""Words of the Shapes world: prompt phrasings (GenEval tags) and edit instructions (ImgEdit-like types).

Every phrasing list comes in two disjoint sets: ``train`` (used to make training data) and ``heldout``
(never used in training; for paraphrase and reward-hacking checks). ``canonical`` is GenEval's own phrasing
("a photo of ...") and is one of the train phrasings. A test checks that no held-out template or word choice
appears in the train set.
"""

from __future__ import annotations

import re
from types import MappingProxyType
from typing import Mapping, Sequence

import numpy as np

from dreamlite.shapes.geometry import SHAPES
from dreamlite.shapes.scene import COLORS

PHRASINGS: tuple[str, ...] = ("canonical", "train", "heldout")
CANONICAL_SHARE = 0.3  # fraction of train prompts that use GenEval's canonical phrasing

NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")

# Prompt templates per "form": {a}/{b} are noun phrases with an article ("a red circle"), {n} a number
# word, {xs} a plural noun ("hearts"), {rel} a relation phrase. The first train template is canonical.
_PROMPTS_TRAIN = MappingProxyType({
    "one": ("a photo of {a}", "{a}", "an image of {a}", "a picture showing {a}", "there is {a}",
            "{a} in the picture"),
    "two": ("a photo of {a} and {b}", "{a} and {b}", "an image with {a} and {b}",
            "a picture of {a} together with {b}", "both {a} and {b}"),
    "count": ("a photo of {n} {xs}", "{n} {xs}", "an image of {n} {xs}", "a picture with exactly {n} {xs}",
              "there are {n} {xs}"),
    "position": ("a photo of {a} {rel} {b}", "{a} {rel} {b}", "an image of {a} {rel} {b}",
                 "{a} placed {rel} {b}", "a picture where {a} is {rel} {b}"),
})
_PROMPTS_HELDOUT = MappingProxyType({
    "one": ("a drawing of {a}", "an illustration containing {a}", "a rendering of {a}", "just {a}, nothing else"),
    "two": ("a drawing of {a} and {b}", "{a} as well as {b}", "an illustration showing {a} plus {b}",
            "a scene containing {a} along with {b}"),
    "count": ("a drawing of {n} {xs}", "a group of {n} {xs}", "an illustration with {n} {xs}",
              "{n} {xs} in total"),
    "position": ("a drawing of {a} {rel} {b}", "an illustration in which {a} sits {rel} {b}",
                 "{a} located {rel} {b}"),
})
_RELATION_WORDS_TRAIN = MappingProxyType({
    "left of": ("left of", "to the left of"), "right of": ("right of", "to the right of"),
    "above": ("above",), "below": ("below",),
})
_RELATION_WORDS_HELDOUT = MappingProxyType({
    "left of": ("on the left side of",), "right of": ("on the right side of",),
    "above": ("higher up than",), "below": ("lower down than",),
})

# Edit instruction templates: {the} names a source object ("the red circle"), {a} a new object,
# {color} a colour, {bg} a background, {dir} a direction phrase, {n} {color} {xs} a counted group.
_EDITS_TRAIN = MappingProxyType({
    "add": ("add {a}", "add {a} to the image", "put {a} in the picture", "insert {a}"),
    "remove": ("remove {the}", "delete {the}", "take away {the}", "get rid of {the}", "erase {the}"),
    "replace": ("replace {the} with {a}", "turn {the} into {a}", "swap {the} for {a}", "change {the} to {a}"),
    "alter": ("make {the} {color}", "change the colour of {the} to {color}", "paint {the} {color}",
              "recolour {the} {color}"),
    "move": ("move {the} {dir}", "shift {the} {dir}", "drag {the} {dir}"),
    "background": ("change the background to {bg}", "make the background {bg}", "use a {bg} background",
                   "replace the background with a {bg} one"),
    "resize_bigger": ("make {the} bigger", "enlarge {the}", "make {the} larger", "increase the size of {the}"),
    "resize_smaller": ("make {the} smaller", "shrink {the}", "reduce the size of {the}"),
    "count": ("make it {n} {color} {xs}", "change the number of {color} {pxs} to {n}",
              "there should be {n} {color} {xs}"),
})
_EDITS_HELDOUT = MappingProxyType({
    "add": ("include {a} as well", "draw {a} too", "could you add {a}"),
    "remove": ("make {the} disappear", "take {the} out of the picture", "remove {the} from the scene please"),
    "replace": ("substitute {a} for {the}", "make {the} become {a}"),
    "alter": ("give {the} a {color} colour", "change the color of {the} to {color}", "colour {the} in {color}"),
    "move": ("reposition {the} {dir}", "slide {the} {dir}"),
    "background": ("switch to a {bg} backdrop", "paint the backdrop {bg}"),
    "resize_bigger": ("scale up {the}", "blow up {the}"),
    "resize_smaller": ("scale down {the}", "make {the} tinier"),
    "count": ("I want exactly {n} {color} {xs}", "adjust the count of {color} {pxs} to {n}"),
})
_DIRECTION_WORDS_TRAIN = MappingProxyType({
    "left": ("to the left", "left"), "right": ("to the right", "right"), "up": ("up", "to the top"),
    "down": ("down", "to the bottom"),
})
_DIRECTION_WORDS_HELDOUT = MappingProxyType({
    "left": ("toward the left edge",), "right": ("toward the right edge",), "up": ("toward the top edge",),
    "down": ("toward the bottom edge",),
})


def _check_phrasings(phrasings: str) -> None:
    if phrasings not in PHRASINGS:
        raise ValueError(f"phrasings must be one of {', '.join(PHRASINGS)}, got {phrasings!r}")


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _template(form: str, rng: np.random.Generator, phrasings: str) -> str:
    _check_phrasings(phrasings)
    if phrasings == "canonical" or (phrasings == "train" and rng.random() < CANONICAL_SHARE):
        return _PROMPTS_TRAIN[form][0]
    return _pick(rng, (_PROMPTS_TRAIN if phrasings == "train" else _PROMPTS_HELDOUT)[form])


def with_article(phrase: str) -> str:
    """'a red circle', 'an orange star'."""
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def plural(noun: str) -> str:
    return noun + "s"  # every Shapes noun takes a plain -s


def noun_phrase(cls: str, color: str | None = None) -> str:
    return with_article(f"{color} {cls}" if color else cls)


# The words whose roles a prompt of each tag binds (position binds shapes to sides, color_attr colours to shapes),
# as one "a|an WORD" pattern per tag, compiled once: pools call role_swap for every prompt.
_ROLE_PATTERNS = MappingProxyType({tag: re.compile(r"\b(an?) (" + "|".join(words) + r")\b")
                                   for tag, words in (("position", SHAPES), ("color_attr", COLORS))})


def role_swap(prompt: str, tag: str) -> str | None:
    """The prompt's *twin*: its two role-bearing words exchanged, or None when ``tag`` binds no roles or the
    prompt does not name two different such words once each.

    position: the shapes trade places ('a star left of a square' -> 'a square left of a star': the mirrored
    layout); color_attr: the colours trade shapes ('a red circle and an orange star' -> 'an orange circle and a red
    star'). A twin has the same words as its prompt but describes another image, so telling the two apart is
    exactly the binding the tag measures (the flow stage's twin contrast, ``dreamlite.train.flow``).
    """
    pattern = _ROLE_PATTERNS.get(tag)
    if pattern is None:
        return None
    found = list(pattern.finditer(prompt))
    if len(found) != 2 or found[0].group(2) == found[1].group(2):
        return None
    first, second = found
    return (prompt[:first.start()] + with_article(second.group(2)) + prompt[first.end():second.start()]
            + with_article(first.group(2)) + prompt[second.end():])


def number_word(n: int) -> str:
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def prompt_one(cls: str, color: str | None, rng: np.random.Generator, phrasings: str) -> str:
    """single_object / colors: 'a photo of a red circle'."""
    return _template("one", rng, phrasings).format(a=noun_phrase(cls, color))


def prompt_two(a: tuple[str, str | None], b: tuple[str, str | None], rng: np.random.Generator,
               phrasings: str) -> str:
    """two_object / color_attr: 'a photo of a red circle and a blue star'."""
    return _template("two", rng, phrasings).format(a=noun_phrase(*a), b=noun_phrase(*b))


def prompt_count(cls: str, n: int, rng: np.random.Generator, phrasings: str) -> str:
    """counting: 'a photo of three hearts'."""
    return _template("count", rng, phrasings).format(n=number_word(n), xs=plural(cls))


def prompt_position(subject: str, relation: str, reference: str, rng: np.random.Generator,
                    phrasings: str) -> str:
    """position: 'a photo of a star left of a square' (subject first, as GenEval writes it)."""
    template = _template("position", rng, phrasings)
    if template == _PROMPTS_TRAIN["position"][0]:
        rel = relation  # the canonical prompt uses GenEval's own relation words
    else:
        rel = _pick(rng, (_RELATION_WORDS_HELDOUT if phrasings == "heldout" else _RELATION_WORDS_TRAIN)[relation])
    return template.format(a=noun_phrase(subject), rel=rel, b=noun_phrase(reference))


def edit_instruction(form: str, rng: np.random.Generator, phrasings: str, **slots: str) -> str:
    """An instruction of ``form`` (an edit type, or resize_bigger / resize_smaller) with its slots filled.
    ``canonical`` uses the first train template."""
    _check_phrasings(phrasings)
    table: Mapping[str, tuple[str, ...]] = _EDITS_HELDOUT if phrasings == "heldout" else _EDITS_TRAIN
    if form not in table:
        raise ValueError(f"unknown edit form {form!r}; known: {', '.join(table)}")
    template = table[form][0] if phrasings == "canonical" else _pick(rng, table[form])
    return template.format(**slots)


def direction_phrase(direction: str, rng: np.random.Generator, phrasings: str) -> str:
    table = _DIRECTION_WORDS_HELDOUT if phrasings == "heldout" else _DIRECTION_WORDS_TRAIN
    return table[direction][0] if phrasings == "canonical" else _pick(rng, table[direction])


def all_templates(phrasings: str) -> dict[str, tuple[str, ...]]:
    """Every template and word choice of one phrasing set, by form (for disjointness checks)."""
    if phrasings == "heldout":
        tables = (_PROMPTS_HELDOUT, _EDITS_HELDOUT, _RELATION_WORDS_HELDOUT, _DIRECTION_WORDS_HELDOUT)
    else:
        tables = (_PROMPTS_TRAIN, _EDITS_TRAIN, _RELATION_WORDS_TRAIN, _DIRECTION_WORDS_TRAIN)
    prefixes = ("prompt", "edit", "relation", "direction")
    return {f"{p}:{k}": tuple(v) for p, t in zip(prefixes, tables) for k, v in t.items()}
