import numpy as np
import pytest

from dreamlite.cli import main
from dreamlite.data.shapes_shards import EditSample, T2ISample, load_folder, load_shards, write_shapes
from dreamlite.shapes.render import render


def test_shards_round_trip_and_stream_in_order(tmp_path):
    report = write_shapes(tmp_path, 30, "both", size=32, seed=5, shard_size=12)
    names = sorted(p.name for p in report.paths)
    assert names == [f"{t}-{i:06d}.tar" for t in ("edit", "t2i") for i in range(3)] and report.samples == 60
    t2i = list(load_shards(str(tmp_path / "t2i-*.tar")))
    assert [s.key for s in t2i] == [f"t2i-{i:09d}" for i in range(30)]
    assert all(isinstance(s, T2ISample) and s.image.shape == (32, 32, 3) for s in t2i)
    assert np.array_equal(t2i[7].image, render(t2i[7].scene, 32)) and t2i[7].metadata["prompt"] == t2i[7].prompt
    edits = list(load_shards(str(tmp_path / "edit-{000000..000002}.tar")))
    assert len(edits) == 30 and all(isinstance(e, EditSample) for e in edits)
    assert np.array_equal(edits[3].target, render(edits[3].target_scene, 32))
    assert not list(tmp_path.glob(".shapes-*")), "temporary folder left behind"


def test_same_seed_same_data_and_folder_format(tmp_path):
    write_shapes(tmp_path / "a", 10, "t2i", seed=9, fmt="folder")
    write_shapes(tmp_path / "b", 10, "t2i", seed=9, fmt="folder")
    a, b = list(load_folder(tmp_path / "a" / "t2i")), list(load_folder(tmp_path / "b" / "t2i"))
    assert [s.prompt for s in a] == [s.prompt for s in b]
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b))
    write_shapes(tmp_path / "c", 6, "edit", fmt="folder")
    edits = list(load_folder(tmp_path / "c" / "edit"))
    assert len(edits) == 6 and np.array_equal(edits[0].source, render(edits[0].source_scene, 64))


def test_refuses_benchmark_seeds_and_occupied_folders(tmp_path):
    with pytest.raises(ValueError, match="reserved for benchmarks"):
        write_shapes(tmp_path, 5, "t2i", seed=1_000_000_001)
    write_shapes(tmp_path, 3, "t2i")
    with pytest.raises(ValueError, match="already holds"):
        write_shapes(tmp_path, 3, "t2i")


def test_cli_data_shapes(tmp_path, capsys):
    assert main(["data", "shapes", "--out", str(tmp_path), "--n", "5", "--task", "edit", "--size", "48"]) == 0
    assert "wrote 5 samples" in capsys.readouterr().out
    assert len(list(load_shards(str(tmp_path / "edit-*.tar")))) == 5
    assert main(["data", "shapes", "--out", str(tmp_path / "x"), "--n", "0"]) == 2
    assert "--n must be >= 1" in capsys.readouterr().err
