"""The `x3kd` command: user errors exit 2 with the problem named; data/eval/demo commands work."""

from x3kd_core.cli import main

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


def test_data_synth_rejects_a_bad_key_with_its_path(tmp_path, capsys):
    bad = tmp_path / "world.yaml"
    bad.write_text((REPO / "config/data/synthetic_tiny.yaml").read_text() + "\nnum_scenez: 3\n")
    assert main(["data", "synth", "--config", str(bad), "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "unknown key num_scenez" in err and "world.yaml" in err


def test_eval_missing_results_file_is_a_clear_error(tmp_path, capsys):
    code = main(["eval", "--dataroot", str(tmp_path), "--results", str(tmp_path / "none.json"), "--out", str(tmp_path)])
    assert code == 2
    assert "x3kd eval: error:" in capsys.readouterr().err


def test_data_show_index_out_of_range(tiny_dataset, tmp_path, capsys):
    dataroot, version = tiny_dataset
    code = main(["data", "show", "--dataroot", str(dataroot), "--version", version, "--index", "99",
                 "--out", str(tmp_path)])
    assert code == 2
    assert "--index 99 out of range" in capsys.readouterr().err
    assert main(["data", "show", "--dataroot", str(dataroot), "--version", version, "--index", "0",
                 "--image-hw", "112", "200", "--out", str(tmp_path)]) == 0
    assert len(list(tmp_path.glob("*_bev.png"))) == 1 and len(list(tmp_path.glob("*_cameras.png"))) == 1
