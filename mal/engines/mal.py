"""The trained MAL labeler as an :class:`~mal.engines.base.Engine` (``build_engine("mal", model=RUN)``),
for code written against the engine interface; its masks are :class:`mal.predictor.MaskPredictor`'s.
``mal label`` labels with the model directly (:class:`mal.labeling.labelers.ModelLabeler`), batching boxes of
several images per forward pass, which is faster and gives the same masks."""
from __future__ import annotations

import numpy as np

from ..predictor import MaskPredictor


class MalEngine:
    name = "mal"

    def __init__(self, model, **kwargs):
        """model: a `mal train` run directory or .ckpt, a `mal export-onnx` directory, or a labeler; ``kwargs``:
        MaskPredictor's (device, precision, batch_size, threshold, expand, tta)."""
        from ..labeling.labelers import weights_sha256
        from ..modeling.load import is_labeler, load_labeler
        model = model if is_labeler(model) else load_labeler(model)
        self.predictor = MaskPredictor(model, **kwargs)
        self.identity = {"model": "mal", "weights_sha256": weights_sha256(model),
                         "threshold": self.predictor.threshold, "expand": self.predictor.expand,
                         **({"tta": "flip"} if self.predictor.tta else {})}

    def predict(self, image: np.ndarray, boxes_xyxy: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        self.predictor.set_image(image)
        masks, scores = self.predictor.predict(boxes_xyxy)
        return list(masks), scores
