"""Sharded, streaming, resumable labeling: chunked output is the same as one pass, whatever the chunk
size, batch size, shard count, crash point or resume; peak memory does not grow with the dataset."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import TINY_KV

from mal.labeling.merge import MergeOutcome, MergeResult, category_offsets, logit, merge_and_clean, shifted_score
from mal.labeling.plan import parse_shard
from mal.labeling.store import PartsError
from mal.cli import main
from mal.data.coco import load_boxes
from mal.demo import make_scenes
from mal.engines import build_engine, label_with_engine
from mal.labeling.manifest import open_for_merge
from mal.labeling.label import LabelError, label, merge
from mal.modeling.labeler import LabelerConfig, build_labeler, save_labeler

TINY = LabelerConfig(**TINY_KV)
# Slow enough (~3 ms a crop) that a killed run is caught with most of its chunks still to do.
SLOW = LabelerConfig(backbone="vit_tiny_patch16_224", crop_size=128, decoder_dim=16,
                     timm_kwargs=dict(depth=2, embed_dim=64, num_heads=2, patch_size=8))
MAL_CLI = [sys.executable, "-m", "mal.cli"]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return make_scenes(tmp_path_factory.mktemp("scenes"), num_images=12)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_labeler(TINY).eval()


class CountingBox:
    """The box engine, counting the images it is asked to label."""
    name = "box"

    def __init__(self):
        self.box, self.calls = build_engine("box"), 0

    def predict(self, image, boxes):
        self.calls += 1
        return self.box.predict(image, boxes)


def _anns(path: Path) -> list[dict]:
    return json.loads(Path(path).read_text())["annotations"]


def _no_tmp_left(root: Path) -> bool:
    return not list(root.rglob("*.tmp"))


def _chunks(work_dir: Path) -> list[Path]:
    return sorted(work_dir.glob("shard-*/chunk-*.jsonl"))


# --------------------------------------------------------------------------- in-process


def test_output_does_not_depend_on_chunk_or_batch_size(scenes, model, tmp_path):
    images, _, boxes = scenes
    ref = tmp_path / "ref.json"
    # fp32: on CPUs with AMX, "auto" is bf16, whose rounding depends on the batch's shape.
    label(model, images, boxes, ref, batch_size=100, chunk_images=100, num_workers=0, progress=False,
          precision="32")
    for chunk_images, batch_size in ((1, 3), (4, 5), (5, 1)):
        out = tmp_path / f"c{chunk_images}_b{batch_size}.json"
        s = label(model, images, boxes, out, batch_size=batch_size, chunk_images=chunk_images,
                  num_workers=0, progress=False, precision="32")
        assert out.read_bytes() == ref.read_bytes()
        assert s.merged and s.boxes == s.new_boxes == len(_anns(ref)) and s.images == 12
        assert not Path(f"{out}.parts").exists()  # removed after the merge
    src = json.loads(boxes.read_text())
    assert [a["id"] for a in _anns(ref)] == [a["id"] for a in src["annotations"]]
    # --keep-parts: one file per chunk, nothing half-written anywhere.
    label(model, images, boxes, tmp_path / "kept.json", chunk_images=5, keep_parts=True,
          num_workers=0, progress=False)
    assert [p.name for p in _chunks(tmp_path / "kept.json.parts")] == [
        "chunk-00000.jsonl", "chunk-00001.jsonl", "chunk-00002.jsonl"]
    assert _no_tmp_left(tmp_path)


def test_resume_redoes_only_missing_chunks_and_keeps_skipped_images(scenes, tmp_path):
    images, _, boxes = scenes
    src = json.loads(boxes.read_text())
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    for p in images.iterdir():
        (img_dir / p.name).write_bytes(p.read_bytes())
    bad = src["images"][2]  # in chunk 1 (chunks of 2 images)
    (img_dir / bad["file_name"]).write_bytes(b"not an image")
    out, work = tmp_path / "out.json", tmp_path / "work"
    kw = dict(num_workers=0, progress=False, skip_bad_images=True, chunk_images=2, work_dir=work)

    first = CountingBox()
    with pytest.raises(LabelError, match=r"1 finished chunk\(s\) are kept .*--resume"):
        label_with_engine(first, img_dir, boxes, out, **{**kw, "skip_bad_images": False})
    assert first.calls == 2 and not out.exists()
    s1 = label_with_engine(first, img_dir, boxes, out, keep_parts=True, resume=True, **kw)
    assert first.calls == 11 and len(s1.skipped_images) == 1 and s1.new_boxes < s1.boxes
    ref = out.read_bytes()
    label_with_engine(CountingBox(), img_dir, boxes, tmp_path / "one.json", num_workers=0, progress=False,
                      skip_bad_images=True)
    assert (tmp_path / "one.json").read_bytes() == ref
    # A crash after chunks 0, 2, 3 and 5 were written: chunks 1 and 4 and the output are missing.
    for k in (1, 4):
        (work / "shard-0-of-1" / f"chunk-{k:05d}.jsonl").unlink()
    out.unlink()
    with pytest.raises(PartsError, match="--resume"):
        label_with_engine(CountingBox(), img_dir, boxes, out, **kw)
    again = CountingBox()
    s2 = label_with_engine(again, img_dir, boxes, out, resume=True, **kw)
    assert again.calls == 3  # chunk 1's readable image and chunk 4's two images
    assert out.read_bytes() == ref
    assert s2.new_boxes < s2.boxes == s1.boxes and s2.skipped_images == s1.skipped_images
    assert all(a["image_id"] != bad["id"] for a in _anns(out))
    assert not work.exists()


def test_manifest_mismatch_is_refused(scenes, model, tmp_path):
    images, gt, boxes = scenes
    out, work = tmp_path / "out.json", tmp_path / "work"
    kw = dict(num_workers=0, progress=False, work_dir=work, chunk_images=4)
    label(model, images, boxes, out, keep_parts=True, **kw)
    with pytest.raises(PartsError, match="labeler .*differs"):
        label(model, images, boxes, out, threshold=0.6, resume=True, **kw)
    with pytest.raises(PartsError, match="labeler .*differs"):  # the mirror too: other masks
        label(model, images, boxes, out, tta=True, resume=True, **kw)
    with pytest.raises(PartsError, match="annotations file content differs"):
        label(model, images, gt, out, resume=True, **kw)
    with pytest.raises(PartsError, match="shard count differs: 1 before, 2 now"):
        label(model, images, boxes, out, shard="0/2", resume=True, **kw)
    with pytest.raises(PartsError, match="labeler .*differs"):  # another model, same shapes
        label(build_labeler(TINY).eval(), images, boxes, out, resume=True, **kw)
    with pytest.raises(PartsError, match="different annotations file"):
        merge(gt, out, work_dir=work)
    # The same job resumes (nothing left to do) and merges again to the same bytes.
    ref = out.read_bytes()
    out.unlink()
    s = label(model, images, boxes, out, resume=True, **kw)
    assert s.new_boxes == 0 and out.read_bytes() == ref and not work.exists()


def test_shard_spec_and_torchrun_environment(scenes, tmp_path, monkeypatch, capsys):
    assert parse_shard("1/4") == (1, 4) and parse_shard(None) == (0, 1)
    for bad in ("3/2", "-1/2", "0/0", "1", "a/b"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)
    images, _, boxes = scenes
    out = tmp_path / "out.json"
    assert main(["label", "--engine", "box", "--images", str(images), "--annotations", str(boxes),
                 "--out", str(out), "--shard", "2/2"]) == 2
    assert "mal label: error: shard 2/2 does not exist" in capsys.readouterr().err
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    s = label_with_engine(build_engine("box"), images, boxes, out, num_workers=0, progress=False)
    assert s.shard == (1, 3) and not s.merged and s.waiting_for == [0, 2] and not out.exists()
    assert s.images == 4  # images 1, 4, 7, 10 of 12
    assert [p.parent.name for p in _chunks(Path(f"{out}.parts"))] == ["shard-1-of-3"]


def test_explicit_merge(scenes, tmp_path, capsys):
    images, _, boxes = scenes
    ref = tmp_path / "ref.json"
    label_with_engine(build_engine("box"), images, boxes, ref, num_workers=0, progress=False)
    out = tmp_path / "out.json"
    args = ["--images", str(images), "--annotations", str(boxes), "--out", str(out), "--chunk-images", "2",
            "--num-workers", "0"]
    assert main(["label", "--engine", "box", "--shard", "0/2", *args]) == 0
    assert main(["merge", "--annotations", str(boxes), "--out", str(out)]) == 2
    assert "shard 1/2 lacks 3 of 3 chunks" in capsys.readouterr().err and not out.exists()
    assert main(["label", "--engine", "box", "--shard", "1/2", "--keep-parts", *args]) == 0
    assert out.read_bytes() == ref.read_bytes()  # the last shard to finish merged
    out.unlink()
    assert main(["merge", "--annotations", str(boxes), "--out", str(out)]) == 0
    assert out.read_bytes() == ref.read_bytes() and not Path(f"{out}.parts").exists()


def test_merge_result_says_what_happened(scenes, tmp_path):
    images, _, boxes = scenes
    out, work = tmp_path / "out.json", tmp_path / "work"
    kw = dict(num_workers=0, progress=False, work_dir=work, chunk_images=4)
    label_with_engine(build_engine("box"), images, boxes, out, shard="0/2", **kw)
    job = json.loads((work / "job.json").read_text())
    assert job["input_sha256"] == hashlib.sha256(boxes.read_bytes()).hexdigest()  # the file's bytes
    data = load_boxes(boxes, images)
    store = open_for_merge(work, data.groups, data.input_sha256)
    assert merge_and_clean(store, data.coco, out, only_if_complete=True) == MergeResult(MergeOutcome.WAITING)
    with pytest.raises(PartsError, match="shard 1/2 lacks 2 of 2 chunks"):
        merge_and_clean(store, data.coco, out)
    label_with_engine(build_engine("box"), images, boxes, out, shard="1/2", **kw)  # merges, removes work
    assert out.exists() and not work.exists()
    assert merge_and_clean(store, data.coco, out) == MergeResult(MergeOutcome.MERGED_ELSEWHERE)


def test_category_offsets_known_answer():
    cats = np.array([1, 1, 2, 2, 2, 3])
    scores = np.array([0.9, 0.7, 0.5, 0.6, np.nan, 0.4])  # the NaN (a fallback) counts nowhere
    off = category_offsets(cats, scores)
    z = np.log(np.array([0.9, 0.7, 0.5, 0.6, 0.4]) / (1 - np.array([0.9, 0.7, 0.5, 0.6, 0.4])))
    assert off.keys() == {1, 2, 3}
    assert np.allclose([off[1], off[2], off[3]], [z[:2].mean() - z.mean(), z[2:4].mean() - z.mean(), z[4] - z.mean()])
    assert category_offsets(np.array([7, 7, 7]), np.array([0.2, 0.9, 0.5])) == {}  # one class: own scores
    assert category_offsets(np.array([1, 2]), np.array([0.5, np.nan])) == {}  # one class with a score
    assert category_offsets(np.array([1, 2, 2]), np.array([1.0, 1.0, 1.0])) == {}  # equal means: no shift
    assert shifted_score(1.0, 0.0) == 1.0 and shifted_score(0.0, 0.0) == 0.0  # e.g. the box engine's 1
    # The shift keeps scores inside [0, 1] and never reverses two (at 4 decimals, near 0 or 1 they may tie).
    s = [0.0, 0.0001, 0.2, 0.5, 0.8, 0.9999, 1.0]
    for o in (-3.0, -0.5, 0.5, 3.0):
        shifted = [shifted_score(v, o) for v in s]
        assert all(0 <= v <= 1 for v in shifted) and shifted == sorted(shifted)
        assert shifted[2] < shifted[3] < shifted[4]  # apart away from the ends
    assert shifted_score(0.5, np.log(3)) == 0.75 and shifted_score(0.2, np.log(4)) == 0.5
    assert np.isclose(logit(0.75), np.log(3))


def test_merged_scores_are_shifted_by_category_and_fallbacks_keep_theirs(scenes, model, tmp_path):
    images, _, boxes = scenes
    out, work = tmp_path / "out.json", tmp_path / "work"
    label(model, images, boxes, out, num_workers=0, progress=False, work_dir=work, keep_parts=True)
    lines = [json.loads(line) for c in _chunks(work) for line in c.read_text().splitlines()[1:]]
    own = {a["id"]: a for a in lines}
    anns = _anns(out)
    scores = np.array([np.nan if "mal_fallback" in own[a["id"]] else own[a["id"]]["score"] for a in anns])
    off = category_offsets(np.array([a["category_id"] for a in anns]), scores)
    assert len(off) > 1 and max(abs(v) for v in off.values()) > 1e-3
    for a, s in zip(anns, scores):
        want = own[a["id"]]["score"] if np.isnan(s) else shifted_score(s, off[a["category_id"]])
        assert a["score"] == want and {**a, "score": 0} == {**own[a["id"]], "score": 0}


def test_a_work_dir_of_another_format_is_refused(scenes, tmp_path):
    images, _, boxes = scenes
    out, work = tmp_path / "out.json", tmp_path / "work"
    label_with_engine(build_engine("box"), images, boxes, out, num_workers=0, progress=False, work_dir=work,
                      shard="0/2")
    job = json.loads((work / "job.json").read_text())
    (work / "job.json").write_text(json.dumps({**job, "format": 1}))
    data = load_boxes(boxes, images)
    with pytest.raises(PartsError, match="work dir format 1.*delete that folder and label again"):
        open_for_merge(work, data.groups, data.input_sha256)
    with pytest.raises(PartsError, match="work dir format 1, this one writes 2.*delete that folder"):
        label_with_engine(build_engine("box"), images, boxes, out, num_workers=0, progress=False, work_dir=work,
                          shard="1/2", resume=True)
    assert not out.exists()


# --------------------------------------------------------------------------- processes


def _label_cmd(images, boxes, out, *extra) -> list[str]:
    return MAL_CLI + ["label", "--images", str(images), "--annotations", str(boxes), "--out", str(out),
                      "--num-workers", "0", *map(str, extra)]


@pytest.mark.slow  # subprocesses
def test_kill_9_then_resume_equals_an_uninterrupted_run(tmp_path):
    images, _, boxes = make_scenes(tmp_path / "data", num_images=40)
    run = tmp_path / "run"
    torch.manual_seed(0)
    save_labeler(build_labeler(SLOW).eval(), run)
    # Same settings as the killed job. Every chunk starts a fresh batch, so resuming reproduces the
    # uninterrupted run to the byte. (Another chunk or batch size regroups crops into other batches,
    # and float rounding can then flip a pixel sitting right at the threshold: measured 1 pixel of 1
    # box in 190 for this random model, chunks of 2 vs 64 images.)
    ref = tmp_path / "ref.json"
    label(run, images, boxes, ref, batch_size=8, chunk_images=1, num_workers=0, progress=False)

    out = tmp_path / "out.json"
    work = Path(f"{out}.parts")
    cmd = _label_cmd(images, boxes, out, "--model", run, "--batch-size", 8, "--chunk-images", 1)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not _chunks(work) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = _chunks(work)
    assert 1 <= len(done) < 40, "the run was not caught mid-way"
    assert not out.exists()
    for chunk in done:  # every visible chunk is whole
        lines = chunk.read_text().splitlines()
        assert len(lines) == 1 + len(json.loads(lines[0])["ann_ids"])
        assert all(json.loads(line)["segmentation"] for line in lines[1:])

    res = subprocess.run(cmd + ["--resume"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    got, want = _anns(out), _anns(ref)
    assert len({a["id"] for a in got}) == len(got)  # no duplicates
    assert got == want  # no loss, same masks and scores
    assert out.read_bytes() == ref.read_bytes()
    assert not work.exists()


@pytest.mark.slow  # subprocesses
def test_two_shard_processes_equal_one(scenes, tmp_path):
    images, _, boxes = scenes
    ref = tmp_path / "ref.json"
    label_with_engine(build_engine("box"), images, boxes, ref, num_workers=0, progress=False)
    out = tmp_path / "out.json"
    procs = [subprocess.Popen(_label_cmd(images, boxes, out, "--engine", "box", "--chunk-images", 2,
                                         "--shard", f"{i}/2"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [r[1][-2000:] for r in results]
    assert out.read_bytes() == ref.read_bytes()
    assert not Path(f"{out}.parts").exists()


# Child for the memory test: labels N synthetic images with an engine whose masks are noise (large
# RLEs, ~20 kB a box), then prints its own peak RSS. ``extra`` (JSON) holds label_with_engine
# keywords, so the same child can measure code without chunking (no keywords).
MEMORY_CHILD = textwrap.dedent("""
    import json, resource, sys
    import numpy as np
    from mal.data.crops import box_mask
    from mal.engines import label_with_engine

    class Noise:
        name = "noise"
        def predict(self, image, boxes):
            H, W = image.shape[:2]
            rng = np.random.default_rng(int(boxes[0, 0]))
            return [(rng.random((H, W)) < 0.5) & (box_mask(b, H, W) > 0) for b in boxes], np.ones(len(boxes))

    images, ann, out, extra = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    label_with_engine(Noise(), images, ann, out, num_workers=0, progress=False, **extra)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
""")


def make_noise_job(root: Path, n: int, boxes_per_image: int = 10, size: int = 256) -> tuple[Path, Path]:
    """``n`` flat grey images with ``boxes_per_image`` boxes of 200x200 px each."""
    img_dir = root / "images"
    img_dir.mkdir(parents=True)
    cv2.imwrite(str(img_dir / "grey.png"), np.full((size, size, 3), 128, np.uint8))
    images, anns = [], []
    for i in range(n):
        name = f"{i:04d}.png"
        os.link(img_dir / "grey.png", img_dir / name)
        images.append({"id": i + 1, "file_name": name, "width": size, "height": size})
        for j in range(boxes_per_image):
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1,
                         "bbox": [j * 5, (i + j) % 50, 200, 200]})
    ann = root / "boxes.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "x"}]}))
    return img_dir, ann


def peak_rss_mb(tmp_path: Path, n: int, extra: dict) -> int:
    images, ann = make_noise_job(tmp_path / f"n{n}", n)
    res = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(images), str(ann),
                          str(tmp_path / f"n{n}" / "out.json"), json.dumps(extra)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    return int(res.stdout.split()[-1])


@pytest.mark.slow  # subprocesses
def test_peak_memory_does_not_grow_with_the_dataset(tmp_path):
    # 20 vs 200 images of 10 boxes: the 1,800 extra boxes' results are ~36 MB of RLE (noise masks),
    # which all-in-memory labeling holds until the end (measured with the code before chunking:
    # 728 -> 769 MB, +41 MB). Streamed, one chunk of 8 images (~1.6 MB) is held at a time; measured
    # 728 -> 732 MB, the +4 MB being the input's Python objects (~2 kB a box, also there before).
    # A 12 MB margin stays well clear of both.
    extra = {"chunk_images": 8}
    small, large = peak_rss_mb(tmp_path, 20, extra), peak_rss_mb(tmp_path, 200, extra)
    assert large - small < 12, f"peak RSS {small} MB for 20 images, {large} MB for 200"
