"""Real-data sources: WebDataset shards, a folder with metadata.jsonl, a saved Hugging Face dataset.

Every fixture image is a solid colour, so one pixel tells which image a sample holds (and whether a triplet's
source and target were swapped).
"""

import io
import json
import warnings

import pytest
import torch
from PIL import Image

from dreamlite.data.sources import (
    DataConfig, DataSourceConfig, FolderSource, HFSource, ShardSource, SkipLog, open_source,
)
from dreamlite.imageio import ImageError
from real_data_fixtures import (
    PAIRS, TRIPLETS, png, write_folder_pairs, write_folder_triplets, write_hf_pairs, write_hf_triplets,
    write_wds_pairs, write_wds_triplets,
)


def _colour(ref) -> tuple[int, int, int]:
    im = ref.load()
    assert im.mode == "RGB"
    return im.getpixel((im.size[0] // 2, im.size[1] // 2))


def _check_pairs(samples, sizes, pairs=PAIRS):
    assert [s.text for s in samples] == [p.caption for p in pairs]
    assert [_colour(s.target) for s in samples] == [p.colour for p in pairs]
    assert [tuple(int(v) for v in sz) for sz in sizes] == [p.size for p in pairs]
    assert all(s.source is None for s in samples)


def _check_triplets(samples, sizes, triplets=TRIPLETS):
    assert [s.text for s in samples] == [t.instruction for t in triplets]
    assert [_colour(s.target) for s in samples] == [t.target for t in triplets]
    assert [_colour(s.source) for s in samples] == [t.source for t in triplets]
    assert [tuple(int(v) for v in sz) for sz in sizes] == [t.size for t in triplets]


def _indexed(src):
    return [src.get(i) for i in range(len(src))], src.sizes.tolist()


def _streamed(src: ShardSource):
    items = list(src.samples(src.urls))
    return [s for s, _ in items], [size for _, size in items]


# ------------------------------------------------------------------------------------------------ each kind
def test_folder_pairs_and_triplets(tmp_path):
    pairs = open_source(DataSourceConfig("folder", "t2i", str(write_folder_pairs(tmp_path / "pairs"))))
    assert isinstance(pairs, FolderSource) and len(pairs) == len(PAIRS)
    assert pairs.sizes.dtype == torch.long and pairs.config.name == "pairs"
    _check_pairs(*_indexed(pairs))
    trip = open_source(DataSourceConfig("folder", "edit", str(write_folder_triplets(tmp_path / "trip"))))
    _check_triplets(*_indexed(trip))
    assert trip.skips.count == 0 and pairs.skips.count == 0


def test_webdataset_pairs_and_triplets(tmp_path):
    pairs = open_source(DataSourceConfig("webdataset", "t2i", str(write_wds_pairs(tmp_path / "p" / "00.tar"))))
    assert isinstance(pairs, ShardSource)
    _check_pairs(*_streamed(pairs))
    trip = open_source(DataSourceConfig("webdataset", "edit", str(write_wds_triplets(tmp_path / "t" / "00.tar"))))
    _check_triplets(*_streamed(trip))
    assert pairs.skips.count == 0 and trip.skips.count == 0


def test_webdataset_shard_patterns_and_alternative_keys(tmp_path):
    # Two shards, a brace pattern, a glob and "::" lists all resolve to both, in order.
    write_wds_pairs(tmp_path / "s" / "00.tar", PAIRS[:2], image_key="jpg", text_key="caption")
    write_wds_pairs(tmp_path / "s" / "01.tar", PAIRS[2:], image_key="webp", text_key="caption")
    for path in (f"{tmp_path}/s/{{00..01}}.tar", f"{tmp_path}/s/*.tar", f"{tmp_path}/s/00.tar::{tmp_path}/s/01.tar"):
        src = ShardSource(DataSourceConfig("webdataset", "t2i", path, text_key="caption"))
        assert [u.rsplit("/", 1)[-1] for u in src.urls] == ["00.tar", "01.tar"]
        _check_pairs(*_streamed(src))  # "jpg" and "webp" both match the default image key list
    assert src.shards_for(0, 2) == [src.urls[0]] and src.shards_for(1, 2) == [src.urls[1]]
    assert src.shards_for(2, 3) == src.urls  # fewer shards than ranks: every rank reads all
    with pytest.raises(FileNotFoundError, match="no shards match"):
        ShardSource(DataSourceConfig("webdataset", "t2i", f"{tmp_path}/s/*.nothing"))
    with pytest.raises(FileNotFoundError, match="not found.*02.tar"):
        ShardSource(DataSourceConfig("webdataset", "t2i", f"{tmp_path}/s/{{00..02}}.tar"))


def test_hf_pairs_and_triplets(tmp_path):
    # Pairs: a Dataset with an Image feature; triplets: a DatasetDict with raw bytes columns.
    pairs = open_source(DataSourceConfig("hf", "t2i", str(write_hf_pairs(tmp_path / "pairs"))))
    assert isinstance(pairs, HFSource)
    _check_pairs(*_indexed(pairs))
    trip = open_source(DataSourceConfig("hf", "edit", str(write_hf_triplets(tmp_path / "trip"))))
    _check_triplets(*_indexed(trip))


def test_hf_custom_columns_splits_and_path_images(tmp_path):
    import datasets

    (tmp_path / "img").mkdir()
    for i, p in enumerate(PAIRS[:2]):
        (tmp_path / "img" / f"{i}.png").write_bytes(png(p.size, p.colour))
    folder = tmp_path / "ds"
    train = datasets.Dataset.from_dict({"pic": [str(tmp_path / "img" / "0.png"), "../img/1.png"],
                                        "text": [PAIRS[0].caption, PAIRS[1].caption]})
    val = datasets.Dataset.from_dict({"pic": [str(tmp_path / "img" / "1.png")], "text": ["held out"]})
    datasets.DatasetDict({"train": train, "validation": val}).save_to_disk(str(folder))
    src = HFSource(DataSourceConfig("hf", "t2i", str(folder), image_key="pic", text_key="text"))
    _check_pairs(*_indexed(src), pairs=PAIRS[:2])  # relative paths are taken relative to the dataset folder
    held = HFSource(DataSourceConfig("hf", "t2i", str(folder), image_key="pic", text_key="text", split="validation"))
    assert held.get(0).text == "held out" and _colour(held.get(0).target) == PAIRS[1].colour
    with pytest.raises(ValueError, match=r"no split 'test'; splits: \['train', 'validation'\]"):
        HFSource(DataSourceConfig("hf", "t2i", str(folder), image_key="pic", text_key="text", split="test"))


# ------------------------------------------------------------------------------------------------ bad metadata
@pytest.mark.parametrize("bad, match", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object, got list"),
    ('{"image": "0.png"}', r"field 'caption' must be a string, got None \(fields present: \['image'\]\)"),
    ('{"image": "0.png", "caption": 7}', "field 'caption' must be a string, got 7"),
    ('{"image": null, "caption": "x"}', "field 'image' must be a string"),
])
def test_malformed_metadata_line_names_file_and_line(tmp_path, bad, match):
    root = write_folder_pairs(tmp_path / "pairs")
    meta = root / "metadata.jsonl"
    lines = meta.read_text().splitlines()
    lines[1:1] = ["", bad]  # a blank line 2 is fine; the bad row is line 3
    meta.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"{meta}:3: {match}"):
        FolderSource(DataSourceConfig("folder", "t2i", str(root)))


def test_triplet_metadata_needs_source_target_and_instruction(tmp_path):
    root = write_folder_triplets(tmp_path / "trip")
    meta = root / "metadata.jsonl"
    rows = [json.loads(line) for line in meta.read_text().splitlines()]
    del rows[1]["source"]
    meta.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=rf"{meta}:2: field 'source' must be a string"):
        FolderSource(DataSourceConfig("folder", "edit", str(root)))
    with pytest.raises(FileNotFoundError, match="no metadata.jsonl"):
        FolderSource(DataSourceConfig("folder", "edit", str(tmp_path)))


def test_missing_hf_column_lists_the_columns(tmp_path):
    path = str(write_hf_pairs(tmp_path / "pairs"))
    with pytest.raises(ValueError, match=r"missing column\(s\) \['text'\]; columns: \['image', 'caption'\]"):
        HFSource(DataSourceConfig("hf", "t2i", path, text_key="text"))
    with pytest.raises(ValueError, match=r"missing column\(s\) \['target', 'source'\]"):
        HFSource(DataSourceConfig("hf", "edit", path, text_key="caption"))
    with pytest.raises(FileNotFoundError, match="no saved dataset folder"):
        HFSource(DataSourceConfig("hf", "t2i", str(tmp_path / "absent")))


# ------------------------------------------------------------------------------------------------ bad images
def _skip_messages(record) -> list[str]:
    return [str(w.message) for w in record if "skipped" in str(w.message)]


def test_folder_skips_missing_and_corrupt_images(tmp_path):
    root = write_folder_pairs(tmp_path / "pairs")
    (root / "1.png").write_bytes(b"not an image at all")
    (root / "3.png").unlink()
    with pytest.warns(UserWarning) as record:
        src = FolderSource(DataSourceConfig("folder", "t2i", str(root)))
    msgs = _skip_messages(record)
    assert len(msgs) == 2 and src.skips.count == 2
    assert "1.png" in msgs[0] and "not a readable image" in msgs[0] and "(1 skipped so far)" in msgs[0]
    assert "image not found" in msgs[1] and "3.png" in msgs[1] and "(2 skipped so far)" in msgs[1]
    assert "source 'pairs'" in msgs[0]
    _check_pairs(*_indexed(src), pairs=(PAIRS[0], PAIRS[2]))


def test_folder_sizes_from_metadata_defer_the_image_check(tmp_path):
    root = write_folder_pairs(tmp_path / "pairs", PAIRS[:2])
    (root / "metadata.jsonl").write_text(
        json.dumps({"image": "0.png", "caption": "a", "width": 300, "height": 100}) + "\n"
        + json.dumps({"image": "gone.png", "caption": "b", "width": 10, "height": 20}) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is opened, so nothing is skipped yet
        src = FolderSource(DataSourceConfig("folder", "t2i", str(root)))
    assert src.sizes.tolist() == [[300, 100], [10, 20]]
    with pytest.raises(ImageError, match="image not found.*gone.png"):
        src.get(1).target.load()


def test_all_images_bad_is_an_error(tmp_path):
    root = write_folder_pairs(tmp_path / "pairs", PAIRS[:1])
    (root / "0.png").write_bytes(b"garbage")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=r"no usable samples \(1 skipped\)"):
        FolderSource(DataSourceConfig("folder", "t2i", str(root)))


def test_webdataset_skips_corrupt_images_and_missing_keys(tmp_path):
    import webdataset as wds

    path = tmp_path / "bad.tar"
    with wds.TarWriter(str(path)) as sink:
        sink.write({"__key__": "good0", "png": png((40, 40), (255, 0, 0)), "txt": "red"})
        sink.write({"__key__": "corrupt", "png": b"\x89PNG broken", "txt": "broken"})
        sink.write({"__key__": "notext", "png": png((40, 40), (0, 0, 255))})
        sink.write({"__key__": "good1", "jpg": png((64, 32), (0, 255, 0)), "txt": "green"})
    src = ShardSource(DataSourceConfig("webdataset", "t2i", str(path)))
    with pytest.warns(UserWarning) as record:
        samples, sizes = _streamed(src)
    msgs = _skip_messages(record)
    assert src.skips.count == 2 and len(msgs) == 2
    assert "corrupt.png" in msgs[0] and "not a readable image" in msgs[0]
    assert "notext" in msgs[1] and "no txt entry" in msgs[1] and "'png'" in msgs[1]
    assert [s.text for s in samples] == ["red", "green"] and sizes == [(40, 40), (64, 32)]
    assert [_colour(s.target) for s in samples] == [(255, 0, 0), (0, 255, 0)]


def test_webdataset_triplet_missing_source_is_skipped(tmp_path):
    import webdataset as wds

    path = tmp_path / "trip.tar"
    with wds.TarWriter(str(path)) as sink:
        sink.write({"__key__": "e0", "tgt.png": png((48, 48), (0, 0, 255)), "txt": "no source"})
        sink.write({"__key__": "e1", "src.jpg": png((48, 48), (0, 0, 0)), "tgt.webp": png((48, 48), (255, 255, 255)),
                    "txt": "ok"})
    src = ShardSource(DataSourceConfig("webdataset", "edit", str(path)))
    with pytest.warns(UserWarning, match=r"e0: no src\.jpg/src\.jpeg/src\.png/src\.webp entry"):
        samples, _ = _streamed(src)
    assert src.skips.count == 1 and [s.text for s in samples] == ["ok"]
    assert _colour(samples[0].source) == (0, 0, 0) and _colour(samples[0].target) == (255, 255, 255)


def test_hf_skips_unreadable_rows(tmp_path):
    import datasets

    (tmp_path / "garbage.png").write_bytes(b"garbage")
    (tmp_path / "red.png").write_bytes(png((40, 40), (255, 0, 0)))
    paths = [str(tmp_path / name) for name in ("garbage.png", "red.png", "missing.png")]
    datasets.Dataset.from_dict({"image": paths,
                                "caption": ["bad", "red", "gone"]}).save_to_disk(str(tmp_path / "ds"))
    with pytest.warns(UserWarning) as record:
        src = HFSource(DataSourceConfig("hf", "t2i", str(tmp_path / "ds")))
    msgs = _skip_messages(record)
    assert src.skips.count == 2 and "row 0" in msgs[0] and "row 2" in msgs[1] and "image not found" in msgs[1]
    assert len(src) == 1 and src.rows.tolist() == [1]
    assert src.get(0).text == "red" and _colour(src.get(0).target) == (255, 0, 0)


def test_skip_log_warns_for_the_first_ten_then_powers_of_ten():
    log = SkipLog("x")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for i in range(1000):
            log.skip(f"s{i}", "bad")
    assert log.count == 1000
    assert [str(w.message).rsplit("(", 1)[1] for w in record] == \
        [f"{n} skipped so far)" for n in (*range(1, 11), 100, 1000)]


def test_image_ref_refuses_decompression_bombs(tmp_path, monkeypatch):
    import dreamlite.data.sources as sources

    monkeypatch.setattr(sources, "MAX_PIXELS", 1000)
    ref = sources.ImageRef("big.png", data=png((40, 40), (1, 2, 3)))
    assert ref.size() == (40, 40)  # headers only
    with pytest.raises(ImageError, match="big.png: 40x40 exceeds 1,000 pixels"):
        ref.load()
    rgba = io.BytesIO()
    Image.new("RGBA", (4, 4), (255, 0, 0, 0)).save(rgba, format="PNG")
    assert _colour(sources.ImageRef("alpha", data=rgba.getvalue())) == (255, 255, 255)  # alpha on white


# ------------------------------------------------------------------------------------------------ configs
def test_data_config_json_resolves_relative_paths(tmp_path):
    write_folder_pairs(tmp_path / "data" / "pairs")
    write_wds_pairs(tmp_path / "data" / "shards" / "00.tar")
    cfg_path = tmp_path / "data" / "data.json"
    cfg_path.write_text(json.dumps({
        "sources": [{"kind": "folder", "task": "t2i", "path": "pairs", "weight": 2.0},
                    {"kind": "webdataset", "task": "t2i", "path": "shards/00.tar::shards/00.tar", "pool": "sft"}],
        "buckets": [[32, 32], [64, 32]], "bucket_scale": 1.0}))
    cfg = DataConfig.from_json(cfg_path)
    base = cfg_path.resolve().parent
    assert cfg.sources[0].path == str(base / "pairs") and cfg.sources[0].name == "pairs"
    assert cfg.sources[1].path == f"{base / 'shards/00.tar'}::{base / 'shards/00.tar'}"
    assert cfg.sources[1].name == "00.tar" and cfg.sources[1].pool == "sft"
    assert cfg.buckets == ((32, 32), (64, 32)) and cfg.bucket_scale == 1.0
    _check_pairs(*_indexed(open_source(cfg.sources[0])))
    # Round trip through the JSON the run folder stores.
    again = DataConfig.from_dict(json.loads(cfg.to_json()))
    assert again == cfg


@pytest.mark.parametrize("d, match", [
    ({"sources": [], "bogus": 1}, r"unknown field\(s\) \['bogus'\]"),
    ({"sources": {}}, "'sources' must be a list"),
    ({"sources": ["x"]}, r"sources\[0\] must be an object"),
    ({"sources": [{"kind": "folder", "task": "t2i", "path": "p", "colour": 1}]}, r"sources\[0\]: unknown field"),
    ({"sources": [{"kind": "folder", "path": "p"}]}, r"sources\[0\]: .*task"),
    ({"sources": [{"kind": "zip", "task": "t2i", "path": "p"}]}, "kind must be one of webdataset, folder, hf"),
    ({"sources": [{"kind": "hf", "task": "caption", "path": "p"}]}, "task must be 't2i' or 'edit'"),
    ({"sources": [{"kind": "hf", "task": "t2i", "path": "p", "weight": 0}]}, "weight must be > 0"),
    ({"sources": []}, "at least one source"),
    ({"sources": [{"kind": "hf", "task": "t2i", "path": "p"}], "decode_workers": 0}, "decode_workers must be >= 1"),
])
def test_bad_data_configs_raise(tmp_path, d, match):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=match):
        DataConfig.from_json(path)


def test_default_keys_per_kind():
    wds = DataSourceConfig("webdataset", "edit", "x.tar")
    assert wds.key("text_key") == "txt" and wds.image_field == "tgt.jpg;tgt.jpeg;tgt.png;tgt.webp"
    assert wds.key("source_key").startswith("src.jpg;src.jpeg;src.png")
    folder = DataSourceConfig("folder", "t2i", "f/")
    assert (folder.key("text_key"), folder.image_field, folder.name) == ("caption", "image", "f")
    hf = DataSourceConfig("hf", "edit", "d", text_key="prompt")
    assert (hf.key("text_key"), hf.image_field, hf.key("source_key")) == ("prompt", "target", "source")
