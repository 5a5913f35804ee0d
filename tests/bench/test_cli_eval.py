import json

from dreamlite.bench import geneval
from dreamlite.cli import main


def test_eval_geneval_ground_truth_then_images(tmp_path, capsys):
    out = tmp_path / "g"
    assert main(["eval", "geneval", "--ground-truth", "--limit", "12", "--samples-per-prompt", "1",
                 "--outdir", str(out)]) == 0
    text = capsys.readouterr().out.strip().splitlines()
    assert text[-1] == "Overall score (avg. over tasks): 1.00000" and len(text) == 8  # results + 6 tags + overall
    assert (out / "00011" / "samples" / "0000.png").is_file()
    assert main(["eval", "geneval", "--images", str(out), "--outdir", str(tmp_path / "again")]) == 0
    assert capsys.readouterr().out.strip().endswith("Overall score (avg. over tasks): 1.00000")
    assert len((tmp_path / "again" / "results.jsonl").read_text().splitlines()) == 12


def test_eval_imgedit_ground_truth(tmp_path, capsys):
    assert main(["eval", "imgedit", "--ground-truth", "--limit", "8", "--outdir", str(tmp_path)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == "Overall: success 1.0000, preservation 1.0000, score 5.000"
    assert len(list(tmp_path.glob("*.png"))) == 8


def test_eval_errors_are_one_line(tmp_path, capsys):
    assert main(["eval", "geneval", "--model", "m", "--outdir", str(tmp_path)]) == 2
    assert "model folder not found: m" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    rows = geneval.load_metadata(geneval.default_metadata_path(), limit=2)
    bad.write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[1]) + "\n{broken\n")
    assert main(["eval", "geneval", "--ground-truth", "--metadata", str(bad), "--outdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bad.jsonl:3" in err and "Traceback" not in err
    assert main(["eval", "imgedit", "--images", str(tmp_path / "nope"), "--outdir", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
