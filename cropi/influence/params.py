"""Which parameters the influence gradient covers, and their fixed flattening order.

- ``all``:    every trainable parameter (tied weights once), as the paper does
- ``lora``:   LoRA adapter parameters attached with PEFT (B is zero at init, so A's gradient is zero
              there: only B carries signal at the first stage)
- ``filter``: parameters whose names match ``include`` and not ``exclude`` (regexes)

The order is ``model.named_parameters()`` order; it is recorded in manifests with the shapes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from cropi.config import GradientConfig
from cropi.utils.errors import CropiError
from cropi.utils.hashing import fingerprint


@dataclass
class ParamSet:
    names: list[str]
    params: list[torch.nn.Parameter]

    @property
    def dim(self) -> int:
        return sum(p.numel() for p in self.params)

    def spec(self) -> dict[str, Any]:
        layout = [[n, list(p.shape)] for n, p in zip(self.names, self.params, strict=True)]
        return {"n_tensors": len(self.names), "dim": self.dim, "layout_hash": fingerprint(layout)}

    def grads(self) -> list[torch.Tensor]:
        """Current ``.grad`` of each parameter (zeros where autograd left None)."""
        return [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None


def attach_lora(model: torch.nn.Module, rank: int) -> torch.nn.Module:
    """Wrap ``model`` with zero-initialised LoRA adapters on the attention projections."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    return get_peft_model(model, cfg)


def select_params(model: torch.nn.Module, cfg: GradientConfig) -> ParamSet:
    """Pick the parameters to differentiate; all others get ``requires_grad=False``."""
    named = list(model.named_parameters())
    if cfg.params == "lora":
        keep = [(n, p) for n, p in named if "lora_" in n]
        if not keep:
            raise CropiError("the model has no LoRA parameters", field="gradient.params",
                             fix="attach adapters with attach_lora() or use params=all")
    elif cfg.params == "filter":
        inc = re.compile(cfg.include) if cfg.include else None
        exc = re.compile(cfg.exclude) if cfg.exclude else None
        keep = [(n, p) for n, p in named
                if (inc is None or inc.search(n)) and (exc is None or not exc.search(n))]
        if not keep:
            raise CropiError("no parameter name matches", field="gradient.include",
                             fix="check the include/exclude regexes against model.named_parameters()")
    else:
        keep = named
    chosen = {id(p) for _, p in keep}
    for _, p in named:
        p.requires_grad_(id(p) in chosen)
    return ParamSet([n for n, _ in keep], [p for _, p in keep])
