"""SAM's prompt encoder + mask decoder as a trainable torch module, for box prompts.

The modules are Meta's (``segment-anything``: ``PromptEncoder``, ``MaskDecoder``, ``TwoWayTransformer``);
this file adds what a box labeler needs around them:

- boxes are embedded as ``SamOnnxModel`` does: the two corners (labels 2, 3) plus a padding point
  (label -1), which is what the ONNX engine feeds its export; or (``pad_box=False``) as segment-anything's
  ``SamPredictor.predict(box=...)`` does: the two corners alone. Either way the output is SAM's
  single-mask output (mask token 0);
- any embedding grid: the dense positional encoding is computed for the grid of the embedding it gets
  (64x64 for a 1024 image, 16x16 for a 256 crop), from the same weights;
- one call decodes N boxes over M embeddings (``image_index`` says which embedding each box uses):
  per-box crops (M = N) and many boxes on one whole-image embedding (M = 1) alike;
- weights from the standard ``SamOnnxModel`` ONNX export (:func:`load_sam_decoder_weights`) or from a
  segment-anything ``.pth`` state dict.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer
from torch import nn

from .weights import WeightsError, read_state_dict

EMBED_DIM = 256


class SamBoxDecoder(nn.Module):
    """Box prompt -> single-mask logits at 4x the embedding grid, and SAM's predicted IoU.

    forward(embeddings (M, 256, h, w), boxes (N, 4) x0,y0,x1,y1 in the pixel frame of ``input_size``,
    image_index (N,) long in [0, M), input_size (H, W) of the frame the embedding grid covers)
    -> (logits (N, 4h, 4w), iou (N,)); with ``masks=False`` (None, iou), skipping the mask upscaling.
    """

    def __init__(self, pad_box: bool = True):
        super().__init__()
        self.pad_box = pad_box
        # image_embedding_size / input_image_size only set defaults that forward() overrides.
        self.prompt_encoder = PromptEncoder(embed_dim=EMBED_DIM, image_embedding_size=(64, 64),
                                            input_image_size=(1024, 1024), mask_in_chans=16)
        self.mask_decoder = MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=EMBED_DIM, mlp_dim=2048, num_heads=8),
            transformer_dim=EMBED_DIM, iou_head_depth=3, iou_head_hidden_dim=256)
        # Never used for box prompts (no mask input, labels 0/1 and multi-mask heads unused): frozen,
        # so DDP and the optimizer see only what trains.
        for m in (self.prompt_encoder.mask_downscaling, self.prompt_encoder.point_embeddings[0],
                  self.prompt_encoder.point_embeddings[1], *self.mask_decoder.output_hypernetworks_mlps[1:]):
            m.requires_grad_(False)

    def embed_boxes(self, boxes: torch.Tensor, input_size: tuple[int, int]) -> torch.Tensor:
        """(N, 4) boxes -> (N, 3, 256) sparse prompt tokens: corners + padding point (N, 2, 256 without)."""
        pe = self.prompt_encoder
        H, W = input_size
        corners = boxes.reshape(-1, 2, 2).float() + 0.5  # pixel centres, as SamOnnxModel
        corners = corners / torch.tensor([W, H], dtype=corners.dtype, device=corners.device)
        emb = pe.pe_layer._pe_encoding(corners)  # (N, 2, 256)
        emb = emb + torch.stack([pe.point_embeddings[2].weight[0], pe.point_embeddings[3].weight[0]])
        if not self.pad_box:
            return emb
        pad = pe.not_a_point_embed.weight.expand(boxes.shape[0], 1, -1)  # the padding point's PE is zeroed
        return torch.cat([emb, pad], dim=1)

    def forward(self, embeddings: torch.Tensor, boxes: torch.Tensor, image_index: torch.Tensor | None = None,
                input_size: tuple[int, int] | None = None, masks: bool = True
                ) -> tuple[torch.Tensor | None, torch.Tensor]:
        md = self.mask_decoder
        M, C, h, w = embeddings.shape
        if input_size is None:
            input_size = (16 * h, 16 * w)
        if image_index is None:
            if M not in (1, len(boxes)):
                raise ValueError(f"{len(boxes)} boxes on {M} embeddings: say which embedding each box uses "
                                 "(image_index)")
            image_index = torch.arange(len(boxes), device=boxes.device) if M == len(boxes) else \
                torch.zeros(len(boxes), dtype=torch.long, device=boxes.device)
        n = boxes.shape[0]  # not len(boxes): a traced (ONNX) graph keeps shape[0] dynamic
        sparse = self.embed_boxes(boxes, input_size).to(embeddings.dtype)
        tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], 0).to(embeddings.dtype)
        tokens = torch.cat([tokens.expand(n, -1, -1), sparse], 1)
        # Channels-last, so that the (N, h*w, 256) token views the transformer takes of src and pos are
        # contiguous along the channels: its per-layer additions and matmuls then read memory in order
        # (same values; measured ~12% less time per box without gradient on a 2-core CPU, none with it).
        cl = torch.channels_last
        src = (embeddings[image_index] + self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
               ).contiguous(memory_format=cl)
        pos = self.prompt_encoder.pe_layer((h, w)).to(src.dtype).unsqueeze(0).contiguous(memory_format=cl)
        pos = pos.expand(n, -1, -1, -1)
        hs, src = md.transformer(src, pos, tokens)
        iou = md.iou_prediction_head(hs[:, 0])[:, 0]
        if not masks:  # the IoU estimate alone (a reference decoder's score): ~20% less time per box
            return None, iou
        up = md.output_upscaling(src.transpose(1, 2).reshape(n, C, h, w))  # (N, 32, 4h, 4w)
        # Every mask token's hypernetwork and one matmul, as segment-anything's MaskDecoder computes them:
        # token 0 (SAM's single-mask output) then has the bits SamPredictor's has (a (N, 1, 32) product
        # rounds differently). Tokens 1-3 cost little and are frozen.
        hyper = torch.stack([mlp(hs[:, 1 + i]) for i, mlp in enumerate(md.output_hypernetworks_mlps)], 1)
        logits = (hyper @ up.flatten(2))[:, 0].view(n, 4 * h, 4 * w)
        return logits, iou


def _onnx_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Recover SAM's state dict from a ``SamOnnxModel`` export (see the module docstring of the
    weights in ../shared): named initializers by name, the transformer's linear weights through the
    bias of the Add that follows each MatMul, and the constants the export folded through their nodes."""
    import onnx
    from onnx import numpy_helper
    try:
        graph = onnx.load(str(path)).graph
    except Exception as e:
        raise WeightsError(f"{path}: cannot read as an ONNX model: {e}") from e
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    sd: dict[str, np.ndarray] = {}
    for k, v in inits.items():
        if k.startswith("model.prompt_encoder."):
            sd[k.removeprefix("model.")] = v
        elif k.startswith("mask_decoder."):
            sd[k] = v
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    layer_norms = []  # folded LayerNorm2d (weight, bias): Mul by a (C,1,1) constant then Add one
    for n in graph.node:
        if n.op_type == "MatMul" and n.input[1] in inits and n.input[1].startswith("onnx::"):
            adds = [c for c in consumers.get(n.output[0], []) if c.op_type == "Add"]
            bias = [i for a in adds for i in a.input if i.endswith(".bias") and i in inits]
            if len(bias) == 1:
                sd[bias[0].removesuffix(".bias") + ".weight"] = inits[n.input[1]].T
        elif n.op_type == "Mul" and any(i in inits and inits[i].ndim == 3 for i in n.input):
            w = next(i for i in n.input if i in inits)
            add = [c for c in consumers.get(n.output[0], []) if c.op_type == "Add"]
            b = [i for a in add for i in a.input if i in inits and inits[i].ndim == 3]
            if b:
                layer_norms.append((inits[w].reshape(-1), inits[b[0]].reshape(-1)))
        elif n.op_type == "Mul" and any(i in inits and inits[i].shape == (1, EMBED_DIM, 1, 1) for i in n.input):
            sd["prompt_encoder.no_mask_embed.weight"] = inits[next(i for i in n.input if i in inits)].reshape(1, -1)
        elif n.op_type == "Expand" and n.input[0] in inits and inits[n.input[0]].shape[-2:] == (5, EMBED_DIM):
            tokens = inits[n.input[0]].reshape(5, EMBED_DIM)
            sd["mask_decoder.iou_token.weight"], sd["mask_decoder.mask_tokens.weight"] = tokens[:1], tokens[1:]
    # LayerNorm2d by channel count: 4 and 16 in the mask downscaling, 64 in the output upscaling.
    targets = {4: "prompt_encoder.mask_downscaling.1", 16: "prompt_encoder.mask_downscaling.4",
               64: "mask_decoder.output_upscaling.1"}
    for w, b in layer_norms:
        if len(w) in targets:
            sd[targets[len(w)] + ".weight"], sd[targets[len(w)] + ".bias"] = w, b
    return {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in sd.items()}


def load_sam_decoder_weights(model: SamBoxDecoder, path: str | Path) -> None:
    """Load SAM's prompt encoder + mask decoder from a ``SamOnnxModel`` ONNX export or a
    segment-anything checkpoint (``.pth``/``.safetensors``; a whole-SAM state dict is fine: the image
    encoder's keys are ignored). Strict: any missing tensor or wrong shape raises :class:`WeightsError`
    naming the file and what was expected."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: SAM decoder weights not found")
    if path.suffix == ".onnx":
        sd = _onnx_state_dict(path)
    else:
        sd = {k: v for k, v in read_state_dict(path).items()
              if k.startswith(("prompt_encoder.", "mask_decoder."))}
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    wrong = [f"{k}: file {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in sd and sd[k].shape != own[k].shape]
    if missing or wrong:
        what = (f"{len(missing)} of {len(own)} tensors missing (e.g. {', '.join(missing[:3])})" if missing
                else f"{len(wrong)} tensors of the wrong shape ({'; '.join(wrong[:3])})")
        raise WeightsError(f"{path}: not a SAM prompt encoder + mask decoder (ViT-style, 256 channels): "
                           f"{what}. Expected a segment-anything SamOnnxModel export or a SAM checkpoint.")
    model.load_state_dict({k: sd[k] for k in own}, strict=True)


def build_sam_decoder(weights: str | Path | None = None, pad_box: bool = True) -> SamBoxDecoder:
    model = SamBoxDecoder(pad_box)
    if weights is not None:
        load_sam_decoder_weights(model, weights)
    return model
