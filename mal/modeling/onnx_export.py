"""Writing a trained labeler as ONNX (``mal export-onnx``): :func:`export_onnx` writes the directory
that :class:`~mal.modeling.onnx_labeler.OnnxLabeler` runs (its docstring describes the files)."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from ..atomic import write_json_atomic
from ..config import LabelerConfig
from .labeler import MaskLabeler
from .load import load_labeler
from .onnx_labeler import CONFIG_FILE, DECODER_FILE, ENCODER_FILE, META_KEY

OPSET = 17


class _Encoder(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, crops):
        return self.model.embed(crops)


class _Decoder(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, feats, boxes=None, index=None):
        logits, iou = self.model.decode(feats, boxes, self.model.config.crop_size, index)
        return logits if iou is None else (logits, iou)


def _tag(path: Path, role: str, config: LabelerConfig) -> None:
    import onnx
    m = onnx.load(str(path))
    for k, v in ((META_KEY, role), ("mal_config", json.dumps(asdict(config), sort_keys=True))):
        p = m.metadata_props.add()
        p.key, p.value = k, v
    onnx.save(m, str(path))


def export_onnx(model, out_dir: str | Path, *, opset: int = OPSET) -> Path:
    """Write ``model`` (a :class:`MaskLabeler`, a `mal train` run directory or a .ckpt) as
    ``out_dir/{encoder,decoder}.onnx`` + ``config.json`` (fp32, CPU). The config is written last,
    so a directory without it is an unfinished export. Returns ``out_dir``."""
    model = model if isinstance(model, MaskLabeler) else load_labeler(model)
    model = model.float().eval().cpu()
    cfg = model.config
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).unlink(missing_ok=True)
    S = cfg.crop_size
    crops = torch.rand(2, 3, S, S) * 255
    with torch.no_grad():
        feats = model.embed(crops)
    kw = dict(dynamo=False, opset_version=opset, do_constant_folding=True)
    torch.onnx.export(_Encoder(model), (crops,), str(out / ENCODER_FILE), input_names=["crops"],
                      output_names=["features"], dynamic_axes={"crops": {0: "M"}, "features": {0: "M"}}, **kw)
    if cfg.decoder == "sam":  # three boxes on two embeddings: the batch and the index are both dynamic
        boxes = torch.tensor([[S * .2, S * .3, S * .7, S * .8], [0, 0, S / 2, S / 2], [S * .1, S * .5, S, S]])
        index = torch.tensor([0, 1, 1])
        torch.onnx.export(_Decoder(model), (feats, boxes, index), str(out / DECODER_FILE),
                          input_names=["features", "boxes", "index"], output_names=["logits", "iou"],
                          dynamic_axes={"features": {0: "M"}, "boxes": {0: "N"}, "index": {0: "N"},
                                        "logits": {0: "N"}, "iou": {0: "N"}}, **kw)
    else:
        torch.onnx.export(_Decoder(model), (feats,), str(out / DECODER_FILE), input_names=["features"],
                          output_names=["logits"], dynamic_axes={"features": {0: "N"}, "logits": {0: "N"}}, **kw)
    for f, role in ((ENCODER_FILE, "encoder"), (DECODER_FILE, "decoder")):
        _tag(out / f, role, cfg)
    write_json_atomic(asdict(cfg), out / CONFIG_FILE)
    return out
