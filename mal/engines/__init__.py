"""Peer labeling engines behind one interface: ``build_engine(name).predict(image, boxes)``.

- ``box``: the filled box (the floor every method must beat).
- ``grabcut``: OpenCV GrabCut initialised with the box.
- ``sam``: zero-shot box-prompted Segment-Anything from two ONNX files (encoder, decoder).

The trained MAL labeler (``mal label``) is not built here. Any engine labels a COCO file with
:func:`label_with_engine`.
"""
from __future__ import annotations

from .base import Engine, label_with_engine

__all__ = ["Engine", "ENGINE_NAMES", "build_engine", "label_with_engine"]

ENGINE_NAMES = ("sam", "grabcut", "box")


def build_engine(name: str, **kwargs) -> Engine:
    """Build the engine called ``name`` ("sam", "grabcut" or "box"); ``kwargs`` go to its constructor
    (e.g. ``encoder_path=``, ``decoder_path=`` for "sam", ``iterations=`` for "grabcut")."""
    key = str(name).strip().lower()
    if key == "box":
        from .box import BoxEngine
        return BoxEngine(**kwargs)
    if key == "grabcut":
        from .grabcut import GrabCutEngine
        return GrabCutEngine(**kwargs)
    if key == "sam":
        from .sam import SamEngine  # imports onnxruntime only when asked for
        return SamEngine(**kwargs)
    raise ValueError(f"unknown engine {name!r}; valid engines: {', '.join(ENGINE_NAMES)} "
                     f"(the trained MAL labeler is run by 'mal label', not through build_engine)")
