"""onnxruntime sessions, opened one way for the SAM engine and the exported labeler: CPU, a thread
count that follows torch's (the process's share of the cores), and a one-line error naming the file."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import MalError


def num_threads() -> int:
    try:
        import torch
        n = torch.get_num_threads()
    except Exception:  # torch is a project dependency, but onnxruntime does not need it otherwise
        n = 0
    return max(1, n or os.cpu_count() or 1)


def open_session(path: str | Path, threads: int | None = None, *,
                 optimization: str = "all"):
    """An ``onnxruntime.InferenceSession`` for ``path`` on CPU with ``threads`` intra-op threads
    (default :func:`num_threads`); ``optimization``: onnxruntime's graph optimisation level
    ("disable", "basic", "extended", "all")."""
    import onnxruntime as ort
    levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    if optimization not in levels:
        raise MalError(f"optimization must be one of {', '.join(levels)}, not {optimization!r}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads or num_threads())
    opts.graph_optimization_level = levels[optimization]
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for corrupt files
        raise MalError(f"{path}: cannot load ONNX model: {e}") from e
