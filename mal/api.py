"""The Python API: train(), label(), evaluate() (and merge(), format_report()). The CLI is a thin
layer over these; each lives next to the work it does:

- :func:`train` is :func:`mal.train.train_labeler` (data, Trainer, student + EMA teacher);
- :func:`label` and :func:`merge` are :mod:`mal.labeling.label`'s (the labeling job's entry: the trained
  labeler or any engine);
- :func:`evaluate` and :func:`format_report` are :mod:`mal.evaluate`'s;
- :func:`export_onnx` is :mod:`mal.modeling.onnx_export`'s (``mal label --model`` takes its output).
"""
from __future__ import annotations

from .evaluate import evaluate, format_report  # noqa: F401  (re-exported)
from .labeling.label import label, merge  # noqa: F401  (re-exported)
from .modeling.onnx_export import export_onnx  # noqa: F401  (re-exported)
from .train import resolve_decoder  # noqa: F401  (re-exported: mal train's --decoder auto)
from .train import train_labeler as train  # noqa: F401  (re-exported)
