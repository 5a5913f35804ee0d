import json

import numpy as np
import pytest
from PIL import Image

from dreamlite.bench import geneval
from dreamlite.shapes.detect import Detection
from dreamlite.shapes.geometry import relative_position
from dreamlite.shapes.render import render_batch
from dreamlite.shapes.scene import COLORS, Scene, ShapeObject
from dreamlite.shapes.spec import TAGS, PromptSpec, scene_for_spec

ROWS = geneval.load_metadata(geneval.default_metadata_path())


def _det(cls, color, box, score=0.9):
    return Detection(cls, color, tuple(float(v) for v in box), score)


def _spec(include, exclude=(), tag="t"):
    return PromptSpec.from_dict({"tag": tag, "include": list(include), "exclude": list(exclude), "prompt": "p"})


def test_shipped_benchmark_has_100_prompts_per_tag_in_canonical_phrasing():
    assert len(ROWS) == 600
    tags = [r["tag"] for r in ROWS]
    assert {t: tags.count(t) for t in set(tags)} == {t: 100 for t in TAGS}
    assert all(r["prompt"].startswith("a photo of ") for r in ROWS)


def test_relative_position_follows_genevals_rule():
    left, right = np.array([0, 0, 10, 10]), np.array([30, 2, 40, 12])
    assert relative_position(left, right) == {"left of"}
    assert relative_position(right, left) == {"right of"}
    # offsets within 10% of the summed dims count as no offset at all
    assert relative_position(np.array([0, 0, 10, 10]), np.array([1, 1.5, 11, 11.5])) == set()
    # a diagonal offset is both left of and above
    assert relative_position(np.array([0, 0, 10, 10]), np.array([40, 40, 50, 50])) == {"left of", "above"}
    # mostly below, slightly right: dx is small after the 10% shrink, so only "below"
    assert relative_position(np.array([12, 40, 22, 50]), np.array([10, 0, 20, 10])) == {"below"}


def test_include_and_exclude_and_colour_rules():
    star, circle = _det("star", "red", (5, 5, 15, 15)), _det("circle", "blue", (30, 30, 40, 40), 0.8)
    ok, reason = geneval.evaluate(_spec([{"class": "star", "count": 1}, {"class": "circle", "count": 1}]),
                                  [star, circle])
    assert ok and reason == ""
    ok, reason = geneval.evaluate(_spec([{"class": "star", "count": 1}, {"class": "heart", "count": 1}]), [star])
    assert not ok and "expected heart>=1, found 0" in reason
    three = [_det("star", "red", (10 * i, 0, 10 * i + 8, 8)) for i in range(3)]
    counting = _spec([{"class": "star", "count": 2}], [{"class": "star", "count": 3}])
    assert not geneval.evaluate(counting, three)[0]
    assert geneval.evaluate(counting, three[:2])[0]
    # only the first `count` detections by score are checked for colour
    blue_first = [_det("circle", "blue", (0, 0, 9, 9), 0.95), _det("circle", "red", (20, 0, 29, 9), 0.7)]
    ok, reason = geneval.evaluate(_spec([{"class": "circle", "count": 1, "color": "red"}]), blue_first)
    assert not ok and "expected red circle>=1, found 0 red" in reason
    assert geneval.evaluate(_spec([{"class": "circle", "count": 1, "color": "blue"}]), blue_first)[0]


def test_position_is_checked_against_every_object_of_the_group():
    spec = _spec([{"class": "square", "count": 2}, {"class": "star", "count": 1, "position": ["left of", 0]}])
    squares = [_det("square", "red", (40, 0, 50, 10)), _det("square", "red", (40, 30, 50, 40))]
    assert geneval.evaluate(spec, squares + [_det("star", "red", (0, 15, 10, 25))])[0]
    ok, reason = geneval.evaluate(spec, squares + [_det("star", "red", (45, 60, 55, 70))])
    assert not ok and "expected star left of target" in reason
    # a failed reference clause leaves no target
    ok, reason = geneval.evaluate(spec, squares[:1] + [_det("star", "red", (0, 15, 10, 25))])
    assert not ok and "no target for star to be left of" in reason


def test_partial_score_is_one_exactly_when_correct():
    spec = _spec([{"class": "circle", "count": 1, "color": "red"}, {"class": "star", "count": 1, "color": "blue"}])
    red_circle, blue_star = _det("circle", "red", (0, 0, 9, 9)), _det("star", "blue", (20, 0, 29, 9))
    assert geneval.partial_score(spec, [red_circle, blue_star]) == 1.0
    assert geneval.partial_score(spec, [red_circle]) == 0.5
    assert geneval.partial_score(spec, [_det("circle", "green", (0, 0, 9, 9))]) == 0.0


def _run_images(tmp_path, rows, images):
    """Score given images (one per row) through the GenEval layout."""
    it = iter(images)
    return geneval.run(rows, tmp_path, generate_fn=lambda prompts, seeds: [next(it) for _ in prompts],
                       samples_per_prompt=1)


def test_ground_truth_scores_one_and_writes_genevals_layout(tmp_path):
    rows = ROWS[:24]
    summary = geneval.run(rows, tmp_path, generate_fn=geneval.ground_truth_fn(rows), samples_per_prompt=2)
    assert summary.overall == 1.0 and sum(t.total for t in summary.tags) == 48
    assert summary.format().splitlines()[-1] == "Overall score (avg. over tasks): 1.00000"
    assert json.loads((tmp_path / "00003" / "metadata.jsonl").read_text()) == rows[3]
    assert Image.open(tmp_path / "00003" / "samples" / "0001.png").size == (64, 64)
    lines = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(lines) == 48 and all(r["correct"] is True for r in lines)
    assert set(lines[0]) >= {"filename", "tag", "prompt", "correct", "reason", "metadata", "details"}
    assert json.loads(lines[5]["metadata"]) == rows[2] and isinstance(json.loads(lines[5]["details"]), list)


def test_blank_and_noise_images_score_zero(tmp_path):
    rows = ROWS[:60]
    rng = np.random.default_rng(0)
    blank = _run_images(tmp_path / "b", rows, [Image.new("RGB", (64, 64), (128, 128, 128))] * 60)
    noise = _run_images(tmp_path / "n", rows, [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
                                                 for _ in range(60)])
    assert blank.overall == 0.0 and noise.overall == 0.0


def test_permuted_colours_fail_colour_tags_and_mirrors_fail_left_right(tmp_path):
    rng = np.random.default_rng(1)
    shift = {c: COLORS[(i + 1) % len(COLORS)] for i, c in enumerate(COLORS)}  # every colour changes
    colour_rows = [r for r in ROWS if r["tag"] in ("colors", "color_attr")][:40]
    scenes = [scene_for_spec(rng, PromptSpec.from_dict(r)) for r in colour_rows]
    permuted = [Scene(s.background, tuple(ShapeObject(o.shape, shift[o.color], o.size, o.x, o.y) for o in s.objects))
                for s in scenes]
    right = _run_images(tmp_path / "c0", colour_rows, [Image.fromarray(a) for a in render_batch(scenes)])
    wrong = _run_images(tmp_path / "c1", colour_rows, [Image.fromarray(a) for a in render_batch(permuted)])
    assert right.overall == 1.0 and wrong.overall == 0.0

    lr_rows = [r for r in ROWS if r["tag"] == "position" and r["include"][1]["position"][0] in ("left of",
                                                                                               "right of")][:30]
    scenes = [scene_for_spec(rng, PromptSpec.from_dict(r)) for r in lr_rows]
    imgs = render_batch(scenes)
    assert _run_images(tmp_path / "p0", lr_rows, [Image.fromarray(a) for a in imgs]).overall == 1.0
    mirrored = _run_images(tmp_path / "p1", lr_rows, [Image.fromarray(np.ascontiguousarray(a[:, ::-1])) for a in imgs])
    assert mirrored.overall == 0.0


def test_missing_corrupt_and_wrongly_sized_images_fail_but_the_run_completes(tmp_path):
    rows = ROWS[:4]
    geneval.generate(rows, tmp_path, geneval.ground_truth_fn(rows), samples_per_prompt=1)
    (tmp_path / "00000" / "samples" / "0000.png").unlink()
    (tmp_path / "00001" / "samples" / "0000.png").write_bytes(b"not a png")
    Image.new("RGB", (128, 64)).save(tmp_path / "00002" / "samples" / "0000.png")
    results = geneval.score_layout(tmp_path)
    assert [r.correct for r in results] == [False, False, False, True]
    assert "missing image" in results[0].reason and "unreadable image" in results[1].reason
    assert "wrongly sized image 128x64" in results[2].reason


def test_malformed_metadata_names_the_line(tmp_path):
    path = tmp_path / "meta.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"meta.jsonl:2: not valid JSON"):
        geneval.load_metadata(path)
    path.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps({"tag": "x", "prompt": "p", "include": [{"count": 1}]}))
    with pytest.raises(ValueError, match=r"meta.jsonl:2: include\[0\]: clause needs a 'class'"):
        geneval.load_metadata(path)


def test_unknown_classes_are_unscorable_not_failures(tmp_path):
    rows = [{"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"},
            ROWS[0]]
    summary = geneval.run(rows, tmp_path, generate_fn=geneval.ground_truth_fn(rows), samples_per_prompt=2)
    assert summary.unscorable == 2 and summary.overall == 1.0
    assert "unscorable: 2 images" in summary.format() and "'bench'" in summary.format()
    lines = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert lines[0]["correct"] is None and lines[0]["reason"].startswith("unscorable")
    only = geneval.run(rows[:1], tmp_path / "o", generate_fn=geneval.ground_truth_fn(rows), samples_per_prompt=1)
    assert only.format().endswith("Overall score (avg. over tasks): n/a (nothing scorable)")
