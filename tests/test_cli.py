"""CLI error handling: clear messages and exit code 2, never a traceback or a partial output."""
import json

import pytest
from conftest import TINY_KV_FLAGS

from mal.cli import main


def test_eval_refuses_different_boxes(scenes, tmp_path, capsys):
    _, gt, _ = scenes
    d = json.loads(gt.read_text())
    d["annotations"] = d["annotations"][1:]
    (tmp_path / "pred.json").write_text(json.dumps(d))
    missing = json.loads(gt.read_text())["annotations"][0]["id"]
    assert main(["eval", "--gt", str(gt), "--pred", str(tmp_path / "pred.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mal eval: error: ") and "pred.json" in err[0]
    assert f"1 missing (e.g. [{missing}])" in err[0]  # which annotation, not just "an error"


def test_label_missing_model_and_bad_json(scenes, tmp_path, capsys):
    images, _, boxes = scenes
    out = tmp_path / "out.json"
    assert main(["label", "--model", str(tmp_path / "nope"), "--images", str(images),
                 "--annotations", str(boxes), "--out", str(out)]) == 2
    assert "nope" in capsys.readouterr().err and not out.exists()
    (tmp_path / "bad.json").write_text("{not json")
    assert main(["label", "--model", str(tmp_path), "--images", str(images),
                 "--annotations", str(tmp_path / "bad.json"), "--out", str(out)]) == 2
    assert "bad.json" in capsys.readouterr().err and not out.exists()


def test_train_rejects_mismatched_weights(scenes, tmp_path, capsys):
    images, _, boxes = scenes
    import torch
    from safetensors.torch import save_file
    save_file({"not.a.key": torch.zeros(2)}, str(tmp_path / "w.safetensors"))
    rc = main(["train", "--images", str(images), "--annotations", str(boxes), "--out", str(tmp_path / "run"),
               "--backbone", "vit_tiny_patch16_224", "--crop-size", "64", "--min-area", "10",
               "--weights", str(tmp_path / "w.safetensors"), "--max-steps", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "w.safetensors" in err and "missing keys" in err


@pytest.mark.slow
def test_resume_with_other_settings_is_one_line_error(scenes, tmp_path, capsys):
    images, _, boxes = scenes
    base = ["train", "--images", str(images), "--annotations", str(boxes), "--out", str(tmp_path / "run"),
            *TINY_KV_FLAGS, "--crop-size", "64", "--min-area", "10", "--num-workers", "0", "--batch-size", "2"]
    assert main(base + ["--max-steps", "1"]) == 0
    capsys.readouterr()
    assert main(base + ["--max-steps", "2", "--resume"]) == 0  # same settings, longer: fine
    capsys.readouterr()
    rc = main(base + ["--max-steps", "3", "--resume", "--lr", "1e-3"])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # the error; before it, Lightning's INFO lines (and, in-process, a
    # stray logging error of the earlier runs' closed capture streams)
    assert rc == 2 and "--resume needs the settings the run was started with" in last
    assert "last.ckpt" in last and "train.lr: 0.0001 in the checkpoint, 0.001 now" in last


def test_a_bug_keeps_its_traceback_while_user_errors_are_one_line(tmp_path, monkeypatch, capsys):
    import mal.compare

    def broken(*args, **kwargs):
        raise ValueError("an internal bug")  # not a MalError: must not be hidden as a user error

    monkeypatch.setattr(mal.compare, "compare", broken)
    with pytest.raises(ValueError, match="an internal bug"):
        main(["compare", "--gt", str(tmp_path / "gt.json"), str(tmp_path / "p.json")])
    monkeypatch.undo()
    assert main(["compare", "--gt", str(tmp_path / "gt.json"), str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gt.json" in err[0]
