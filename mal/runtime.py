"""What training, labeling and phase 2 share: device and precision choices, the launcher's world
size, the run directory of a Lightning job (Trainer, last.ckpt, --resume), weight files and digests.

Lightning is imported inside the functions that need it, so labeling does not load it.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .errors import MalError

if TYPE_CHECKING:
    import lightning as L

log = logging.getLogger("mal")


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True when the CPU has bf16 matrix instructions (AMX or AVX512-BF16).

    Without them (e.g. AVX2-only CPUs) PyTorch emulates bf16 and autocast runs ~10x *slower* than
    fp32 (measured: TinyViT-5M training 0.26 vs 2.4 crops/s on a 2-core AMD EPYC), so "auto" picks fp32.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in ("amx_bf16", "avx512_bf16"))


def resolve_precision(precision: str, device: torch.device, *, cpu_bf16: bool = True) -> str:
    """'auto' -> 'bf16' on CUDA and (unless ``cpu_bf16`` is False) on CPUs with fast bf16, else '32'."""
    if precision not in ("auto", "bf16", "32"):
        raise MalError(f"precision must be auto, bf16 or 32, not {precision!r}")
    if precision == "auto":
        fast = device.type == "cuda" or (device.type == "cpu" and cpu_bf16 and cpu_has_fast_bf16())
        return "bf16" if fast else "32"
    return precision


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def quiet_lightning() -> None:
    """Silence Lightning notices that are noise for mal users: the 'modules in eval mode' warning
    (our encoders keep BatchNorm in eval on purpose), pytree deprecations, the logging-interval note
    of short runs and the logger advert; and
    print each of its log lines once: the ``lightning`` package's own handler ("INFO: ...") is dropped
    when the root logger has one (the CLI's), to which its records propagate anyway."""
    import warnings

    import lightning  # noqa: F401  (adds that handler on import)
    if logging.getLogger().hasHandlers():
        logging.getLogger("lightning").handlers.clear()
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
    warnings.filterwarnings("ignore", message=".*treespec.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")  # short runs, demo
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda r: not any(s in r.getMessage() for s in ("litlogger", "Detected KeyboardInterrupt")))


def launcher_world(devices: int | str, num_nodes: int) -> tuple[int | str, int]:
    """Devices per node and nodes: those of torchrun when it started us and nothing was asked for.

    Lightning needs ``devices`` x ``num_nodes`` to equal torchrun's world size; on CPU its "auto" is
    1 device, which under ``torchrun --nproc_per_node 2`` would train 2 unrelated models."""
    if (devices == "auto" and num_nodes == 1 and torch.distributed.is_available()
            and torch.distributed.is_torchelastic_launched()):
        per_node = int(os.environ["LOCAL_WORLD_SIZE"])
        return per_node, int(os.environ["WORLD_SIZE"]) // per_node
    return devices, num_nodes


def build_trainer(out: Path, *, accelerator: str, precision: str, devices: int | str, num_nodes: int,
                  epochs: int, max_steps: int, every: int, progress: bool, callbacks=()) -> L.Trainer:
    """A Trainer with mal's run layout (shared by `mal train` and `mal segment train`):
    ``out/checkpoints/last.ckpt`` every ``every`` steps, CSV logs in ``out/logs``.
    ``accelerator`` "cpu"/"gpu"; ``precision`` "bf16"/"32" (resolved by the caller)."""
    import lightning as L

    from .progress import lightning_progress
    return L.Trainer(
        default_root_dir=str(out), accelerator=accelerator, devices=devices, num_nodes=num_nodes,
        precision="bf16-mixed" if precision == "bf16" else "32-true",
        max_epochs=epochs if max_steps <= 0 else -1, max_steps=max_steps if max_steps > 0 else -1,
        # No version counter: a resumed run must overwrite last.ckpt, not write last-v1.ckpt beside it.
        callbacks=[L.pytorch.callbacks.ModelCheckpoint(dirpath=out / "checkpoints", save_last=True,
                                                       every_n_train_steps=every, enable_version_counter=False),
                   *callbacks, *([lightning_progress()] if progress else [])],
        logger=L.pytorch.loggers.CSVLogger(str(out), name="logs"),
        enable_progress_bar=progress, enable_model_summary=False, log_every_n_steps=10,
    )


def check_same_run(ckpt: Path, hparams: dict) -> None:
    """--resume continues the run in ``ckpt`` only with the model and losses it was started with:
    any other ``labeler`` / ``train`` setting (other than the schedule's length) or other human
    masks (``given_masks``, mal train --masks) is one clear error instead of a state-dict mismatch
    deep inside Lightning or a silently different run. Settings newer than the checkpoint (absent
    from it) are not compared, so runs started by an older version still resume."""
    saved = torch.load(str(ckpt), map_location="cpu", weights_only=False).get("hyper_parameters", {})
    diffs = [f"{group}.{k}: {saved[group].get(k)!r} in the checkpoint, {v!r} now"
             for group in ("labeler", "train") if isinstance(saved.get(group), dict)
             for k, v in hparams.get(group, {}).items()
             if k != "total_steps" and k in saved[group] and saved[group].get(k) != v]
    if saved.get("given_masks") != hparams.get("given_masks"):
        diffs.append(f"masks: {saved.get('given_masks')} in the checkpoint, {hparams.get('given_masks')} now")
    if diffs:
        raise MalError(f"{ckpt}: --resume needs the settings the run was started with; "
                         f"{len(diffs)} differ: " + "; ".join(diffs[:4]))


def fit_resumable(trainer: L.Trainer, module: L.LightningModule, loader, out: Path, *, resume: bool,
                  every: int) -> None:
    """fit(), from ``out/checkpoints/last.ckpt`` when ``resume``; the last stretch since the periodic
    checkpoint is saved too, so a later --resume starts from the true end.

    Not Lightning's ``ckpt_path="last"``: that takes the newest ``last*.ckpt`` in the folder (a stale
    ``last-v1.ckpt`` too) and only warns when there is none, while the settings check above needs
    the one file before fit() starts."""
    last = out / "checkpoints" / "last.ckpt"
    if resume and not last.is_file():
        log.warning("--resume: no checkpoint at %s; training from the start", last)
    if resume and last.is_file():
        check_same_run(last, dict(module.hparams))
    from lightning.pytorch.trainer.states import TrainerStatus
    try:
        trainer.fit(module, loader, ckpt_path=str(last) if resume and last.is_file() else None)
    except SystemExit:  # Lightning's answer to Ctrl-C; the CLI reports it in one line
        if trainer.state.status == TrainerStatus.INTERRUPTED:
            raise KeyboardInterrupt from None
        raise
    if trainer.global_step % every:
        trainer.save_checkpoint(last, weights_only=False)  # full state, as --resume needs
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # The processes are done with each other: close the process group now rather than at interpreter
        # exit, where gloo's threads can abort a process ("terminate called without an active exception").
        torch.distributed.destroy_process_group()


def tensors_sha256(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """sha256 (hex) over each name and its tensor's raw bytes, in the order given: equal hashes =
    the same tensors under the same names (e.g. ``sorted(model.state_dict().items())``)."""
    h = hashlib.sha256()
    for name, t in named:
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_weights(model: torch.nn.Module, config: dict, run_dir: str | Path, weights_file: str,
                 config_file: str) -> Path:
    """Write ``model``'s state dict as safetensors (atomically: a temporary file renamed into place)
    and ``config`` as JSON into ``run_dir``; returns the weights path. One writer for every trained
    model mal saves (the labeler, the segmenter)."""
    from safetensors.torch import save_file

    from .atomic import atomic_path
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(run_dir / weights_file) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp))
    (run_dir / config_file).write_text(json.dumps(config, indent=2))
    return run_dir / weights_file
