"""Score predicted instance masks against ground-truth masks of the *same* boxes.

Both inputs are COCO instances JSON (paths or loaded dicts). Because an
auto-labeler turns given boxes into masks, predictions and ground truth must
describe exactly the same annotations (matched by annotation ``id``); any
disagreement means the comparison would be meaningless, so it raises
:class:`EvalError` instead of silently scoring a subset.

Masks are compared as pycocotools RLEs: intersection/union on run-lengths is
exactly the pixel count of the decoded masks, but needs no full-image arrays,
so thousands of instances on ~1000x1000 images evaluate in well under a second.
"""

from __future__ import annotations

import contextlib
import io
from collections import Counter, defaultdict

import numpy as np

from .coco_masks import EvalError, check_same_boxes, index_by_id, load_coco, mask_area, mask_iou, to_rle

__all__ = ["EvalError", "auroc", "evaluate", "format_report", "spearman", "to_rle"]

SMALL_MAX = 32 * 32  # COCO size rule: area < 32^2 is small
MEDIUM_MAX = 96 * 96  # area < 96^2 is medium, otherwise large
SIZES = ("small", "medium", "large")
LOW_IOU = 0.5  # score_quality: an instance below this IoU is "bad"


def _size_of(area: int) -> str:
    return "small" if area < SMALL_MAX else "medium" if area < MEDIUM_MAX else "large"


# --------------------------------------------------------------------------- aggregation


def _mean(xs) -> float | None:
    xs = list(xs)
    return float(np.mean(xs)) if xs else None


def _summarise(rows: list[dict]) -> tuple[float | None, float | None]:
    """(instance-mean IoU, mean over categories of per-category mean IoU)."""
    by_cat: dict = defaultdict(list)
    for r in rows:
        by_cat[r["category_id"]].append(r["iou"])
    return _mean(r["iou"] for r in rows), _mean(np.mean(v) for v in by_cat.values())


def _ranks(x) -> np.ndarray:
    """1-based ranks of x, ties sharing their average rank."""
    x = np.asarray(x, dtype=float)
    order = np.argsort(x, kind="mergesort")
    _, first, counts = np.unique(x[order], return_index=True, return_counts=True)
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(first + (counts + 1) / 2, counts)
    return ranks


def spearman(a, b) -> float | None:
    """Spearman rank correlation of a and b (average ranks for ties).

    None when it is undefined: fewer than two values, or either side constant.
    """
    ra, rb = _ranks(a), _ranks(b)
    if len(ra) != len(rb):
        raise ValueError(f"spearman: lengths differ ({len(ra)} vs {len(rb)})")
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = np.sqrt((ra @ ra) * (rb @ rb))
    return float(ra @ rb / denom) if len(ra) > 1 and denom > 0 else None


def auroc(labels, scores) -> float | None:
    """Area under the ROC curve of ``scores`` for detecting ``labels`` == 1.

    Mann-Whitney U / (n_pos * n_neg): the chance that a random positive scores
    higher than a random negative, ties counting 1/2. None without positives
    or without negatives.
    """
    labels = np.asarray(labels, dtype=bool)
    scores = np.asarray(scores, dtype=float)
    if labels.shape != scores.shape:
        raise ValueError(f"auroc: shapes differ ({labels.shape} vs {scores.shape})")
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    u = _ranks(scores)[labels].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def _score_quality(rows: list[dict], pr_anns: dict) -> dict | None:
    """Does the prediction ``score`` rank instances by their true IoU?

    Uses the scored instances among ``rows`` (the same IoUs as the mIoU);
    None if no prediction carries a score.
    """
    pairs = [(float(pr_anns[r["id"]]["score"]), r["iou"]) for r in rows
             if pr_anns[r["id"]].get("score") is not None]
    if not pairs:
        return None
    score, iou = np.array(pairs).T
    low = iou < LOW_IOU
    return {"spearman": spearman(score, iou),
            "auroc_low_iou": auroc(low, -score),  # low score should flag low IoU
            "n": len(pairs), "n_low": int(low.sum()), "threshold": LOW_IOU}


def coco_max_dets(annotations) -> list[int]:
    """COCOeval's ``maxDets``: its usual [1, 10, 100] with the last raised to the most instances on
    one image. At COCO's 100 every instance past the 100th of a dense image (nuclei, cells, crowds)
    would count as missed whatever the masks."""
    per_image = Counter(a["image_id"] for a in annotations)
    return [1, 10, max(100, max(per_image.values(), default=0))]


def coco_summary(ev) -> dict:
    """AP, AP50, AP75, APs, APm, APl of an accumulated COCOeval at its largest ``maxDets`` (None where
    there is no ground truth). ``COCOeval.summarize()`` reads AP at a fixed 100 detections instead."""
    p, prec = ev.params, ev.eval["precision"]  # (iouThrs, recThrs, catIds, areaRng, maxDets)
    m = len(p.maxDets) - 1

    def ap(iou: float | None = None, area: str = "all") -> float | None:
        s = prec[:, :, :, p.areaRngLbl.index(area), m]
        if iou is not None:
            s = s[np.isclose(p.iouThrs, iou)]
        s = s[s > -1]
        return float(s.mean()) if s.size else None

    return {"AP": ap(), "AP50": ap(0.5), "AP75": ap(0.75),
            "APs": ap(area="small"), "APm": ap(area="medium"), "APl": ap(area="large")}


def _coco_ap(gt: dict, gt_anns: dict, pr_anns: dict, rles: dict, gt_rles: dict) -> dict:
    """COCO segm AP with every prediction as a detection (pycocotools COCOeval)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    keys = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    if not pr_anns:  # loadRes crashes on an empty result list
        return dict.fromkeys(keys)

    anns = []
    for aid, a in gt_anns.items():
        a = dict(a)  # never mutate the caller's dict
        a.setdefault("iscrowd", 0)
        if "area" not in a:  # COCOeval buckets by this field
            a["area"] = float(mask_area(gt_rles[aid]))
        anns.append(a)
    cats = gt.get("categories") or [{"id": c} for c in sorted({a["category_id"] for a in anns})]
    coco_gt = COCO()
    coco_gt.dataset = {"images": gt["images"], "annotations": anns, "categories": cats}
    results = [{
        "image_id": p["image_id"],
        "category_id": p.get("category_id", gt_anns[aid]["category_id"]),
        "segmentation": rles[aid],
        "score": float(p.get("score", 1.0)),
    } for aid, p in pr_anns.items()]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress/tables
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, iouType="segm")
        ev.params.maxDets = coco_max_dets(anns)
        ev.evaluate()
        ev.accumulate()
    return coco_summary(ev)


# --------------------------------------------------------------------------- public API


def evaluate(gt: str | dict, pred: str | dict, *, compute_ap: bool = True) -> dict:
    """Score predicted masks against ground-truth masks of the same boxes.

    gt / pred: paths to COCO instances JSON files, or already-loaded dicts.
    Returns a JSON-serialisable dict with ``num_instances``, ``num_classes``,
    ``miou_instance``, ``miou_class``, ``miou_size``, ``per_class``,
    ``score_quality`` (how well the prediction ``score`` ranks instances by
    IoU: Spearman rho, and AUROC of a low score for IoU < 0.5; None if no
    prediction has a score), ``per_instance`` and (if ``compute_ap``) ``ap``.
    Crowd ground truth (``iscrowd`` = 1) is not scored in the mIoU figures. A prediction file with
    a subset of the ground truth's annotations (a labeled sample) is scored on those, and
    ``unscored`` counts the ground-truth annotations left out (0 otherwise).
    Raises EvalError if the inputs are unreadable or describe different boxes.
    """
    gt_d, gt_name = load_coco(gt, "ground-truth")
    pr_d, pr_name = load_coco(pred, "prediction")
    gt_imgs = index_by_id(gt_d["images"], "image", gt_name)
    index_by_id(pr_d["images"], "image", pr_name)  # refuses duplicate image ids
    gt_anns = index_by_id(gt_d["annotations"], "annotation", gt_name)
    pr_anns = index_by_id(pr_d["annotations"], "annotation", pr_name)
    unscored = len(set(gt_anns) - set(pr_anns))
    if unscored and pr_anns and set(pr_anns) <= set(gt_anns):
        # A labeled subset of the data set: score the annotations it has (and AP on their images).
        gt_anns = {aid: g for aid, g in gt_anns.items() if aid in pr_anns}
        on = {g.get("image_id") for g in gt_anns.values()}
        gt_d = {**gt_d, "annotations": list(gt_anns.values()), "images": [im for im in gt_d["images"] if im["id"] in on]}
        gt_imgs = {i: im for i, im in gt_imgs.items() if i in on}
    else:
        unscored = 0
    check_same_boxes(gt_d, pr_d, other_name=pr_name, ref_name=gt_name)
    for aid, g in gt_anns.items():
        if g.get("image_id") not in gt_imgs:
            raise EvalError(f"annotation {aid}: image_id {g.get('image_id')} not in {gt_name} images")
        if pr_anns[aid].get("segmentation") is None:
            raise EvalError(f"annotation {aid} in {pr_name} has no 'segmentation'")

    cat_names: dict = {c["id"]: str(c.get("name", c["id"])) for c in gt_d.get("categories") or []}

    gt_rles, pr_rles, rows = {}, {}, []
    for aid, g in gt_anns.items():
        img = gt_imgs[g["image_id"]]
        h, w = int(img["height"]), int(img["width"])
        if g.get("segmentation") is None:
            raise EvalError(f"annotation {aid} in {gt_name} has no 'segmentation'")
        gr = gt_rles[aid] = to_rle(g["segmentation"], h, w, aid, gt_name)
        pr = pr_rles[aid] = to_rle(pr_anns[aid]["segmentation"], h, w, aid, pr_name)
        if g.get("iscrowd", 0):
            continue  # crowd regions are not single instances; only AP (which ignores them) sees them
        g_area = mask_area(gr)
        rows.append({"id": aid, "image_id": g["image_id"], "category_id": g["category_id"],
                     "iou": mask_iou(pr, gr, mask_area(pr), g_area), "gt_area": g_area,
                     "size": _size_of(g_area)})

    miou_inst, miou_cls = _summarise(rows)
    miou_size = {}
    for s in SIZES:
        sub = [r for r in rows if r["size"] == s]
        mi, mc = _summarise(sub)
        miou_size[s] = {"miou_instance": mi, "miou_class": mc, "count": len(sub)} if sub else None

    by_cat: dict = defaultdict(list)
    for r in rows:
        by_cat[r["category_id"]].append(r["iou"])
    per_class = {}
    for cid in sorted(by_cat, key=str):
        name = cat_names.get(cid, str(cid))
        if name in per_class:  # two ids sharing a name must not overwrite each other
            name = f"{name} ({cid})"
        per_class[name] = {"category_id": cid, "miou": float(np.mean(by_cat[cid])),
                           "count": len(by_cat[cid])}

    report = {
        "num_instances": len(rows),
        "num_classes": len(by_cat),
        "miou_instance": miou_inst,
        "miou_class": miou_cls,
        "miou_size": miou_size,
        "per_class": per_class,
        "score_quality": _score_quality(rows, pr_anns),
        "unscored": unscored,
    }
    if compute_ap:
        report["ap"] = _coco_ap(gt_d, gt_anns, pr_anns, pr_rles, gt_rles)
    report["per_instance"] = rows
    return report


def _f(x: float | None, nd: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{nd}f}"


def format_report(report: dict) -> str:
    """A short human-readable table of an :func:`evaluate` report."""
    lines = [
        f"instances {report['num_instances']}  classes {report['num_classes']}",
        f"mIoU  instance {_f(report['miou_instance'])}  class {_f(report['miou_class'])}",
        "      " + "  ".join(
            f"{s} {_f(b['miou_instance'], 2)} (n={b['count']})" if b else f"{s} n/a (n=0)"
            for s, b in ((s, report["miou_size"].get(s)) for s in SIZES)),
    ]
    ap = report.get("ap")
    if ap:
        lines.append(f"AP    segm {_f(ap['AP'])}  AP50 {_f(ap['AP50'], 2)}  AP75 {_f(ap['AP75'], 2)}  "
                     f"(S {_f(ap['APs'], 2)} M {_f(ap['APm'], 2)} L {_f(ap['APl'], 2)})")
    sq = report.get("score_quality")
    if sq:
        lines.append(f"score vs IoU: Spearman {_f(sq['spearman'], 2)}, "
                     f"AUROC(IoU<{sq['threshold']:g}) {_f(sq['auroc_low_iou'], 2)} "
                     f"(n={sq['n']}, {sq['n_low']} below {sq['threshold']:g})")
    if report.get("unscored"):
        lines.append(unscored_line(report["unscored"]))
    return "\n".join(lines)


def unscored_line(n: int) -> str:
    return f"{n} ground-truth annotations are not in the prediction file(s) and were not scored"
