"""The two box-supervised losses of MAL, multiple-instance (box projection) and CRF refinement, and the
supervised loss of boxes given a human mask."""
from .crf import crf_loss, mean_field_refine
from .dice import dice_loss
from .mask import mask_loss
from .mil import mil_loss

__all__ = ["crf_loss", "dice_loss", "mask_loss", "mean_field_refine", "mil_loss"]
