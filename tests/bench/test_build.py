import json

import numpy as np
from PIL import Image

from dreamlite.bench import build, geneval, imgedit
from dreamlite.shapes.edits import EDIT_TYPES
from dreamlite.shapes.render import render_batch
from dreamlite.shapes.tasks import GENEVAL_BENCH_SEED, IMGEDIT_BENCH_SEED, RESERVED_SEED_START


def test_shipped_data_is_exactly_what_the_reserved_seeds_build():
    assert GENEVAL_BENCH_SEED >= RESERVED_SEED_START and IMGEDIT_BENCH_SEED >= RESERVED_SEED_START
    assert geneval.load_metadata(geneval.default_metadata_path()) == build.geneval_rows()
    cases = build.imgedit_cases()
    basic, targets = build.imgedit_files(cases)
    bench = imgedit.default_bench_path()
    assert json.loads(bench.read_text()) == basic
    assert json.loads((bench.parent / "targets.json").read_text()) == targets
    rendered = render_batch([c.source for c in cases], build.SOURCE_SIZE)
    for key, img in zip(basic, rendered):
        assert np.array_equal(np.asarray(Image.open(bench.parent / "images" / f"{key}.png").convert("RGB")), img)


def test_heldout_benchmarks_reword_every_prompt_and_score_their_ground_truth(tmp_path):
    # (that the held-out words and the train words are disjoint is tests/shapes' check on the language module)
    canonical = build.geneval_rows()
    rows, path = build.write_heldout(canonical, tmp_path / "bench", per_type=2)
    assert [{k: v for k, v in r.items() if k != "prompt"} for r in rows] == \
        [{k: v for k, v in r.items() if k != "prompt"} for r in canonical]
    assert all(r["prompt"] != c["prompt"] for r, c in zip(rows, canonical))
    assert rows == build.heldout_geneval_rows(canonical)  # the same words every run
    items = imgedit.load_bench(path)
    assert sorted(i.edit_type for i in items) == sorted(list(EDIT_TYPES) * 2)
    shipped = {i.prompt for i in imgedit.load_bench(imgedit.default_bench_path())}
    assert not {i.prompt for i in items} & shipped
    imgedit.write_ground_truth(items, tmp_path / "gt")
    summary = imgedit.run(items, tmp_path / "gt", images_dir=tmp_path / "gt")
    assert summary.success == 1.0 and summary.preservation > 0.99


def test_validation_split_is_another_draw_of_the_same_benchmarks(tmp_path):
    from dreamlite.shapes import tasks

    seeds = [tasks.GENEVAL_BENCH_SEED, tasks.IMGEDIT_BENCH_SEED, tasks.GENEVAL_HELDOUT_SEED,
             tasks.IMGEDIT_HELDOUT_SEED, tasks.GENEVAL_VAL_SEED, tasks.IMGEDIT_VAL_SEED]
    assert len(set(seeds)) == len(seeds) and min(seeds) >= RESERVED_SEED_START
    bench = build.geneval_rows()
    rows, path = build.write_validation(tmp_path / "val", per_type=2)
    assert [r["tag"] for r in rows] == [r["tag"] for r in bench]  # the same tags in the same turns
    # another draw: prompt texts recur (the world is small), rarely at the same place; the noise differs too
    # (tests/train/test_evaluate.py)
    assert sum(r == b for r, b in zip(rows, bench)) < 0.1 * len(rows)
    assert rows == build.write_validation(tmp_path / "again", per_type=2)[0]  # the same rows every run
    held, _ = build.write_validation(tmp_path / "held", "heldout", per_type=1)
    assert all(h["prompt"] != r["prompt"] for h, r in zip(held, rows))
    items = imgedit.load_bench(path)
    assert sorted(i.edit_type for i in items) == sorted(list(EDIT_TYPES) * 2)
    imgedit.write_ground_truth(items, tmp_path / "gt")
    summary = imgedit.run(items, tmp_path / "gt", images_dir=tmp_path / "gt")
    assert summary.success == 1.0 and summary.preservation > 0.99
    g = geneval.run(rows[:60], tmp_path / "gen", generate_fn=geneval.ground_truth_fn(rows[:60]), samples_per_prompt=1)
    assert g.overall == 1.0  # every validation prompt is drawable and scored by the same rules
