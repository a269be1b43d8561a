"""Peer labeling engines behind one interface: ``build_engine(name).predict(image, boxes)``.

- ``box``: the filled box (the floor every method must beat).
- ``ellipse``: the filled ellipse inscribed in the box (a training-free shape prior for round objects).
- ``grabcut``: OpenCV GrabCut initialised with the box.
- ``sam``: zero-shot box-prompted Segment-Anything from two ONNX files (encoder, decoder).
- ``sam2``: zero-shot box-prompted SAM 2 / 2.1 from one checkpoint (Meta's ``sam2`` package).
- ``mal``: a trained labeler, ``build_engine("mal", model="runs/mal")`` (``mal label`` runs it batched).

Any engine labels a COCO file with :func:`label_with_engine`, or one image in memory through
:class:`mal.predictor.MaskPredictor`.
"""
from __future__ import annotations

from ..errors import MalError
from .base import Engine, label_with_engine

__all__ = ["Engine", "ENGINE_NAMES", "build_engine", "label_with_engine"]

ENGINE_NAMES = ("sam", "sam2", "grabcut", "box", "ellipse", "mal")


def build_engine(name: str, **kwargs) -> Engine:
    """Build the engine called ``name`` ("sam", "sam2", "grabcut", "box", "ellipse" or "mal"); ``kwargs`` go to
    its constructor (e.g. ``encoder_path=``, ``decoder_path=`` for "sam", ``checkpoint=`` for "sam2",
    ``iterations=`` for "grabcut",
    ``model=`` a run directory and optionally ``device=``, ``precision=`` for "mal")."""
    key = str(name).strip().lower()
    if key == "box":
        from .box import BoxEngine
        return BoxEngine(**kwargs)
    if key == "ellipse":
        from .ellipse import EllipseEngine
        return EllipseEngine(**kwargs)
    if key == "grabcut":
        from .grabcut import GrabCutEngine
        return GrabCutEngine(**kwargs)
    if key == "sam":
        from .sam import SamEngine  # imports onnxruntime only when asked for
        return SamEngine(**kwargs)
    if key == "sam2":
        from .sam2 import Sam2Engine  # imports sam2 (and hydra) only when asked for
        return Sam2Engine(**kwargs)
    if key == "mal":
        if "model" not in kwargs:
            raise MalError("build_engine('mal') needs model= (a `mal train` run directory or .ckpt)")
        from .mal import MalEngine
        return MalEngine(**kwargs)
    raise MalError(f"unknown engine {name!r}; valid engines: {', '.join(ENGINE_NAMES)}")
