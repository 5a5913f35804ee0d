import numpy as np
import pytest

from dreamlite.shapes.edits import EDIT_TYPES
from dreamlite.shapes.render import render_batch
from dreamlite.shapes.spec import TAGS
from dreamlite.shapes.tasks import (RESERVED_SEED_START, check_training_seed, sample_edit, sample_edit_cases,
                                    sample_t2i, sample_t2i_prompts)


def test_sample_t2i_is_seeded_and_covers_all_tags():
    a = sample_t2i(np.random.default_rng(0), 120)
    b = sample_t2i(np.random.default_rng(0), 120)
    assert a.images.shape == (120, 64, 64, 3) and a.images.dtype == np.uint8
    assert np.array_equal(a.images, b.images) and a.prompts == b.prompts
    assert {m["tag"] for m in a.metadata} == set(TAGS)
    assert all(m["prompt"] == p for m, p in zip(a.metadata, a.prompts))
    assert np.array_equal(render_batch(a.scenes[:5], 64), a.images[:5])
    c = sample_t2i(np.random.default_rng(1), 8, size=32)
    assert c.images.shape == (8, 32, 32, 3)


def test_tag_weights_and_their_errors():
    batch = sample_t2i(np.random.default_rng(0), 30, tag_weights={"position": 1.0})
    assert {m["tag"] for m in batch.metadata} == {"position"}
    with pytest.raises(ValueError, match="unknown tag"):
        sample_t2i(np.random.default_rng(0), 3, tag_weights={"posture": 1.0})
    with pytest.raises(ValueError, match="positive sum"):
        sample_t2i(np.random.default_rng(0), 3, tag_weights={"position": 0.0})


def test_prompt_only_sampling_for_rl():
    pairs = sample_t2i_prompts(np.random.default_rng(2), 50, phrasings="heldout")
    assert len(pairs) == 50 and all(isinstance(p, str) and m["prompt"] == p for p, m in pairs)
    assert not any(p.startswith("a photo of") for p, _ in pairs)


def test_sample_edit_batches():
    batch = sample_edit(np.random.default_rng(0), 64)
    assert batch.sources.shape == batch.targets.shape == (64, 64, 64, 3)
    assert set(batch.edit_types) == set(EDIT_TYPES)
    assert all(not np.array_equal(s, t) for s, t in zip(batch.sources, batch.targets))
    again = sample_edit(np.random.default_rng(0), 64)
    assert np.array_equal(batch.targets, again.targets) and batch.instructions == again.instructions
    cases = sample_edit_cases(np.random.default_rng(1), 10, type_weights={"move": 1, "count": 1})
    assert {c.edit_type for c in cases} <= {"move", "count"}
    assert np.array_equal(cases[0].source_image, render_batch([cases[0].source_scene], 64)[0])


def test_training_seeds_stay_out_of_the_benchmark_range():
    assert check_training_seed(123) == 123
    for bad in (RESERVED_SEED_START, RESERVED_SEED_START + 1, -1):
        with pytest.raises(ValueError, match="reserved for benchmarks|outside"):
            check_training_seed(bad)
