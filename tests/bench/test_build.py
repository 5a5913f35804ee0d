import json

import numpy as np
from PIL import Image

from dreamlite.bench import build, geneval, imgedit
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
