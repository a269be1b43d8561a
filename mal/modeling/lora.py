"""LoRA on an encoder's attention (as WeSAM adapts SAM's image encoder): a frozen ``nn.Linear`` plus a
trainable low-rank update, ``W x + B A x``, with B starting at zero so the adapted model starts exactly
as the pretrained one.

Used only while training (``TrainConfig.lora_rank``): :func:`merge_lora` folds the update back into
plain weights, so a saved labeler has the layout of an unadapted one and labels, exports and caches as
any other.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import MalError

TARGET = "attn.qkv"  # the query/key/value projection of timm's TinyViT/ViT and segment-anything's ViT


class LoRALinear(nn.Module):
    """forward: x (..., in) -> base(x) + x A^T B^T (..., out); ``base`` frozen, A (rank, in), B (out, rank)."""

    def __init__(self, base: nn.Linear, rank: int):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # nn.Linear's init, as in the LoRA paper's code

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.t().to(x.dtype)) @ self.lora_b.t().to(x.dtype)


def add_lora(module: nn.Module, rank: int, target: str = TARGET) -> list[str]:
    """Replace every ``nn.Linear`` of ``module`` whose name ends with ``target`` by a :class:`LoRALinear`
    of ``rank``, in place; returns their names. No such layer is an error (nothing would adapt)."""
    if rank < 1:
        raise MalError(f"LoRA rank must be >= 1, not {rank}")
    names = [n for n, m in module.named_modules() if n.endswith(target) and isinstance(m, nn.Linear)]
    if not names:
        raise MalError(f"LoRA: {getattr(module, 'name', type(module).__name__)} has no attention "
                       f"('{target}' linear layer) to adapt")
    for name in names:
        parent, _, child = name.rpartition(".")
        owner = module.get_submodule(parent) if parent else module
        setattr(owner, child, LoRALinear(getattr(owner, child), rank))
    return names


def is_adapter(name: str) -> bool:
    """True for the name of a LoRA weight (A or B) in a module's parameters or state dict."""
    return name.endswith((".lora_a", ".lora_b"))


def merge_lora(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict with LoRA layers (``P.base.weight``, ``P.base.bias``, ``P.lora_a``, ``P.lora_b``) ->
    the same with plain layers (``P.weight = base.weight + B A``, ``P.bias``). Others pass unchanged."""
    out = {}
    for k, v in state.items():
        if is_adapter(k):
            continue
        prefix, sep, rest = k.rpartition(".base.")
        if sep and f"{prefix}.lora_a" in state:
            if rest == "weight":
                a, b = state[f"{prefix}.lora_a"].float(), state[f"{prefix}.lora_b"].float()
                v = (v.float() + b @ a).to(v.dtype)
            k = f"{prefix}.{rest}"
        out[k] = v
    return out
