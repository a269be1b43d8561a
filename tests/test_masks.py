import json

import numpy as np
from pycocotools import mask as mask_utils

from mal.atomic import write_json_atomic
from mal.coco_masks import decode_rle, encode_rle
from mal.labeling.record import annotation_out
from mal.predictor import mask_from_prob


def test_rle_round_trip_and_area():
    rng = np.random.default_rng(0)
    m = rng.random((37, 53)) > 0.6
    rle = encode_rle(m)
    assert isinstance(rle["counts"], str) and rle["size"] == [37, 53]
    assert np.array_equal(decode_rle(json.loads(json.dumps(rle))), m)
    out = annotation_out({"id": 7, "image_id": 1, "category_id": 3, "bbox": [1, 2, 3, 4],
                          "segmentation": [[0, 0, 1, 1, 2, 2]], "area": 12.0}, m, 0.8, None)
    assert out["area"] == int(m.sum()) == int(mask_utils.area({**rle, "counts": rle["counts"].encode()}))
    assert out["id"] == 7 and out["bbox"] == [1, 2, 3, 4] and out["score"] == 0.8
    assert out["segmentation"] == rle and "mal_fallback" not in out


def test_empty_mask_falls_back_and_is_flagged():
    prob = np.zeros((20, 20), np.float32)
    prob[5:10, 5:10] = 0.3  # below threshold everywhere
    m, score, fb = mask_from_prob(prob, [5, 5, 10, 10])
    assert m.sum() == 25 and fb == "relative_threshold" and score == np.float32(0.3)
    m, score, fb = mask_from_prob(np.zeros((20, 20), np.float32), [2, 3, 6, 9])
    assert m.sum() == 24 and fb == "box" and score == 0.0


def test_write_json_atomic_leaves_no_partial_file(tmp_path):
    path = tmp_path / "out.json"
    write_json_atomic({"a": 1}, path)
    try:
        write_json_atomic({"bad": object()}, path)  # not serialisable: fails mid-way
    except TypeError:
        pass
    assert json.loads(path.read_text()) == {"a": 1}
    assert list(tmp_path.iterdir()) == [path]


def test_written_files_honour_the_umask(tmp_path):
    """Output files get open()'s mode (0666 less the umask), not tempfile's private 0600."""
    import os

    import torch

    from mal.atomic import write_text_atomic
    from mal.runtime import save_weights
    old = os.umask(0o022)
    try:
        write_json_atomic({"a": 1}, tmp_path / "a.json")
        write_text_atomic("x", tmp_path / "b.html")
        save_weights(torch.nn.Linear(1, 1), {}, tmp_path / "run", "model.safetensors", "config.json")
        os.umask(0o077)
        write_json_atomic({"a": 1}, tmp_path / "private.json")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in [*tmp_path.iterdir(), *(tmp_path / "run").iterdir()]}
    assert modes == {"a.json": 0o644, "b.html": 0o644, "run": 0o755, "model.safetensors": 0o644,
                     "config.json": 0o644, "private.json": 0o600}
