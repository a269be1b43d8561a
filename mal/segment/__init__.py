"""Phase 2: train an instance segmenter on (auto-)labels, evaluate it, measure retention.

One module per step: ``model`` (build_segmenter), ``data`` (COCO masks, splits), ``train``
(train_segmenter), ``evaluate`` (evaluate_segmenter: full and mask-only protocols), ``intervals``
(bootstrap AP over evaluation images, seed summaries), ``retention``; ``cli`` parses arguments.
Import from those modules (this package stays light so `mal --help` does not load torch).
"""
