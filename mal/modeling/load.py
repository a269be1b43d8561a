"""Getting a trained labeler from a file: :func:`load_labeler` picks the torch labeler
(:mod:`mal.modeling.labeler`, a `mal train` run or .ckpt) or its ONNX export
(:mod:`mal.modeling.onnx_labeler`), two modules that do not import each other: this one is above
both. :func:`build_sam_labeler` makes a labeler from a Segment-Anything checkpoint
(:mod:`mal.modeling.sam_checkpoint`)."""
from __future__ import annotations

from pathlib import Path

from .labeler import MaskLabeler, build_labeler, load_trained
from .onnx_labeler import OnnxLabeler, export_dir
from .sam_checkpoint import inspect_sam_checkpoint


def is_labeler(obj) -> bool:
    """A trained labeler (torch :class:`MaskLabeler` or its ONNX export), not an engine or a path."""
    return isinstance(obj, (MaskLabeler, OnnxLabeler))


def load_labeler(path: str | Path):
    """Load a trained labeler from a run directory (model.safetensors + config.json), from a
    Lightning checkpoint (.ckpt) written by ``mal train``, or from a ``mal export-onnx`` directory
    (or one of its .onnx files): then an :class:`~.onnx_labeler.OnnxLabeler`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found (--model takes a `mal train` run directory, a .ckpt or a "
                                "`mal export-onnx` directory)")
    onnx_dir = export_dir(path)
    if onnx_dir is not None:
        return OnnxLabeler(onnx_dir)
    return load_trained(path)


def build_sam_labeler(path: str | Path, sam_type: str | None = None, base=None):
    """A zero-shot SAM labeler (eval mode) from one SAM checkpoint: trunk, neck, prompt encoder and
    decoder all read from ``path`` (strictly: a missing tensor or wrong shape is an error naming it)."""
    ckpt = inspect_sam_checkpoint(path, sam_type)
    return build_labeler(ckpt.labeler_config(base), weights=ckpt.path, neck_weights=ckpt.path,
                         decoder_weights=ckpt.path).eval()
