"""The two box-supervised losses of MAL: multiple-instance (box projection) and CRF refinement."""
from .crf import crf_loss, mean_field_refine
from .dice import dice_loss
from .mil import mil_loss

__all__ = ["crf_loss", "dice_loss", "mean_field_refine", "mil_loss"]
