"""Bootstrap intervals of COCO AP over evaluation images, and summaries over training seeds.

``COCOeval.evaluate()`` matches detections to ground truth image by image; AP is then a function of
those per-image match tables alone. Resampling the evaluation images with replacement is the same
as weighting each image by the number of times it was drawn (an image drawn twice counts twice, one
not drawn counts zero), so a resample re-accumulates the tables of one ``evaluate()`` with weights
instead of matching again. With every weight 1, :func:`accumulate_ap` is ``COCOeval.accumulate()`` +
``summarize()`` for AP, AP50 and AP75 (area "all", 100 detections per image), to float rounding.
Pure numpy; every resample is drawn from a seeded generator, so intervals are deterministic.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FIGURES = ("AP", "AP50", "AP75")
_CELLS = 2_000_000  # floats per chunk of (resamples x IoU thresholds x detections)


@dataclass
class MatchTables:
    """COCOeval's per-image matches, flattened per category (area "all", 100 detections per image).

    ``categories[k]``: (image index (D,), true positives (T, D), false positives (T, D)), the detections
    of every image in COCOeval's order (images in ``image_ids`` order, then by score: mergesort, as
    COCOeval); ``npig[k, i]``: ground truths of category k in image i that are not ignored (crowd)."""
    image_ids: list[int]
    categories: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
    npig: np.ndarray
    iou_thrs: np.ndarray
    rec_thrs: np.ndarray


def match_tables(ev) -> MatchTables:
    """The tables of a ``pycocotools`` COCOeval after ``evaluate()`` (``accumulate()`` is not needed)."""
    p = ev.params
    n_img, n_area = len(p.imgIds), len(p.areaRng)
    a0 = p.areaRngLbl.index("all")
    T = len(p.iouThrs)
    cats, npig = [], np.zeros((len(p.catIds), n_img), np.int64)
    for k in range(len(p.catIds)):
        idx, scores, tps, fps = [], [], [], []
        for i in range(n_img):
            e = ev.evalImgs[(k * n_area + a0) * n_img + i]
            if e is None:
                continue
            npig[k, i] = int(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0))
            m, ig = np.asarray(e["dtMatches"]).reshape(T, -1) > 0, np.asarray(e["dtIgnore"], bool).reshape(T, -1)
            idx.append(np.full(m.shape[1], i))
            scores.append(np.asarray(e["dtScores"], float))
            tps.append(m & ~ig)
            fps.append(~m & ~ig)
        if not idx:
            cats.append((np.zeros(0, int), np.zeros((T, 0), bool), np.zeros((T, 0), bool)))
            continue
        order = np.argsort(-np.concatenate(scores), kind="mergesort")
        cats.append((np.concatenate(idx)[order], np.concatenate(tps, 1)[:, order],
                     np.concatenate(fps, 1)[:, order]))
    return MatchTables(list(p.imgIds), cats, npig, np.asarray(p.iouThrs), np.asarray(p.recThrs))


def resample_weights(n_images: int, n: int, seed: int = 0) -> np.ndarray:
    """(n, n_images) draw counts: row b counts how often each image is in bootstrap resample b."""
    draws = np.random.default_rng(seed).integers(0, n_images, size=(n, n_images))
    rows = np.repeat(np.arange(n), n_images)
    return np.bincount(rows * n_images + draws.ravel(), minlength=n * n_images).reshape(n, n_images)


def accumulate_ap(t: MatchTables, weights: np.ndarray) -> np.ndarray:
    """(B, 3) AP, AP50, AP75 of B image weightings (rows of ``weights``, (B, images)); NaN where no
    category has a ground truth (COCOeval's -1). ``np.ones((1, n))`` gives COCOeval's own numbers."""
    W = np.atleast_2d(np.asarray(weights, float))
    B, T, R = len(W), len(t.iou_thrs), len(t.rec_thrs)
    prec = np.zeros((B, T))        # per resample and IoU threshold: sum over categories of mean precision
    n_cats = np.zeros(B)
    for (img, tp, fp), npig_k in zip(t.categories, t.npig):
        npig = W @ npig_k
        rows = np.flatnonzero(npig > 0)  # categories without ground truth are left out, as COCOeval
        D = tp.shape[1]
        n_cats[rows] += 1
        if D == 0 or not len(rows):
            continue                 # ground truth but no detection: precision 0
        for c in np.array_split(rows, max(1, -(-len(rows) * T * D // _CELLS))):
            w = W[c][:, img][:, None, :]                           # (b, 1, D)
            tps, fps = np.cumsum(w * tp, axis=2), np.cumsum(w * fp, axis=2)
            rc = tps / npig[c, None, None]
            pr = tps / (fps + tps + np.spacing(1))
            pr = np.flip(np.maximum.accumulate(np.flip(pr, 2), axis=2), 2)  # precision envelope
            # COCOeval: index of the first recall >= each threshold = the number of recalls below it.
            # Point j is below threshold r iff r >= (the number of thresholds <= rc_j): count by histogram.
            n_le = np.searchsorted(t.rec_thrs, rc, side="right").reshape(-1, D)
            offs = np.arange(len(n_le))[:, None] * (R + 1)
            first = np.bincount((n_le + offs).ravel(), minlength=len(n_le) * (R + 1))
            first = first.reshape(-1, R + 1).cumsum(1)[:, :R].reshape(len(c), T, R)
            q = np.take_along_axis(pr, np.minimum(first, D - 1), axis=2)
            prec[c] += np.where(first < D, q, 0.0).mean(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_t = prec / n_cats[:, None]
    i50, i75 = (int(np.flatnonzero(np.isclose(t.iou_thrs, v))[0]) for v in (0.5, 0.75))
    return np.stack([per_t.mean(axis=1), per_t[:, i50], per_t[:, i75]], axis=1)


def weighted_means(values: np.ndarray, image_index: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(B,) mean of per-instance ``values`` (N,) under B image weightings (``weights`` (B, images);
    ``image_index`` (N,): each value's image, in the weights' order): an instance counts as often as
    its image was drawn. NaN where a resample drew no image with an instance."""
    W = np.atleast_2d(np.asarray(weights, float))[:, np.asarray(image_index, int)]  # (B, N)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (W @ np.asarray(values, float)) / W.sum(axis=1)


def _num(v) -> float | None:
    return None if v is None or not np.isfinite(v) else float(v)


def _interval(samples: np.ndarray) -> tuple[float | None, float | None]:
    s = samples[np.isfinite(samples)]
    if not len(s):
        return None, None
    lo, hi = np.percentile(s, [2.5, 97.5])
    return float(lo), float(hi)


def seed_summary(points, resampled: np.ndarray | None = None) -> dict:
    """One AP figure over S seeds: ``points`` (S,) the full-image values (None: undefined), ``resampled``
    (S, B) the same models on B image resamples (the same resamples for every seed). Returns mean,
    std (over seeds, ddof 1; None for one seed), min, max, and lo/hi: the 2.5/97.5 percentiles over
    resamples of the seed mean (None without resamples)."""
    x = np.array([np.nan if v is None else v for v in points], float)
    lo = hi = None
    if resampled is not None and np.size(resampled):
        lo, hi = _interval(np.asarray(resampled, float).mean(axis=0))
    ok = bool(np.isfinite(x).all())
    return {"mean": _num(x.mean()) if ok else None,
            "std": _num(x.std(ddof=1)) if ok and len(x) > 1 else None,
            "min": _num(x.min()) if ok else None, "max": _num(x.max()) if ok else None,
            "lo": lo, "hi": hi, "per_seed": [_num(v) for v in x]}


def ratio_summary(num, den, num_resampled: np.ndarray | None = None,
                  den_resampled: np.ndarray | None = None) -> dict:
    """A paired ratio (retention): seed k of the numerator with seed k of the denominator, on the same
    images (the same resample b for both), averaged over seeds. ``num``/``den`` (S,), ``*_resampled``
    (S, B). Returns mean, lo/hi (2.5/97.5 percentiles of the resampled seed mean of ratios; resamples
    where a denominator is 0 are left out) and per_seed. None where a denominator is 0 or missing."""
    n = np.array([np.nan if v is None else v for v in num], float)
    d = np.array([np.nan if v is None else v for v in den], float)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(d > 0, n / d, np.nan)
        lo = hi = None
        if num_resampled is not None and np.size(num_resampled):
            dr = np.asarray(den_resampled, float)
            lo, hi = _interval(np.where(dr > 0, np.asarray(num_resampled, float) / dr, np.nan).mean(axis=0))
    ok = bool(np.isfinite(r).all())
    return {"mean": _num(r.mean()) if ok else None, "lo": lo, "hi": hi, "per_seed": [_num(v) for v in r]}
