"""The adapted model against an independent reference of ToMe and VPT-deep, at timm's default init.

The reference shares only the timm modules' weights with the model (qkv, proj, norms, mlp, heads).
Attention (an explicit softmax with the log(size) bias), the bipartite matching, the size-weighted
merge, the r schedule and the pooling are written again here, one image at a time with plain
loops, after the ToMe paper (Bolya et al., ICLR 2023) and facebookresearch/ToMe. Everything runs in
float64, so the model must match to rounding.
"""

import warnings

import pytest
import torch

from otas.adapt import SOURCE, AdaptiveViT, MergeCapWarning
from otas.adapt.vit import key

from .conftest import small_model

VARIANTS = {
    "class_token": {},  # 1 prefix token, class-token pooling
    "registers": {"reg_tokens": 4, "no_embed_class": True},  # class token + 4 registers
    "avg_no_class": {"global_pool": "avg", "class_token": False},  # no prefix; mean of the patches
    "avg_registers": {"global_pool": "avg", "reg_tokens": 2},  # class + 2 registers, neither pooled
}
GAMMAS = (-14, -8, 0, 4)  # -14 runs out of tokens in the last block (r capped); 4 prompts
TASK = "t"


def _model(variant: str, merge_every: int = 1) -> AdaptiveViT:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MergeCapWarning)
        model = small_model(gammas=GAMMAS, tasks={TASK: 3}, **VARIANTS[variant]).double()
    model.config.merge_every = merge_every
    return model


def _images() -> torch.Tensor:
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


# -- the reference ------------------------------------------------------------------------------
def ref_schedule(num_tokens: int, r: int, depth: int, prefix: int, every: int = 1) -> list[int]:
    """r per block, capped at half the mergeable tokens left (each merge needs an A and a B token).

    every = k: the blocks are taken in groups of k; the first block of a group merges the group's
    r per block at once, the others none."""
    wanted = [0] * depth
    for start in range(0, depth, every):
        wanted[start] = r * len(range(start, min(start + every, depth)))
    schedule, n = [], num_tokens
    for want in wanted:
        schedule.append(min(want, (n - prefix) // 2))
        n -= schedule[-1]
    return schedule


def ref_attention(attn, x: torch.Tensor, size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One image's tokens x (N, C), sizes (N,) -> softmax(q k^T * scale + log size) v after proj (N, C),
    and the keys averaged over heads (N, head_dim): ToMe's matching metric."""
    N, H, hd = x.shape[0], attn.num_heads, attn.head_dim
    q, k, v = attn.qkv(x).reshape(N, 3, H, hd).permute(1, 2, 0, 3)  # (H, N, hd) each
    q, k = attn.q_norm(q), attn.k_norm(k)
    logits = q @ k.transpose(-1, -2) * hd**-0.5 + size.log()[None, None, :]  # (H, N, N): a key of size s counts s times
    out = (logits.softmax(dim=-1) @ v).transpose(0, 1).reshape(N, H * hd)  # (N, C)
    return attn.proj(attn.norm(out)), k.mean(dim=0)


def ref_merge(x: torch.Tensor, size: torch.Tensor, metric: torch.Tensor, r: int):
    """Bipartite soft matching of one image's mergeable tokens x (n, C), sizes (n,), metric (n, d).

    A = even positions, B = odd ones; each A token picks its most similar B token (cosine); the r
    A tokens with the highest similarity are merged into their partners, averaged by size. Result:
    the unmerged A tokens (most similar first, as ToMe orders them), then every B token.
    """
    A, B = list(range(0, len(x), 2)), list(range(1, len(x), 2))
    unit = metric / metric.norm(dim=-1, keepdim=True)
    partner, score = {}, {}
    for i in A:
        sims = [float(unit[i] @ unit[j]) for j in B]
        best = max(range(len(B)), key=lambda t: sims[t])
        partner[i], score[i] = B[best], sims[best]
    ranked = sorted(A, key=lambda i: -score[i])
    merged, kept = ranked[:r], ranked[r:]
    total = {j: x[j] * size[j] for j in B}  # size-weighted sums
    count = {j: size[j] for j in B}
    for i in merged:
        total[partner[i]] = total[partner[i]] + x[i] * size[i]
        count[partner[i]] = count[partner[i]] + size[i]
    new_x = [x[i] for i in kept] + [total[j] / count[j] for j in B]
    new_size = [size[i] for i in kept] + [count[j] for j in B]
    return torch.stack(new_x), torch.stack(new_size)


def ref_merged(model: AdaptiveViT, images: torch.Tensor, gamma: int):
    """Reference at γ <= 0 -> (pooled features (B, C), tokens (B, N_l, C) entering each block then
    leaving the last, sizes (B, N_l) likewise)."""
    vit, p = model.vit, model.vit.num_prefix_tokens
    embedded = vit.norm_pre(vit._pos_embed(vit.patch_embed(images)))  # (B, N, C)
    schedule = ref_schedule(embedded.shape[1], -gamma, len(vit.blocks), p, model.config.merge_every)
    feats, per_image = [], []
    for x in embedded:
        size = torch.ones(len(x), dtype=x.dtype)
        seen = [(x, size)]
        for blk, r in zip(vit.blocks, schedule, strict=True):
            h, metric = ref_attention(blk.attn, blk.norm1(x), size)
            x = x + blk.ls1(h)
            if r > 0:  # prefix tokens (class, registers) are neither merged nor destinations
                rest, rest_size = ref_merge(x[p:], size[p:], metric[p:], r)
                x, size = torch.cat([x[:p], rest]), torch.cat([size[:p], rest_size])
            x = x + blk.ls2(blk.mlp(blk.norm2(x)))
            seen.append((x, size))
        x = vit.norm(x)
        if vit.global_pool == "token":
            feat = x[0]
        else:  # a merged token counts for every patch it stands for
            feat = (x[p:] * size[p:, None]).sum(0) / size[p:].sum()
        feats.append(vit.fc_norm(feat))
        per_image.append(seen)
    tokens = [torch.stack([seen[i][0] for seen in per_image]) for i in range(len(schedule) + 1)]
    sizes = [torch.stack([seen[i][1] for seen in per_image]) for i in range(len(schedule) + 1)]
    return torch.stack(feats), tokens, sizes


def ref_prompted(model: AdaptiveViT, images: torch.Tensor, gamma: int, task: str):
    """Reference at γ > 0, VPT-deep: block i sees prefix, task prompts P[i], patches -> (features, tokens)."""
    vit, p = model.vit, model.vit.num_prefix_tokens
    P = model.prompts[key(task, gamma)]  # (depth, γ, C)
    x = vit.norm_pre(vit._pos_embed(vit.patch_embed(images)))  # (B, N, C)
    seen = []
    for i, blk in enumerate(vit.blocks):
        old = gamma if i > 0 else 0  # the previous block's prompts are replaced
        x = torch.cat([x[:, :p], P[i].expand(len(x), -1, -1), x[:, p + old :]], dim=1)  # (B, N + γ, C)
        seen.append(x)
        x = blk(x)  # nothing merges at γ > 0: the stock block
    seen.append(x)
    x = vit.norm(x)
    feat = x[:, 0] if vit.global_pool == "token" else x[:, p + gamma :].mean(1)  # prompts are not pooled
    return vit.fc_norm(feat), seen


def model_run(model: AdaptiveViT, images: torch.Tensor, gamma: int, task: str = SOURCE):
    """The model's logits and the tokens entering each block, then leaving the last (via hooks)."""
    seen = []
    norms = [blk.norm1 for blk in model.vit.blocks] + [model.vit.norm]  # first call in each block; final norm
    hooks = [m.register_forward_pre_hook(lambda m, args: seen.append(args[0])) for m in norms]
    try:
        logits = model(images, gamma, task)
    finally:
        for h in hooks:
            h.remove()
    assert len(seen) == len(norms)
    return logits, seen


# -- the tests -----------------------------------------------------------------------------------
MERGE_CASES = [(v, g) for v in VARIANTS for g in GAMMAS if g < 0]


@pytest.mark.parametrize("variant", VARIANTS)
@torch.no_grad()
def test_reference_without_merging_is_stock_timm(variant):
    """The reference itself: with r = 0 (all sizes 1) its attention, blocks and pooling are timm's."""
    model, x = _model(variant), _images()
    feats, _, _ = ref_merged(model, x, 0)
    torch.testing.assert_close(model.vit.head(feats), model.vit(x))


def test_reference_merge_by_hand():
    # A = tokens 0, 2, 4; B = 1, 3, 5. Token 0 matches 1 exactly, 4 nearly matches 5, 2 matches nothing well.
    metric = torch.tensor([[1.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 1, 1], [0, 1, 1.2]], dtype=torch.float64)
    x = torch.tensor([[2.0], [4], [10], [20], [30], [40]], dtype=torch.float64)
    size = torch.tensor([3.0, 1, 1, 1, 1, 1], dtype=torch.float64)
    new_x, new_size = ref_merge(x, size, metric, 2)
    # kept A token 2 first; then B: (3*2 + 4)/4, 20, (30 + 40)/2
    assert new_x.flatten().tolist() == [10.0, 2.5, 20.0, 35.0] and new_size.tolist() == [1.0, 4.0, 1.0, 2.0]
    new_x, _ = ref_merge(x, torch.ones(6, dtype=torch.float64), metric, 1)  # r = 1: only 0 -> 1 merges
    assert new_x.flatten().tolist() == [30.0, 10.0, 3.0, 20.0, 40.0]  # kept A tokens by similarity: 4 before 2


@pytest.mark.parametrize("variant,gamma", MERGE_CASES)
@torch.no_grad()
def test_merged_blocks_match_reference(variant, gamma):
    model, x = _model(variant), _images()
    vit, p = model.vit, model.vit.num_prefix_tokens
    assert model.merge_schedule(gamma) == ref_schedule(model.num_tokens, -gamma, len(vit.blocks), p)
    _, tokens, _ = ref_merged(model, x, gamma)
    _, seen = model_run(model, x, gamma)
    for i in range(1, len(seen)):  # same tokens, same order, after every block
        torch.testing.assert_close(seen[i], tokens[i], msg=lambda m, i=i: f"output of block {i - 1}: {m}")


@pytest.mark.parametrize("variant,gamma", MERGE_CASES)
@torch.no_grad()
def test_merged_logits_match_reference(variant, gamma):
    model, x = _model(variant), _images()
    feats, _, _ = ref_merged(model, x, gamma)
    torch.testing.assert_close(model(x, gamma), model.vit.head(feats))
    torch.testing.assert_close(model(x, gamma, TASK), model.heads[key(TASK, 0)](feats))  # merging reuses the γ = 0 head


@pytest.mark.parametrize("variant", VARIANTS)
@torch.no_grad()
def test_merging_keeps_prefix_tokens_first_with_size_one(variant):
    model, x, gamma = _model(variant), _images(), -14
    vit, p = model.vit, model.vit.num_prefix_tokens
    _, tokens, sizes = ref_merged(model, x, gamma)
    _, seen = model_run(model, x, gamma)
    for i in range(1, len(seen)):  # class token and registers: first, in order, never averaged with patches
        torch.testing.assert_close(
            seen[i][:, :p], tokens[i][:, :p], msg=lambda m, i=i: f"prefix after block {i - 1}: {m}"
        )
    embedded = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
    _, size = model._blocks_merged(embedded, -gamma)  # (B, N_L, 1)
    assert (size[:, :p] == 1).all()
    torch.testing.assert_close(size[..., 0], sizes[-1])  # every token stands for as many patches as in the reference
    assert (size.sum(1) == model.num_tokens).all()


@pytest.mark.parametrize("variant", VARIANTS)
@torch.no_grad()
def test_prompted_matches_reference(variant):
    model, x, gamma = _model(variant), _images(), 4
    p = model.vit.num_prefix_tokens
    feats, tokens = ref_prompted(model, x, gamma, TASK)
    logits, seen = model_run(model, x, gamma, TASK)
    P = model.prompts[key(TASK, gamma)]  # (depth, γ, C)
    for i in range(len(model.vit.blocks)):  # block i sees the prefix, then its own prompts
        torch.testing.assert_close(seen[i][:, p : p + gamma], P[i].expand(len(x), -1, -1))
    for i in range(len(seen)):
        torch.testing.assert_close(seen[i], tokens[i], msg=lambda m, i=i: f"tokens entering block {i}: {m}")
    torch.testing.assert_close(logits, model.heads[key(TASK, gamma)](feats))


@pytest.mark.parametrize("variant", ["class_token", "avg_registers"])
@pytest.mark.parametrize("gamma", [-14, -8])
@torch.no_grad()
def test_merging_every_other_block_matches_reference(variant, gamma):
    """merge_every=2: 2|γ| tokens at once in blocks 0 and 2; at -14 block 2 runs out of tokens (capped)."""
    model, x = _model(variant, merge_every=2), _images()
    vit, p = model.vit, model.vit.num_prefix_tokens
    schedule = model.merge_schedule(gamma)
    assert schedule == ref_schedule(model.num_tokens, -gamma, len(vit.blocks), p, 2)
    assert schedule[0] == -2 * gamma and schedule[1::2] == [0, 0]
    feats, tokens, _ = ref_merged(model, x, gamma)
    _, seen = model_run(model, x, gamma)
    for i in range(1, len(seen)):
        torch.testing.assert_close(seen[i], tokens[i], msg=lambda m, i=i: f"output of block {i - 1}: {m}")
    torch.testing.assert_close(model(x, gamma), model.vit.head(feats))
