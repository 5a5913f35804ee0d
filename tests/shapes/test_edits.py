import re
from collections import Counter

import numpy as np
import pytest

from dreamlite.shapes import language
from dreamlite.shapes.edits import EDIT_TYPES, MOVE_FROM, MOVE_TO, sample_edit_case
from dreamlite.shapes.scene import BACKGROUNDS, COLORS, SIZE_NAMES


def _cases(edit_type, n=25, phrasings="train", seed=0):
    rng = np.random.default_rng(seed)
    return [sample_edit_case(rng, edit_type, phrasings) for _ in range(n)]


def _changed(case):
    src, tgt = list(case.source.objects), list(case.target.objects)
    kept = [o for o in src if o in tgt]
    return [o for o in src if o not in kept], [o for o in tgt if o not in kept]


@pytest.mark.parametrize("edit_type", EDIT_TYPES)
def test_every_case_is_valid_and_changes_something(edit_type):
    for case in _cases(edit_type):
        case.source.validate()
        case.target.validate()
        assert case.edit_type == edit_type and case.source != case.target and case.instruction
        if edit_type != "count":  # referring expressions need unique (shape, colour) pairs
            pairs = [(o.shape, o.color) for o in case.source.objects]
            assert len(pairs) == len(set(pairs))


def test_single_object_edits_change_exactly_what_they_say():
    for case in _cases("add"):
        gone, new = _changed(case)
        assert gone == [] and len(new) == 1 and new[0].color in case.instruction and new[0].shape in case.instruction
    for case in _cases("remove"):
        gone, new = _changed(case)
        assert len(gone) == 1 and new == [] and gone[0].shape in case.instruction
    for case in _cases("replace"):
        (old,), (new,) = _changed(case)
        assert (old.color, old.size, old.x, old.y) == (new.color, new.size, new.x, new.y) and old.shape != new.shape
    for case in _cases("alter"):
        (old,), (new,) = _changed(case)
        assert (old.shape, old.size, old.x, old.y) == (new.shape, new.size, new.x, new.y)
        assert new.color in case.instruction and old.color != new.color
    for case in _cases("resize"):
        (old,), (new,) = _changed(case)
        step = SIZE_NAMES.index(new.size) - SIZE_NAMES.index(old.size)
        assert abs(step) == 1 and (old.x, old.y) == (new.x, new.y)
    for case in _cases("background"):
        assert case.source.objects == case.target.objects and case.source.background != case.target.background
        assert case.target.background in case.instruction


def test_moves_cross_the_image_along_one_axis():
    for case in _cases("move", 40):
        (old,), (new,) = _changed(case)
        if old.y == new.y:
            assert (old.x >= MOVE_FROM and new.x <= MOVE_TO) or (1 - old.x >= MOVE_FROM and 1 - new.x <= MOVE_TO)
        else:
            assert old.x == new.x
            assert (old.y >= MOVE_FROM and new.y <= MOVE_TO) or (1 - old.y >= MOVE_FROM and 1 - new.y <= MOVE_TO)


def test_count_edits_change_one_group_and_keep_the_rest():
    for case in _cases("count", 40):
        src = Counter((o.shape, o.color) for o in case.source.objects)
        tgt = Counter((o.shape, o.color) for o in case.target.objects)
        diff = {k for k in src | tgt if src[k] != tgt[k]}
        assert len(diff) == 1
        (shape, color), = diff
        assert 1 <= tgt[(shape, color)] <= 4 and language.number_word(tgt[(shape, color)]) in case.instruction
        others = [o for o in case.source.objects if (o.shape, o.color) != (shape, color)]
        assert all(o in case.target.objects for o in others)


def _train_patterns():
    """Each train edit template as a regex, with slots limited to the words train data can put there."""
    tables = language.all_templates("train")
    words = {"color": "|".join(COLORS), "bg": "|".join(BACKGROUNDS), "n": "|".join(language.NUMBER_WORDS),
             "dir": "|".join(w for k, ws in tables.items() if k.startswith("direction:") for w in ws)}
    slots = {"the": r"the (?:\w+ )?\w+", "a": r"an? (?:\w+ )?\w+", "xs": r"\w+", "pxs": r"\w+",
             **{k: f"(?:{v})" for k, v in words.items()}}
    out = []
    for form, templates in tables.items():
        if form.startswith("edit:"):
            for t in templates:
                out.append(re.compile(re.sub(r"\\\{(\w+)\\\}", lambda m: slots[m.group(1)], re.escape(t))))
    return out


def test_heldout_instructions_use_heldout_words_only():
    train = _train_patterns()
    for edit_type in EDIT_TYPES:
        heldout = {c.instruction for c in _cases(edit_type, 20, "heldout", seed=3)}
        trained = {c.instruction for c in _cases(edit_type, 60, "train", seed=4)}
        assert not heldout & trained
        assert all(any(t.fullmatch(i) for t in train) for i in trained)
        assert not [i for i in heldout if any(t.fullmatch(i) for t in train)]
