"""Reading a weights file (.safetensors, or a .pth/.pt state dict, possibly wrapped) into a state dict
of tensors, and the one error for a file that cannot be read or does not fit (:class:`WeightsError`)."""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import MalError


class WeightsError(MalError):
    """A checkpoint does not fit the backbone (missing/unexpected keys, shapes) or cannot be read."""


# Reading and loading are ours, not timm's load_checkpoint(filter_fn=): it raises a bare
# FileNotFoundError or torch's RuntimeError (not a WeightsError naming the file and the keys), loads
# strict or not with no allowance for the unused head, applies a filter that does not fit a converted
# file without falling back, and reads files otherwise (no "module" wrapper, non-tensors kept,
# torch.compile's "_orig_mod." stripped: a file refused here would load there).
def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            sd = load_file(str(path))
        else:
            try:  # memory-mapped: a multi-GB SAM checkpoint is not copied into memory to be read
                sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):  # only the legacy (pre-zip) format cannot be mapped
                    raise
                sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, wrong format (torch's own text advises unsafe loading: not ours)
        kind = "a .safetensors file" if path.suffix == ".safetensors" else "a PyTorch state dict (.pth/.pt)"
        raise WeightsError(f"{path}: cannot read weights: not {kind} of tensors (weights are a .safetensors "
                           f"or .pth state dict in timm's layout)") from e
    for key in ("state_dict", "model", "module"):  # common checkpoint wrappers
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise WeightsError(f"{path}: expected a state dict, got {type(sd).__name__}")
    return {k.removeprefix("module."): v for k, v in sd.items() if isinstance(v, torch.Tensor)}
