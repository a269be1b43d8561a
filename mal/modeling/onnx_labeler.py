"""A trained labeler as ONNX, for deployment without torch: :func:`mal.modeling.onnx_export.export_onnx`
writes a directory

    encoder.onnx   crops (M, 3, S, S) float RGB 0..255 -> features (M, C, h, w)  (normalisation inside)
    decoder.onnx   K.V:  features (N, C, h, w) -> mask logits (N, S/4, S/4)
                   SAM:  features (M, C, h, w), boxes (N, 4) crop pixels, index (N,) int64
                         -> mask logits (N, S/4, S/4), predicted IoU (N,)
    config.json    the run's :class:`~mal.config.LabelerConfig`

and :class:`OnnxLabeler` runs it with onnxruntime behind :class:`~.labeler.MaskLabeler`'s ``config`` /
``embed`` / ``decode``, so :mod:`mal.predictor` and ``mal label --model DIR`` use it unchanged (the crop
geometry, paste-back and threshold stay in Python). Two graphs, not one, because the view "image"
encodes a frame once and decodes many boxes on it. Each graph carries ``mal_labeler`` metadata: an ONNX
file without it is refused in one line naming the file.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from ..config import LabelerConfig
from ..errors import MalError
from ..ort import open_session

ENCODER_FILE, DECODER_FILE, CONFIG_FILE = "encoder.onnx", "decoder.onnx", "config.json"
META_KEY = "mal_labeler"  # metadata_props key: "encoder" or "decoder"


class OnnxExportError(MalError):
    """A path that is not a `mal export-onnx` directory, or an ONNX file that is not one of its graphs."""


def export_dir(path: str | Path) -> Path | None:
    """The export directory ``path`` names (the directory, or one of its .onnx graphs), or None when
    ``path`` is not an ONNX export at all (e.g. a `mal train` run). An .onnx file that is not a
    labeler graph raises :class:`OnnxExportError` naming it."""
    path = Path(path)
    if path.is_dir():
        return path if (path / ENCODER_FILE).is_file() else None
    if path.suffix != ".onnx":
        return None
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found")
    role = _role(path)
    if role is None:
        raise OnnxExportError(f"{path}: an ONNX model, but not a mal labeler export (no '{META_KEY}' "
                              "metadata): give `mal label --model` the directory `mal export-onnx` wrote; "
                              "SAM's own ONNX files go to --engine sam")
    return path.parent


def _role(path: Path) -> str | None:
    import onnx
    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise OnnxExportError(f"{path}: cannot read as an ONNX model: {e}") from None
    return {p.key: p.value for p in m.metadata_props}.get(META_KEY)


class OnnxLabeler:
    """A :func:`~mal.modeling.onnx_export.export_onnx` directory run with onnxruntime, with :class:`MaskLabeler`'s interface:
    ``config``, ``embed(crops) -> feats``, ``decode(feats, boxes, crop_size, index) -> (logits, iou)``,
    ``to`` / ``eval`` (no-ops: onnxruntime on CPU, fp32 whatever ``precision`` says). ``sha256`` over
    the three files is its identity for ``mal label --resume``."""

    def __init__(self, directory: str | Path, num_threads: int | None = None):
        d = Path(directory)
        files = [d / ENCODER_FILE, d / DECODER_FILE, d / CONFIG_FILE]
        for f in files:
            if not f.is_file():
                raise OnnxExportError(f"{f}: missing; {d} is not a finished `mal export-onnx` directory")
        for f, role in zip(files[:2], ("encoder", "decoder")):
            if (found := _role(f)) != role:
                raise OnnxExportError(f"{f}: not a mal labeler {role} (its '{META_KEY}' metadata says "
                                      f"{found!r}); re-export with `mal export-onnx`")
        try:
            self.config = LabelerConfig(**json.loads(files[2].read_text()))
        except (TypeError, ValueError) as e:
            raise OnnxExportError(f"{files[2]}: not a labeler config: {e}") from None
        self.encoder = open_session(files[0], num_threads)
        self.decoder = open_session(files[1], num_threads)
        h = hashlib.sha256()
        for f in files:
            h.update(f.read_bytes())
        self.sha256, self.directory = h.hexdigest(), d

    def to(self, device) -> "OnnxLabeler":
        return self

    def eval(self) -> "OnnxLabeler":
        return self

    def embed(self, crops: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(crops.float().cpu().numpy())
        return torch.from_numpy(self.encoder.run(None, {"crops": x})[0])

    def decode(self, feats: torch.Tensor, boxes: torch.Tensor | None, crop_size: int,
               index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if crop_size != self.config.crop_size:
            raise MalError(f"{self.directory}: exported for crop {self.config.crop_size}, not {crop_size}")
        f = feats.float().cpu().numpy()
        n = len(boxes) if boxes is not None else len(f)
        idx = np.arange(n) if index is None else index.cpu().numpy().astype(np.int64)
        if self.config.decoder == "sam":
            logits, iou = self.decoder.run(None, {"features": f, "boxes": boxes.float().cpu().numpy(),
                                                  "index": idx})
            return torch.from_numpy(logits), torch.from_numpy(iou)
        return torch.from_numpy(self.decoder.run(None, {"features": np.ascontiguousarray(f[idx])})[0]), None
