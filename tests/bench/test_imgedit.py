import json

import numpy as np
import pytest
from PIL import Image

from dreamlite.bench import imgedit
from dreamlite.shapes.edits import EDIT_TYPES
from dreamlite.shapes.render import render
from dreamlite.shapes.scene import Scene, ShapeObject

ITEMS = imgedit.load_bench(imgedit.default_bench_path())
ONE_PER_TYPE = [next(i for i in ITEMS if i.edit_type == t) for t in EDIT_TYPES]


def test_shipped_bench_follows_imgedits_schema():
    raw = json.loads(imgedit.default_bench_path().read_text())
    assert len(raw) == 240
    for key, entry in raw.items():
        assert set(entry) == {"id", "prompt", "edit_type"} and entry["id"] == f"{key}.png"
    assert {i.edit_type for i in ITEMS} == set(EDIT_TYPES)
    assert all(i.source_path.is_file() and i.target_scene is not None for i in ITEMS)
    src = ITEMS[0]
    assert np.array_equal(np.asarray(Image.open(src.source_path).convert("RGB")), render(src.source_scene, 64))


@pytest.mark.parametrize("item", ONE_PER_TYPE, ids=EDIT_TYPES)
def test_target_succeeds_and_untouched_source_fails(item):
    good = imgedit.score_edit(render(item.target_scene, 64), item.source_scene, item.target_scene, item.edit_type)
    assert good.success and good.preservation == 1.0 and good.score_1_5 == 5.0 and good.reason == ""
    same = imgedit.score_edit(render(item.source_scene, 64), item.source_scene, item.target_scene, item.edit_type)
    assert not same.success and same.score_1_5 == 1.0 + same.preservation <= 2.0 and same.reason


def test_preservation_drops_when_an_unnamed_object_is_lost():
    src = Scene("gray", (ShapeObject("circle", "red", "medium", 0.25, 0.25), ShapeObject("star", "blue", "medium",
                                                                                            0.75, 0.75)))
    tgt = Scene("gray", (src.objects[0], ShapeObject("star", "yellow", "medium", 0.75, 0.75)))
    sloppy = Scene("gray", (tgt.objects[1],))  # recoloured the star but dropped the circle
    score = imgedit.score_edit(render(sloppy, 64), src, tgt, "alter")
    assert not score.success  # one object too few
    assert score.preservation == 0.5 and "unnamed red circle" in score.reason
    moved_bg = imgedit.score_edit(render(Scene("navy", tgt.objects), 64), src, tgt, "alter")
    assert moved_bg.success and moved_bg.preservation == 0.5 and moved_bg.score_1_5 == 4.0


def test_blank_and_unreadable_outputs_fail():
    item = ONE_PER_TYPE[0]
    blank = imgedit.score_edit(np.full((64, 64, 3), 128, np.uint8), item.source_scene, item.target_scene, "add")
    assert not blank.success
    tiny = imgedit.score_edit(Image.new("RGB", (16, 16)), item.source_scene, item.target_scene, "add")
    assert not tiny.success and tiny.score_1_5 == 1.0 and "wrongly sized" in tiny.reason


def test_run_writes_results_and_summary(tmp_path):
    items = ITEMS[:16]
    imgedit.write_ground_truth(items, tmp_path)
    (tmp_path / f"{items[0].key}.png").unlink()
    (tmp_path / f"{items[1].key}.png").write_bytes(b"junk")
    Image.new("RGB", (64, 128)).save(tmp_path / f"{items[2].key}.png")
    summary = imgedit.run(items, tmp_path, images_dir=tmp_path)
    rows = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["success"] for r in rows] == [False] * 3 + [True] * 13
    assert "missing image" in rows[0]["reason"] and "unreadable" in rows[1]["reason"]
    assert "wrongly sized" in rows[2]["reason"]
    assert summary.format().splitlines()[-1].startswith("Overall: success ")
    assert summary.success == pytest.approx(np.mean([t.success for t in summary.types]))


def test_edit_fn_path_and_bad_bench_files(tmp_path):
    items = ITEMS[:4]
    seen = []

    def identity(images, instructions, seeds):
        seen.extend(seeds)
        return images

    summary = imgedit.run(items, tmp_path, edit_fn=identity, seed=10)
    assert seen == [10, 11, 12, 13] and summary.success == 0.0
    bad = tmp_path / "b" / "basic_edit.json"
    bad.parent.mkdir()
    bad.write_text('{"1": {"id": "1.png", "prompt": "x"}}')
    with pytest.raises(ValueError, match="entry '1' needs"):
        imgedit.load_bench(bad)
    bad.write_text("{oops")
    with pytest.raises(ValueError, match="basic_edit.json:1: not valid JSON"):
        imgedit.load_bench(bad)
