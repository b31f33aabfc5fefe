"""Factorized (LoGra-style) projection: layout, Kronecker reference, per-example hooks."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from cropi.config import ProjectionConfig
from cropi.influence import projection
from cropi.influence.projection import dense_matrix
from cropi.influence.projection.factorized import FactorizedProjector, covered_linears
from cropi.influence.projection.factorized_hooks import FactorizedHooks
from cropi.utils.errors import CropiError

ROW_TO_EXAMPLE = torch.tensor([0, 1, 2, 0, 1, 2])  # 3 examples x 2 rows, interleaved
N_EXAMPLES = 3


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(projection, "CHUNK", 50)  # the remainder's count-sketch spans chunks


class MLP(nn.Module):
    """Two linear layers with a bias, a LayerNorm and a free scale (the remainder)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(5, 7)
        self.norm = nn.LayerNorm(7)
        self.fc2 = nn.Linear(7, 3, bias=False)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.norm(self.fc1(x)))) * self.scale


def _mlp_data() -> tuple[MLP, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = MLP().double()
    x = torch.randn(6, 4, 5, dtype=torch.float64)            # [rows, tokens, in]
    y = torch.randn(6, 4, 3, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0],
                         [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.float64)
    return model, x, y, mask


def _mlp_row_losses(model: MLP, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[rows]`` loss of each row: squared error summed over its unmasked tokens."""
    return (((model(x) - y) ** 2).sum(-1) * mask).sum(-1)


def _per_example_grads(model: nn.Module, row_loss_fn: Callable[[torch.Tensor], torch.Tensor],
                       n: int) -> list[list[torch.Tensor]]:
    """Exact per-example gradients by a loop: example e's loss over its own rows only."""
    params = [p for p in model.parameters() if p.requires_grad]
    out = []
    for e in range(n):
        rows = (ROW_TO_EXAMPLE == e).nonzero().squeeze(1)
        out.append([g.detach() for g in torch.autograd.grad(row_loss_fn(rows).sum(), params)])
    return out


def _projector(model: nn.Module, k: int, **kw: int) -> FactorizedProjector:
    return FactorizedProjector.from_model(model, ProjectionConfig(kind="factorized", k=k, seed=5), **kw)


def test_layout_rule_and_spec() -> None:
    model, *_ = _mlp_data()
    proj = _projector(model, 40)   # 2 linear layers + remainder: s = isqrt(40 // 3) = 3
    spec = proj.spec()
    assert spec["factor"] == 3 and [b["param"] for b in spec["layout"]] == ["fc1.weight", "fc2.weight"]
    fc1, fc2 = spec["layout"]
    # parameter order: scale (the root's own), fc1.weight, fc1.bias, norm.*, fc2.weight
    assert (fc1["k_out"], fc1["k_in"], fc1["row"], fc1["col"]) == (3, 3, 0, 3)
    assert (fc2["k_out"], fc2["k_in"], fc2["row"], fc2["col"]) == (3, 3, 9, 3 + 35 + 7 + 7 + 7)
    assert spec["k_linear"] == 18 and spec["rest"]["k"] == 22 and proj.k == 40
    assert spec["rest"]["params"] == ["scale", "fc1.bias", "norm.weight", "norm.bias"]
    assert spec["d"] == sum(p.numel() for p in model.parameters())
    capped = _projector(model, 200, factor=6)  # factors are capped by the layer's dims
    assert [(b.k_out, b.k_in) for b in capped.blocks] == [(6, 5), (3, 6)] and capped.k == 200
    only_linear = FactorizedProjector([("w", (7, 5))], {"w": "fc"}, k=40, seed=0)
    assert only_linear.k == 30 and only_linear.rest is None  # isqrt(40)=6 -> 6*5 <= k
    with pytest.raises(CropiError, match="no room"):
        _projector(model, 40, factor=5)


def test_project_equals_kronecker_dense_reference() -> None:
    model, x, y, mask = _mlp_data()
    proj = _projector(model, 40)
    dense = dense_matrix(proj)
    grads = _per_example_grads(model, lambda r: _mlp_row_losses(model, x[r], y[r], mask[r]), 3)
    for g in grads:
        ref = dense @ torch.cat([t.reshape(-1) for t in g])
        assert (proj.project(g).double() - ref).norm() / ref.norm() < 1e-5
    batched = proj.project_batch([torch.stack(ts) for ts in zip(*grads)])
    assert torch.allclose(batched[1], proj.project(grads[1]), rtol=1e-5, atol=1e-6)
    blk = proj.blocks[1]
    p_out, p_in = (m.double() for m in proj.matrices(blk, torch.device("cpu")))
    assert torch.equal(dense[blk.row:blk.row + blk.k_l, blk.col:blk.col + 21], torch.kron(p_out, p_in))


def test_hooks_give_per_example_projections_from_one_backward() -> None:
    model, x, y, mask = _mlp_data()
    proj = _projector(model, 40)
    grads = _per_example_grads(model, lambda r: _mlp_row_losses(model, x[r], y[r], mask[r]), 3)
    with FactorizedHooks(model, proj, ROW_TO_EXAMPLE, N_EXAMPLES) as hooks:
        _mlp_row_losses(model, x, y, mask).sum().backward()
    assert not model.fc1._forward_hooks and not model.fc2._forward_hooks  # removed on exit
    rest_names = proj.spec()["rest"]["params"]
    params = dict(model.named_parameters())
    rest = proj.project_rest_batch([torch.stack([g[list(params).index(n)] for g in grads])
                                    for n in rest_names])
    feats = hooks.features(rest)
    dense = dense_matrix(proj)
    assert feats.shape == (3, 40) and feats.dtype == torch.float32
    for e, g in enumerate(grads):
        ref = dense @ torch.cat([t.reshape(-1) for t in g])
        assert (feats[e].double() - ref).norm() / ref.norm() < 1e-5
    with pytest.raises(CropiError, match="per-example"):
        hooks.features()


def test_hooks_single_example_uses_grad_for_the_remainder() -> None:
    model, x, y, mask = _mlp_data()
    proj = _projector(model, 40)
    rows = torch.zeros(2, dtype=torch.long)
    model.zero_grad()
    with FactorizedHooks(model, proj, rows, 1) as hooks:
        _mlp_row_losses(model, x[:2], y[:2], mask[:2]).sum().backward()
    full = proj.project([p.grad for p in model.parameters()])
    assert torch.allclose(hooks.features()[0], full, rtol=1e-5, atol=1e-6)
    with pytest.raises(CropiError, match="leading dimension"):
        with FactorizedHooks(model, proj, ROW_TO_EXAMPLE, N_EXAMPLES):
            _mlp_row_losses(model, x[:2], y[:2], mask[:2]).sum().backward()


def _tiny_llama(tied: bool) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, vocab_size=256,
                      tie_word_embeddings=tied, attn_implementation="eager")
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).double()


def _llama_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """6 right-padded rows of lengths 3..8 in a [6, 8] batch (pad id 0)."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 256, (6, 8), generator=gen)
    lengths = torch.tensor([8, 5, 3, 6, 4, 7])
    attn = (torch.arange(8) < lengths[:, None]).long()
    return ids * attn, attn


def _llama_row_losses(model: nn.Module, ids: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """``[rows]`` next-token cross-entropy summed over real (unpadded) target tokens."""
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1]
    ce = nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
    return (ce * attn[:, 1:]).sum(-1)


def test_llama_hooks_match_exact_per_example_gradients() -> None:
    model = _tiny_llama(tied=False)
    ids, attn = _llama_batch()
    proj = _projector(model, 256)  # 15 linear layers (incl. lm_head) + remainder: s = 4
    assert len(proj.blocks) == 15 and proj.blocks[-1].param == "lm_head.weight"
    assert proj.factor == 4 and proj.k == 256
    grads = _per_example_grads(model, lambda r: _llama_row_losses(model, ids[r], attn[r]), 3)
    with FactorizedHooks(model, proj, ROW_TO_EXAMPLE, N_EXAMPLES) as hooks:
        _llama_row_losses(model, ids, attn).sum().backward()
    lin = hooks.linear_features()
    names = [n for n, _ in model.named_parameters()]
    for blk in proj.blocks:
        p_out, p_in = (m.double() for m in proj.matrices(blk, torch.device("cpu")))
        for e, g in enumerate(grads):
            ref = (p_out @ g[names.index(blk.param)] @ p_in.T).reshape(-1)
            got = lin[e, blk.row:blk.row + blk.k_l].double()
            assert (got - ref).norm() <= 1e-5 * ref.norm() + 1e-9, blk.param
    rest = proj.project_rest_batch([torch.stack([g[names.index(n)] for g in grads])
                                    for n in proj.rest_names])
    full = torch.stack([proj.project(g) for g in grads])
    assert torch.allclose(hooks.features(rest), full, rtol=1e-4, atol=1e-5)


def test_tied_lm_head_is_left_to_the_remainder() -> None:
    model = _tiny_llama(tied=True)
    params = [(n, p) for n, p in model.named_parameters()]
    covered = covered_linears(model, params)
    assert "lm_head" not in covered.values() and len(covered) == 14
    proj = _projector(model, 256)
    assert "model.embed_tokens.weight" in proj.rest_names
    ids, attn = _llama_batch()
    model.zero_grad()
    with FactorizedHooks(model, proj, torch.zeros(2, dtype=torch.long), 1) as hooks:
        _llama_row_losses(model, ids[:2], attn[:2]).sum().backward()
    full = proj.project([p.grad for p in model.parameters()])
    assert torch.allclose(hooks.features()[0], full, rtol=1e-4, atol=1e-5)
