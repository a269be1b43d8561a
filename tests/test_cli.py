"""CLI error handling: clear messages and exit code 2, never a traceback or a partial output."""
import json

import pytest
from conftest import TINY_KV_FLAGS

from mal.cli import main


def test_eval_refuses_different_boxes(scenes, tmp_path, capsys):
    _, gt, _ = scenes
    d = json.loads(gt.read_text())
    moved = d["annotations"][0]["id"]
    d["annotations"][0]["bbox"][0] += 5
    (tmp_path / "pred.json").write_text(json.dumps(d))
    assert main(["eval", "--gt", str(gt), "--pred", str(tmp_path / "pred.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mal eval: error: ") and "pred.json" in err[0]
    assert f"[{moved}]" in err[0]  # which annotation, not just "an error"
    d = json.loads(gt.read_text())
    d["annotations"].append({**d["annotations"][0], "id": 10_000})  # not in the ground truth
    (tmp_path / "extra.json").write_text(json.dumps(d))
    assert main(["eval", "--gt", str(gt), "--pred", str(tmp_path / "extra.json")]) == 2
    assert "1 extra (e.g. [10000])" in capsys.readouterr().err


def test_eval_and_compare_score_a_labeled_subset(scenes, tmp_path, capsys):
    """A prediction file for a sample of the data set is scored on its annotations, saying how many
    ground-truth annotations were left out; compare needs every file to label the same ones."""
    _, gt, _ = scenes
    full = json.loads(gt.read_text())
    sample = {**full, "images": full["images"][:2]}
    sample["annotations"] = [a for a in full["annotations"] if a["image_id"] in {im["id"] for im in sample["images"]}]
    left_out = len(full["annotations"]) - len(sample["annotations"])
    assert 0 < len(sample["annotations"]) and left_out > 0
    (tmp_path / "sample.json").write_text(json.dumps(sample))
    assert main(["eval", "--gt", str(gt), "--pred", str(tmp_path / "sample.json"), "--json",
                 str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert f"{left_out} ground-truth annotations are not in the prediction file(s) and were not scored" in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["num_instances"] == len(sample["annotations"]) and report["miou_instance"] == 1.0
    assert report["unscored"] == left_out and report["ap"]["AP"] > 0.99  # AP only on the sample's images
    assert main(["compare", "--gt", str(gt), str(tmp_path / "sample.json"), str(tmp_path / "sample.json"),
                 "--names", "a", "b"]) == 0
    assert f"{left_out} ground-truth annotations" in capsys.readouterr().out
    assert main(["compare", "--gt", str(gt), str(tmp_path / "sample.json"), str(gt)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "label different annotations" in err[0]


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
    import mal.api

    images, _, boxes = scenes
    out = tmp_path / "masks.json"
    for k in range(chunks):  # what an interrupted job leaves: finished chunks in the work dir
        (tmp_path / "masks.json.parts" / "shard-0-of-1").mkdir(parents=True, exist_ok=True)
        (tmp_path / "masks.json.parts" / "shard-0-of-1" / f"chunk-{k:06d}.jsonl").write_text("")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(mal.api, "label", interrupted)
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


def test_every_flag_has_help_with_its_default():
    import argparse

    from mal.cli import _parsers, build_parser
    for parser in _parsers(build_parser()):
        text = parser.format_help()
        for a in parser._actions:
            if not a.option_strings or isinstance(a, argparse._HelpAction):
                continue
            assert a.help, f"{parser.prog} {a.option_strings[0]}: no help"
            if a.default not in (None, False):
                shown = "default" in a.help or f"(default: {a.default})" in " ".join(text.split())
                assert shown, f"{parser.prog} {a.option_strings[0]}: default {a.default!r} not in its help"
