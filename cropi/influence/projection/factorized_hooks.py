"""Per-example hooks of the factorized projection (:mod:`cropi.influence.projection.factorized`).

:class:`FactorizedHooks` gets per-example projected gradients of a whole batch from ONE backward
pass: every covered ``nn.Linear`` contributes ``sum_t (P_out delta_t)(P_in a_t)^T`` per example
(the projector's layout rule and matrices), and with ``per_example_rest`` the parameters the
Kronecker map does not cover (embeddings, a tied ``lm_head``, norms) are sketched per example
from module hooks too, so no weight gradient is formed. Gradient checkpointing (forward
recomputation in backward) is not supported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from cropi.influence.projection.factorized import (
    FactorizedProjector,
    LinearBlock,
)
from cropi.utils.errors import CropiError


@dataclass(frozen=True)
class _RestRef:
    """One use of a remainder parameter by a module: ``kind`` is ``embedding`` (an
    ``nn.Embedding``'s weight), ``linear_weight`` / ``linear_bias`` (an ``nn.Linear`` the map
    does not cover, e.g. a tied ``lm_head``) or ``elementwise`` (a 1-D parameter of a norm-like
    module whose output is affine in it along the last dimension, e.g. an RMSNorm's weight)."""

    kind: str
    module: str
    attr: str
    param: str


class FactorizedHooks:
    """Per-example factorized projections of linear-weight gradients from one batched backward.

    ``row_to_example [B]`` (int64) maps each batch row to its example in ``[0, n_examples)``;
    several rows may share an example (e.g. the K responses of one prompt). Inside the context,
    every covered ``nn.Linear`` saves ``P_in a`` (``[B, T, k_in]``) in its forward hook and, in a
    tensor hook on its output, turns ``delta`` into ``P_out delta`` (``[B, T, k_out]``) and adds
    ``sum_t (P_out delta_t)(P_in a_t)^T`` of each row to its example's block. Usage::

        with FactorizedHooks(model, proj, row_to_example, n) as hooks:
            loss = per_example_losses.sum()      # the loss of example e is the sum over its rows
            loss.backward()
        feats = hooks.features(rest)             # [n, k]; rest: [n, k_rest] or None (n = 1)

    Every hooked forward call must have ``B`` rows as its leading dimension; a model run in
    several calls with different batch sizes (a shared prompt prefix, then its continuations)
    sets each call's map with :meth:`set_rows` before the call. Accumulation is in fp32 whatever
    the model's dtype; several backward passes accumulate (``reset()`` clears).

    **Per-example remainder** (``per_example_rest=True``): the parameters the Kronecker map does
    not cover are projected per example too, exactly (the same count-sketch as
    :meth:`FactorizedProjector.project`), from hooks on the modules that use them:

    - an ``nn.Embedding`` weight (also a tied one): the output gradient of each token added to
      its id's row, sketched sparsely (only the rows an example touched);
    - an ``nn.Linear`` weight the map leaves out (a tied ``lm_head``): each example's
      ``delta_e^T a_e`` formed once (the matrix product the one-example backward also computes)
      and sketched; a bias: the sum of the rows' output gradients;
    - a 1-D parameter of any other module (RMSNorm / LayerNorm weight and bias): per row
      ``sum_t delta_t * J_t`` with ``J = out(p = 1) - out(p = 0)`` recomputed in the forward
      hook, which assumes the output is affine in the parameter along the last dimension (true of
      norms' scales and shifts; a model with any other remainder parameter is refused).

    The context then also turns ``requires_grad`` off on every projected parameter (restored on
    exit) and makes the input embedding's output a leaf that requires grad, so the backward
    computes activation gradients only: no weight gradient is ever formed (``.grad`` stays
    None), and :meth:`features` needs no ``rest``.
    """

    def __init__(self, model: nn.Module, projector: FactorizedProjector,
                 row_to_example: torch.Tensor, n_examples: int, *,
                 per_example_rest: bool = False) -> None:
        self.model, self.projector = model, projector
        self.n_examples = int(n_examples)
        self.per_example_rest = bool(per_example_rest)
        self.set_rows(row_to_example)
        modules = dict(model.named_modules())
        self._modules = []
        for blk in projector.blocks:
            mod = modules.get(blk.module)
            if not isinstance(mod, nn.Linear) or tuple(mod.weight.shape) != (blk.out_features,
                                                                                blk.in_features):
                raise CropiError(f"module {blk.module!r} is not the linear layer the projector "
                                 "was built for", fix="build the projector from this model")
            self._modules.append((blk, mod))
        self._rest_refs: dict[str, list[_RestRef]] = {}
        self._rest_offset: dict[str, int] = {}
        if self.per_example_rest:
            self._plan_rest(modules)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._frozen: list[tuple[nn.Parameter, bool]] = []
        self.reset()

    # ------------------------------------------------------------------ rows and accumulators
    def set_rows(self, row_to_example: torch.Tensor) -> None:
        """The row map of the next hooked forward call(s) (``[B]`` int64 in ``[0, n_examples)``)."""
        rows = row_to_example.long()
        if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= self.n_examples):
            raise CropiError(f"row_to_example must lie in [0, {self.n_examples})")
        self._rows = rows

    @property
    def row_to_example(self) -> torch.Tensor:
        """The row map of the current (next) hooked forward call."""
        return self._rows

    @property
    def n_rows(self) -> int:
        return int(self._rows.numel())

    def reset(self) -> None:
        """Zero the accumulated ``[n_examples, k_linear]`` features (and the remainder's)."""
        dev = self._rows.device
        self._acc = torch.zeros(self.n_examples, self.projector.k_lin, dtype=torch.float32, device=dev)
        k_rest = self.projector.k - self.projector.k_lin
        self._rest_acc = torch.zeros(self.n_examples, k_rest, dtype=torch.float32, device=dev)
        self._rest_dense: dict[str, torch.Tensor] = {}  # 1-D parameters: [n_examples, numel]

    # ------------------------------------------------------------------ remainder plan
    def _plan_rest(self, modules: dict[str, nn.Module]) -> None:
        proj = self.projector
        shapes = dict(zip(proj.names, proj.shapes))
        offset = 0
        for name in proj.rest_names:
            self._rest_offset[name] = offset
            offset += shapes[name].numel()
        by_id = {id(p): n for n, p in self.model.named_parameters() if n in self._rest_offset}
        for mod_name, mod in modules.items():
            for attr, p in mod._parameters.items():
                if p is None or id(p) not in by_id:
                    continue
                name = by_id[id(p)]
                if isinstance(mod, nn.Embedding) and attr == "weight":
                    kind = "embedding"
                elif isinstance(mod, nn.Linear):
                    kind = f"linear_{attr}"
                elif p.dim() == 1:
                    kind = "elementwise"
                else:
                    raise CropiError(f"per-example projection cannot handle parameter {name!r} "
                                     f"({type(mod).__name__}.{attr}, shape {tuple(p.shape)})",
                                     fix="score one prompt per backward (gradient.prompts_per_backward: 1)")
                self._rest_refs.setdefault(mod_name, []).append(_RestRef(kind, mod_name, attr, name))
        missing = set(self._rest_offset) - {r.param for refs in self._rest_refs.values() for r in refs}
        if missing:
            raise CropiError(f"remainder parameters used by no module: {sorted(missing)}")

    # ------------------------------------------------------------------ context
    def __enter__(self) -> FactorizedHooks:
        for blk, mod in self._modules:
            self._handles.append(mod.register_forward_hook(self._forward_hook(blk), with_kwargs=True))
        if self.per_example_rest:
            modules = dict(self.model.named_modules())
            root = self._input_embedding()
            root_name = next((n for n, m in modules.items() if m is root), None)
            for mod_name, refs in self._rest_refs.items():
                if mod_name != root_name:
                    self._handles.append(modules[mod_name].register_forward_hook(
                        self._rest_hook(modules[mod_name], refs), with_kwargs=True))
            if root is not None:
                self._handles.append(root.register_forward_hook(
                    self._root_hook(root, self._rest_refs.get(root_name or "", [])), with_kwargs=True))
            params = dict(self.model.named_parameters())
            for name in self.projector.names:
                p = params[name]
                self._frozen.append((p, p.requires_grad))
                p.requires_grad_(False)
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for p, flag in self._frozen:
            p.requires_grad_(flag)
        self._frozen.clear()

    def _input_embedding(self) -> nn.Module | None:
        get = getattr(self.model, "get_input_embeddings", None)
        emb = get() if callable(get) else None
        if emb is None:
            emb = next((m for m in self.model.modules() if isinstance(m, nn.Embedding)), None)
        return emb

    def _check_rows(self, what: str, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[0] != self.n_rows:
            raise CropiError(f"layer {what!r} got input {tuple(x.shape)}; FactorizedHooks "
                             f"needs the {self.n_rows} batch rows as the leading dimension")
        return self._rows

    # ------------------------------------------------------------------ covered linear layers
    def _forward_hook(self, blk: LinearBlock) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> None:
            if not (torch.is_grad_enabled() and isinstance(output, torch.Tensor)
                    and output.requires_grad):
                return
            a = args[0] if args else kwargs["input"]
            rows = self._check_rows(blk.module, a)
            _, p_in = self.projector.matrices(blk, a.device)
            with torch.autocast(a.device.type, enabled=False):  # fp32 projection under autocast
                a_proj = a.detach().reshape(rows.numel(), -1, blk.in_features).float() @ p_in.T
            output.register_hook(lambda grad: self._accumulate(blk, a_proj, grad, rows))
        return hook

    def _accumulate(self, blk: LinearBlock, a_proj: torch.Tensor, grad: torch.Tensor,
                    rows: torch.Tensor | None = None) -> None:
        """Add rows' ``(P_out delta)^T (P_in a)`` (``[B, k_out, k_in]``) to their examples."""
        rows = self._rows if rows is None else rows
        n = rows.numel()
        p_out, _ = self.projector.matrices(blk, grad.device)
        d_proj = grad.reshape(n, -1, blk.out_features).float() @ p_out.T      # [B, T, k_out]
        per_row = (d_proj.transpose(1, 2) @ a_proj).reshape(n, -1)            # [B, k_l]
        self._acc[:, blk.row:blk.row + blk.k_l].index_add_(0, rows.to(self._acc.device),
                                                            per_row.to(self._acc.device))

    # ------------------------------------------------------------------ remainder hooks
    def _root_hook(self, module: nn.Module, refs: list[_RestRef]) -> Callable[..., torch.Tensor | None]:
        """The input embedding: its output becomes a leaf that requires grad (the weights are
        frozen), and its weight's per-example gradient is taken when it is projected."""
        def hook(mod: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> torch.Tensor | None:
            if not torch.is_grad_enabled():
                return None
            leaf = output.detach().requires_grad_(True)
            if refs:
                self._rest_hook(module, refs)(mod, args, kwargs, leaf)
            return leaf
        return hook

    def _rest_hook(self, module: nn.Module, refs: list[_RestRef]) -> Callable[..., None]:
        def hook(mod: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> None:
            if not (torch.is_grad_enabled() and isinstance(output, torch.Tensor)
                    and output.requires_grad):
                return
            x = args[0] if args else next(iter(kwargs.values()))
            rows = self._check_rows(refs[0].module, x)
            saved: list[tuple[_RestRef, torch.Tensor | None]] = []
            for ref in refs:
                if ref.kind == "embedding":
                    saved.append((ref, x.detach()))
                elif ref.kind == "linear_weight":
                    saved.append((ref, x.detach()))
                elif ref.kind == "linear_bias":
                    saved.append((ref, None))
                else:
                    saved.append((ref, self._jacobian(mod, ref.attr, args, kwargs)))
            output.register_hook(lambda grad: self._accumulate_rest(saved, grad, rows))
        return hook

    @staticmethod
    def _jacobian(mod: nn.Module, attr: str, args: tuple, kwargs: dict) -> torch.Tensor:
        """``out(p = 1) - out(p = 0)`` for the 1-D parameter ``attr`` (others at their values):
        d out / d p elementwise for an output affine in ``p`` along the last dimension."""
        p = mod._parameters[attr]
        try:
            with torch.no_grad():
                mod._parameters[attr] = torch.ones_like(p)
                one = mod.forward(*args, **kwargs)
                mod._parameters[attr] = torch.zeros_like(p)
                zero = mod.forward(*args, **kwargs)
        finally:
            mod._parameters[attr] = p
        return (one - zero).detach()

    def _accumulate_rest(self, saved: list[tuple[_RestRef, torch.Tensor | None]],
                         grad: torch.Tensor, rows: torch.Tensor) -> None:
        n = rows.numel()
        dev = self._rest_acc.device
        for ref, x in saved:
            off = self._rest_offset[ref.param]
            if ref.kind == "embedding":
                assert x is not None
                width = grad.shape[-1]
                ids = x.reshape(n, -1)
                base = int(ids.max()) + 1
                d = grad.reshape(n, ids.shape[1], width).float()
                keys = (rows.to(ids.device)[:, None] * base + ids).reshape(-1)  # (example, id)
                uniq, inv = torch.unique(keys, return_inverse=True)
                vals = torch.zeros(uniq.numel(), width, dtype=torch.float32, device=d.device)
                vals.index_add_(0, inv.to(d.device), d.reshape(-1, width))
                ex, tok = uniq // base, uniq % base
                self._sketch_rows(off, width, ex.to(dev), tok.to(dev), vals.to(dev))
            elif ref.kind == "linear_weight":
                assert x is not None
                out_f = grad.shape[-1]
                d = grad.reshape(n, -1, out_f)
                a = x.reshape(n, -1, x.shape[-1]).to(d.dtype)
                for e in torch.unique(rows).tolist():
                    sel = (rows == e).nonzero().squeeze(1).to(d.device)
                    g = d[sel].reshape(-1, out_f).T @ a[sel].reshape(-1, a.shape[-1])  # [out, in]
                    self._sketch_dense(off, int(e), g.float().reshape(1, -1))
            else:
                if ref.kind == "linear_bias":
                    per_row = grad.reshape(n, -1, grad.shape[-1]).float().sum(1)
                else:
                    assert x is not None
                    per_row = (grad.float() * x.float()).reshape(n, -1, grad.shape[-1]).sum(1)
                buf = self._rest_dense.get(ref.param)
                if buf is None:
                    buf = torch.zeros(self.n_examples, per_row.shape[-1], dtype=torch.float32, device=dev)
                    self._rest_dense[ref.param] = buf
                buf.index_add_(0, rows.to(dev), per_row.to(dev))

    def _sketch_dense(self, offset: int, example: int, values: torch.Tensor) -> None:
        """Add the count-sketch of ``values [1, m]`` at remainder coordinates
        ``[offset, offset + m)`` to ``example``'s remainder features."""
        rest = self.projector.rest
        assert rest is not None
        out = self._rest_acc[example:example + 1]
        pos, m = offset, values.shape[1]
        while pos < offset + m:
            c, off = divmod(pos, rest.chunk)
            take = min(offset + m - pos, rest.chunk - off)
            rest._apply(c, [(off, values[:, pos - offset:pos - offset + take].to(out.device))], out)
            pos += take

    def _sketch_rows(self, offset: int, width: int, examples: torch.Tensor, row_ids: torch.Tensor,
                     values: torch.Tensor) -> None:
        """Add the count-sketch of sparse rows (``values [U, width]`` at rows ``row_ids`` of a
        ``[*, width]`` parameter starting at remainder coordinate ``offset``) to ``examples``."""
        rest = self.projector.rest
        assert rest is not None
        k_rest = self._rest_acc.shape[1]
        coords = offset + row_ids[:, None] * width + torch.arange(width, device=row_ids.device)
        chunks = coords // rest.chunk
        flat_out = self._rest_acc.view(-1)
        for c in torch.unique(chunks).tolist():
            m = chunks == c
            local = (coords[m] - c * rest.chunk).long()
            r = rest.codes(c, flat_out.device)[local].long()
            ex = examples[:, None].expand_as(coords)[m]
            flat_out.index_add_(0, ex * k_rest + (r >> 1), values[m] * (1 - 2 * (r & 1)).to(values.dtype))

    # ------------------------------------------------------------------ results
    def linear_features(self) -> torch.Tensor:
        """``[n_examples, k_linear]`` float32 projected linear-weight gradients."""
        return self._acc.clone()

    def rest_features(self) -> torch.Tensor:
        """``[n_examples, k_rest]`` per-example remainder sketches (``per_example_rest`` only)."""
        out = self._rest_acc.clone()
        saved = self._rest_acc
        try:
            self._rest_acc = out
            for name, buf in self._rest_dense.items():
                for e in range(self.n_examples):
                    self._sketch_dense(self._rest_offset[name], e, buf[e:e + 1])
        finally:
            self._rest_acc = saved
        return out

    def features(self, rest: torch.Tensor | None = None) -> torch.Tensor:
        """``[n_examples, k]``: linear features, then the remainder ``rest [n_examples, k_rest]``.

        With ``per_example_rest`` the remainder comes from the hooks. Otherwise, with
        ``rest=None`` and one example, the remainder is projected from the parameters' ``.grad``
        (zero them before the backward pass); with several examples ``rest`` is required.
        """
        k_rest = self.projector.k - self.projector.k_lin
        if k_rest == 0:
            return self.linear_features()
        if rest is None and self.per_example_rest:
            rest = self.rest_features()
        if rest is None:
            if self.n_examples != 1:
                raise CropiError("the remainder (non-linear parameters) needs per-example gradients",
                                 fix="pass rest=projector.project_rest_batch(per-example grads)")
            params = dict(self.model.named_parameters())
            grads = [params[n].grad if params[n].grad is not None else torch.zeros_like(params[n])
                     for n in self.projector.rest_names]
            rest = self.projector.project_rest(grads).unsqueeze(0)
        return torch.cat([self._acc, rest.to(self._acc.device, torch.float32)], dim=1)
