"""``evaluate_pipeline``'s splits: the validation split samples other rows and edits from other starting noise, so
no (prompt, seed) pair of it is one of the benchmark's."""

from __future__ import annotations

from PIL import Image

import dreamlite.train.evaluate as evaluate
from dreamlite.shapes.tasks import VAL_NOISE_SEED


def _recording_fns(calls):
    def generate_fn(prompts, seeds):
        calls["geneval"] += list(zip(prompts, seeds))
        return [Image.new("RGB", (64, 64), "white") for _ in prompts]

    def edit_fn(images, instructions, seeds):
        calls["imgedit"] += list(zip(instructions, seeds))
        return [im.copy() for im in images]

    return generate_fn, edit_fn


def test_validation_split_uses_its_own_rows_edits_and_noise(tmp_path, monkeypatch):
    calls = {"test": {"geneval": [], "imgedit": []}, "val": {"geneval": [], "imgedit": []}}
    for split in calls:
        monkeypatch.setattr(evaluate, "model_fns", lambda pipe, c=calls[split], **kw: _recording_fns(c))
        scores = evaluate.evaluate_pipeline(None, tmp_path / split, None, None, split=split)
        assert scores["geneval"] == 0.0 and scores["imgedit_preservation"] > 0.99  # blank images, sources kept
    test, val = calls["test"], calls["val"]
    assert len(val["geneval"]) == len(test["geneval"]) == 600 and len(val["imgedit"]) == len(test["imgedit"]) == 240
    assert [s for _, s in test["geneval"]] == list(range(600))
    assert [s for _, s in val["geneval"]] == list(range(VAL_NOISE_SEED, VAL_NOISE_SEED + 600))
    assert not set(val["geneval"]) & set(test["geneval"]) and not set(val["imgedit"]) & set(test["imgedit"])
    assert {p for p, _ in val["geneval"]} & {p for p, _ in test["geneval"]}  # the small world repeats prompt texts
