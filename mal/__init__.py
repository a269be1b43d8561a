"""mal: the Mask Auto-Labeler. Turn COCO box annotations into instance masks."""
__version__ = "0.1.0"
