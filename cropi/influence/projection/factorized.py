"""LoGra-style factorized projection of ``nn.Linear`` weight gradients (the per-example hooks are
:mod:`cropi.influence.projection.factorized_hooks`).

For a linear layer ``y = W a`` (``W: [out, in]``), the gradient over tokens t is
``G = sum_t delta_t a_t^T`` with ``delta_t = dL/dy_t``. With two seeded Gaussian matrices
``P_in [k_in, in]`` (entries N(0, 1/k_in)) and ``P_out [k_out, out]`` (N(0, 1/k_out)) the layer's
projected gradient is

    P_out G P_in^T = sum_t (P_out delta_t) (P_in a_t)^T          # [k_out, k_in]

i.e. ``kron(P_out, P_in) @ vec(G)`` (row-major vec), an unbiased JL map
(``E[kron^T kron] = I``). The right-hand side needs only the k_in-dim projected inputs and the
k_out-dim projected output gradients, so ``FactorizedHooks`` obtains per-example projected
gradients for a whole batch from ONE backward pass, without any per-example full gradient.

**Layout rule.** Let ``n_lin`` be the covered linear weights (an ``nn.Linear.weight`` among the
projected parameters that no other module shares, so a tied ``lm_head``/embedding is *not*
covered) and ``d_rest`` the coordinates of all other parameters (biases, norms, embeddings, ...).
With ``n_parts = n_lin + (1 if d_rest else 0)`` every linear layer gets the factor
``s = floor(sqrt(k / n_parts))`` (or the ``factor`` given), ``k_in = min(s, in)``,
``k_out = min(s, out)``, ``k_l = k_in * k_out``; the remainder gets a count-sketch of
``k_rest = k - sum_l k_l`` (>= k / n_parts) over its ``d_rest`` coordinates. Output rows: the linear
blocks in parameter order, then the remainder. Without a remainder the output dimension is
``sum_l k_l <= k``; ``spec()`` holds the actual ``k`` and the full layout.

**Remainder.** The Kronecker map covers only linear weights. By default the caller supplies
the remainder: for a batch that holds ONE example it is just the parameters' ``.grad`` (used
automatically by ``FactorizedHooks.features()``); for several examples the caller computes the
remainder's per-example gradients itself and passes ``projector.project_rest_batch(...)`` to
``features``. With ``FactorizedHooks(..., per_example_rest=True)`` the hooks project the
remainder per example too (embeddings, a tied ``lm_head``, norms; see the class), exactly as
``project`` would from each example's own gradient, and no weight gradient is formed at all:
that is how ``gradient.prompts_per_backward > 1`` scores several prompts in one backward.
Gradient checkpointing (forward recomputation in backward) is not supported by the hooks.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from cropi.config import ProjectionConfig
from cropi.influence import projection as _projection
from cropi.influence.projection import CountSketchProjector
from cropi.utils.errors import CropiError
from cropi.utils.seeding import derive_seed


@dataclass(frozen=True)
class LinearBlock:
    """One covered linear weight: output rows ``[row, row + k_out*k_in)``, input coordinates
    ``[col, col + out*in)`` of the global (flattened parameter) index."""

    param: str
    module: str
    out_features: int
    in_features: int
    k_out: int
    k_in: int
    row: int
    col: int

    @property
    def k_l(self) -> int:
        return self.k_out * self.k_in


def covered_linears(model: nn.Module, params: Sequence[tuple[str, torch.Tensor]]) -> dict[str, str]:
    """``{param name: module name}`` of the ``nn.Linear`` weights a factorized map can cover.

    A weight is covered when it is among ``params`` and referenced by no other module (tied
    embeddings / lm_head are left to the remainder).
    """
    names = {id(p): n for n, p in params}
    refs: Counter[int] = Counter()
    for _, mod in model.named_modules():
        refs.update(id(p) for p in mod._parameters.values() if p is not None)
    out = {}
    for mod_name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and id(mod.weight) in names and refs[id(mod.weight)] == 1:
            out[names[id(mod.weight)]] = mod_name
    return out


class FactorizedProjector:
    """Factorized (Kronecker) projection for linear weights + count-sketch for the remainder."""

    kind = "factorized"

    def __init__(self, params: Sequence[tuple[str, Sequence[int]]], linear: Mapping[str, str],
                 k: int, seed: int, *, factor: int | None = None, chunk: int | None = None,
                 cache_bytes: int = 2**31) -> None:
        """``params``: (name, shape) of every projected parameter in gradient order;
        ``linear``: covered weight name -> module name (see :func:`covered_linears`)."""
        self.seed, self.chunk = int(seed), int(chunk or _projection.CHUNK)
        self.names = [n for n, _ in params]
        self.shapes = [torch.Size(s) for _, s in params]
        self.d = sum(s.numel() for s in self.shapes)
        self.blocks, self.rest_names, k_rest, self.factor = _plan(params, linear, int(k), factor)
        self.k_lin = sum(b.k_l for b in self.blocks)
        self.k = self.k_lin + k_rest
        self._by_name = {b.param: b for b in self.blocks}
        d_rest = self.d - sum(b.out_features * b.in_features for b in self.blocks)
        self.rest = None
        if d_rest and k_rest:
            self.rest = CountSketchProjector(k_rest, d_rest, derive_seed(seed, self.kind, "rest"),
                                             chunk=self.chunk, cache_bytes=cache_bytes)
        self._mats: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_model(cls, model: nn.Module, cfg: ProjectionConfig, *,
                   params: Sequence[tuple[str, torch.Tensor]] | None = None,
                   factor: int | None = None, cache_bytes: int = 2**31) -> FactorizedProjector:
        """Projector for ``params`` (default: trainable ``model.named_parameters()``)."""
        if params is None:
            params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        return cls([(n, p.shape) for n, p in params], covered_linears(model, params), cfg.k,
                   cfg.seed, factor=factor, cache_bytes=cache_bytes)

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "k": self.k, "d": self.d, "seed": self.seed,
                "sparse_ratio": 1.0, "distribution": "gaussian", "chunk": self.chunk,
                "factor": self.factor, "k_linear": self.k_lin,
                "layout": [asdict(b) for b in self.blocks],
                "rest": {"k": self.k - self.k_lin, "d": self.rest.d if self.rest else 0,
                         "params": self.rest_names}}

    def matrices(self, block: LinearBlock, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(P_out [k_out, out], P_in [k_in, in])`` float32 on ``device`` (cached)."""
        key = (block.param, str(device))
        if key not in self._mats:
            mats = []
            for side, k_s, n in (("out", block.k_out, block.out_features),
                                 ("in", block.k_in, block.in_features)):
                gen = torch.Generator().manual_seed(derive_seed(self.seed, self.kind, block.param, side))
                mats.append(torch.randn(k_s, n, generator=gen).div_(math.sqrt(k_s)).to(device))
            self._mats[key] = (mats[0], mats[1])
        return self._mats[key]

    def project(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        """Full parameter gradients ``[*shape_i]`` in ``params`` order -> ``[k]`` float32."""
        return self._run([g.unsqueeze(0) for g in grads])[0]

    def project_batch(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        """Tensors ``[B, *shape_i]`` in ``params`` order -> ``[B, k]`` float32."""
        return self._run(grads)

    def _run(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(grads) != len(self.names) or any(g.shape[1:] != s for g, s in zip(grads, self.shapes)):
            raise CropiError("gradients do not match the factorized projector's parameters",
                             fix="pass one tensor per parameter, in the order given at build time")
        b, dev = grads[0].shape[0], grads[0].device
        out = torch.zeros(b, self.k, dtype=torch.float32, device=dev)
        rest = []
        for name, g in zip(self.names, grads):
            blk = self._by_name.get(name)
            if blk is None:
                rest.append(g)
                continue
            p_out, p_in = self.matrices(blk, dev)
            proj = p_out @ g.to(dev, torch.float32) @ p_in.T                # [B, k_out, k_in]
            out[:, blk.row:blk.row + blk.k_l] = proj.reshape(b, -1)
        if self.rest is not None:
            out[:, self.k_lin:] = self.rest.project_batch(rest).to(dev)
        return out

    def project_rest(self, rest_grads: Sequence[torch.Tensor]) -> torch.Tensor:
        """Remainder gradients ``[*shape_i]`` (``spec()['rest']['params']`` order) -> ``[k_rest]``."""
        return self.project_rest_batch([g.unsqueeze(0) for g in rest_grads])[0]

    def project_rest_batch(self, rest_grads: Sequence[torch.Tensor]) -> torch.Tensor:
        """Remainder gradients ``[B, *shape_i]`` -> ``[B, k_rest]`` float32."""
        if self.rest is None:
            return torch.zeros(rest_grads[0].shape[0] if rest_grads else 1, 0,
                               device=rest_grads[0].device if rest_grads else None)
        return self.rest.project_batch(rest_grads)

    def _dense(self, dtype: torch.dtype) -> torch.Tensor:
        """``[k, d]``: ``kron(P_out, P_in)`` blocks, then the remainder's count-sketch columns."""
        dense = torch.zeros(self.k, self.d, dtype=dtype)
        cols, offset = [], 0
        for name, shape in zip(self.names, self.shapes):
            blk = self._by_name.get(name)
            if blk is None:
                cols.append(torch.arange(offset, offset + shape.numel()))
            else:
                p_out, p_in = (m.to(dtype) for m in self.matrices(blk, torch.device("cpu")))
                dense[blk.row:blk.row + blk.k_l, offset:offset + shape.numel()] = torch.kron(p_out, p_in)
            offset += shape.numel()
        if self.rest is not None:
            dense[self.k_lin:, torch.cat(cols)] = self.rest._dense(dtype)
        return dense


def _plan(params: Sequence[tuple[str, Sequence[int]]], linear: Mapping[str, str], k: int,
          factor: int | None) -> tuple[list[LinearBlock], list[str], int, int]:
    """The layout rule of the module docstring: (blocks, remainder names, k_rest, factor)."""
    n_lin = sum(1 for n, _ in params if n in linear)
    d_rest = sum(math.prod(s) for n, s in params if n not in linear)
    n_parts = n_lin + (1 if d_rest else 0)
    s = factor if factor is not None else math.isqrt(k // max(n_parts, 1))
    if n_lin and s < 1:
        raise CropiError(f"k={k} is too small for {n_parts} factorized parts (factor would be 0)",
                         field="projection.k", fix=f"use k >= {n_parts}")
    blocks, rest, row, col = [], [], 0, 0
    for name, shape in params:
        if name in linear:
            out_f, in_f = shape
            blk = LinearBlock(name, linear[name], out_f, in_f, min(s, out_f), min(s, in_f), row, col)
            blocks.append(blk)
            row += blk.k_l
        else:
            rest.append(name)
        col += math.prod(shape)
    k_rest = k - row if d_rest else 0
    if d_rest and k_rest < 1:
        raise CropiError(f"factor {s} leaves no room for the non-linear parameters within k={k}",
                         field="projection.k", fix="raise k or lower the factor")
    return blocks, rest, k_rest, s
