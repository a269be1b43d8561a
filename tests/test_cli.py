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


def test_label_refuses_an_existing_out_without_overwrite(scenes, tmp_path, capsys):
    images, _, boxes = scenes
    out = tmp_path / "masks.json"
    out.write_text("{}")
    base = ["label", "--engine", "box", "--images", str(images), "--annotations", str(boxes), "--out", str(out),
            "--num-workers", "0"]
    assert main(base) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "masks.json exists" in err[0] and "--overwrite" in err[0]
    assert out.read_text() == "{}"
    assert main(base + ["--overwrite"]) == 0 and json.loads(out.read_text())["annotations"]


def test_missing_files_are_named_before_any_work(scenes, tmp_path, capsys):
    images, _, boxes = scenes
    assert main(["label", "--model", str(tmp_path / "no_run"), "--images", str(images), "--annotations",
                 str(boxes), "--out", str(tmp_path / "m.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no_run: not found" in err[0]
    assert main(["train", "--images", str(images), "--annotations", str(boxes), "--out", str(tmp_path / "run"),
                 "--decoder", "kv", "--weights", str(tmp_path / "w.pth")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"mal train: error: {tmp_path / 'w.pth'}: --weights file not found"]  # no banner before it
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("chunks", [0, 2])
def test_ctrl_c_in_label_is_one_line_saying_whether_resume_continues(scenes, tmp_path, monkeypatch, capsys,
                                                                     chunks):
    import mal.engines

    images, _, boxes = scenes
    out = tmp_path / "masks.json"
    for k in range(chunks):  # what an interrupted job leaves: finished chunks in the work dir
        (tmp_path / "masks.json.parts" / "shard-0-of-1").mkdir(parents=True, exist_ok=True)
        (tmp_path / "masks.json.parts" / "shard-0-of-1" / f"chunk-{k:06d}.jsonl").write_text("")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(mal.engines, "label_with_engine", interrupted)
    assert main(["label", "--engine", "box", "--images", str(images), "--annotations", str(boxes),
                 "--out", str(out)]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mal label: interrupted")
    assert ("--resume" in err[0]) == bool(chunks) and (f"{chunks} finished chunk(s)" in err[0] if chunks else True)


def test_ctrl_c_in_training_becomes_a_keyboard_interrupt(tmp_path):
    """Lightning answers Ctrl-C with sys.exit(1); fit_resumable turns it back into KeyboardInterrupt
    (the CLI's one line and exit code 130), and leaves other exits alone."""
    from types import SimpleNamespace

    from lightning.pytorch.trainer.states import TrainerStatus

    from mal.runtime import fit_resumable

    def trainer(status):
        def fit(*args, **kwargs):
            t.state.status = status
            raise SystemExit(1)
        t = SimpleNamespace(state=SimpleNamespace(status=None), fit=fit)
        return t

    with pytest.raises(KeyboardInterrupt):
        fit_resumable(trainer(TrainerStatus.INTERRUPTED), None, None, tmp_path, resume=False, every=1)
    with pytest.raises(SystemExit):
        fit_resumable(trainer(TrainerStatus.RUNNING), None, None, tmp_path, resume=False, every=1)
