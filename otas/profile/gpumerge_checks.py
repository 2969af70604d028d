"""Side measurements of `bench/gpu_merge.py`: accuracy of every merge implementation against the reference
(same served path, CIFAR-10 test images), SDPA alone with and without the size bias, and stock timm
under torch.compile beside our γ = 0 graphs."""

from __future__ import annotations

import functools
import statistics
import time
from unittest import mock

import torch
import torch.nn.functional as F

from otas.adapt import AdaptiveViT
from otas.adapt.fast import FastConfig, FastForward
from otas.data.transforms import Normalize
from otas.profile.gpumerge import VARIANTS, Recorder, Variant, _cell, _timer, time_interleaved, with_config


def accuracy(
    name: str,
    model: AdaptiveViT,
    rec: Recorder,
    device: torch.device,
    data=None,
    limit: int = 1000,
    variants: tuple[Variant, ...] = VARIANTS,
    mode: str = "graphs",
    deadline: float = float("inf"),
) -> None:
    """Top-1 accuracy per (variant, task, γ < 0) on `limit` held-out images of each task (those
    `otas profile --accuracy-limit` measures), through `FastForward` at batch 256 as served, and how far
    each variant is from the reference with the same proportional attention and merge_every: share of
    identical predictions, largest probability change."""
    from otas.train.common import to_device
    from otas.train.data import TaskSource, load_task, release_cifar

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    sets = {}
    for t in model.tasks:
        val = load_task(TaskSource(t), model.preprocess, data, need_train=False).val
        sets[t] = to_device(val.head(limit), device)
    release_cifar()
    # in the given order, each variant's reference just before it (dict: ordered, no repeats)
    todo = list(dict.fromkeys(w for v in variants for w in (Variant("reference", v.prop, v.every), v)))
    gammas = [g for g in model.config.gammas if g <= 0]
    ref_probs: dict[tuple, torch.Tensor] = {}
    for v in todo:
        if time.monotonic() > deadline:
            rec("skipped", model=name, variant=v.label, reason="time budget (accuracy)")
            continue
        m = with_config(model, proportional_attn=v.prop, merge_every=v.every)
        fast = FastForward(m, device, FastConfig(mode, (256,), dtype, fused_norm=v.fused_norm, merge_impl=v.impl))
        for g in gammas if v == Variant("reference") else gammas[:-1]:
            try:
                m.merge_schedule(g) if g < 0 else None
            except ValueError as e:  # this γ cannot merge on this schedule (e.g. 3 × 48 tokens at once)
                rec("skipped", model=name, variant=v.label, gamma=g, reason=str(e)[:200])
                continue
            for t, (x, y) in sets.items():
                probs = torch.cat(
                    [fast(x[i : i + 256], g, t).clone() for i in range(0, len(y), 256)]
                )  # out: a static buffer
                key = (v.prop, v.every, g, t)
                ref = ref_probs.setdefault(key, probs)
                row = {"acc": float((probs.argmax(-1) == y).float().mean())}
                row["agree"] = float((probs.argmax(-1) == ref.argmax(-1)).float().mean())
                row["max_dprob"] = float((probs - ref).abs().max())
                rec("accuracy", model=name, variant=v.label, task=t, gamma=g, images=len(y), **row)
        del fast


SDPA_BACKENDS = ("default", "cudnn", "flash", "efficient")
TRITON_CONFIGS = (
    (64, 32, 4, 2),
    (64, 32, 4, 3),
    (64, 64, 4, 3),
    (32, 64, 2, 2),
    (32, 32, 2, 3),
    (64, 32, 2, 2),
    (128, 32, 4, 3),
    (128, 64, 8, 3),
    (64, 16, 4, 2),
    (32, 32, 4, 2),
)
"""(BLOCK_M, BLOCK_N, warps, stages) of `triton_attention` timed by `sdpa_rows`."""


def sdpa_rows(rec: Recorder, shapes: list[tuple[int, int, int, int]], rounds: int = 30) -> None:
    """Attention alone, q/k/v strided views of one qkv buffer as in the model: SDPA with no mask, with the
    log(size) mask, and with the size column (head dim padded to a multiple of 8, no mask), each through
    every SDPA backend that takes it; and `triton_attention` with log(size) as a per-key bias at the
    model's head dim (case "bias"), at each of `TRITON_CONFIGS`."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from otas.adapt import triton_attention as ta

    backends = {
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
    }
    timed = _timer(torch.device("cuda"))

    def row(fn, **where) -> None:
        try:
            fn()
        except Exception as e:  # noqa: BLE001 (this backend or config does not take this case: the others stand)
            rec("sdpa", **where, error=f"{type(e).__name__}: {e}"[:200])
            return
        rec("sdpa", **where, ms=statistics.median(timed(fn, 10) for _ in range(rounds)))

    def sdpa(q, k, v, mask, scale, backend):
        if backend == "default":
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        with sdpa_kernel(backends[backend]):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)

    for B, H, N, d in shapes:
        hp = -(-(d + 1) // 8) * 8
        size = torch.randint(1, 5, (B, N, 1), device="cuda").to(torch.bfloat16)
        for case, dim in (("no_mask", d), ("mask", d), ("column", hp)):
            qkv = torch.randn(B, N, 3, H, dim, device="cuda", dtype=torch.bfloat16)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            mask = size.float().log().to(torch.bfloat16).transpose(1, 2)[:, None] if case == "mask" else None
            for backend in SDPA_BACKENDS:
                fn = functools.partial(sdpa, q, k, v, mask, d**-0.5, backend)
                row(fn, B=B, H=H, N=N, d=d, case=case, head_dim=dim, backend=backend)
        qkv = torch.randn(B, N, 3, H, d, device="cuda", dtype=torch.bfloat16)
        _value_column_rows(row, sdpa, qkv, size, B, H, N, d)
        _flex_rows(row, qkv, size, B, H, N, d)
        for bm, bn, warps, stages in TRITON_CONFIGS:
            with mock.patch.multiple(ta, BLOCK_M=bm, BLOCK_N=bn, WARPS=warps, STAGES=stages):  # read per call
                fn = functools.partial(ta.attention_qkv, qkv, size, d**-0.5)
                row(fn, B=B, H=H, N=N, d=d, case="bias", head_dim=d, backend=f"triton/{bm}x{bn}w{warps}s{stages}")


def _fp32_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, size: torch.Tensor, d: int) -> torch.Tensor:
    """Proportional attention in fp32 through SDPA's mask form: what each variant's error is measured against."""
    mask = size.float().log().transpose(1, 2)[:, None]
    return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, scale=d**-0.5)


def _value_column_rows(row, sdpa, qkv: torch.Tensor, size: torch.Tensor, B: int, H: int, N: int, d: int) -> None:
    """Proportional attention with the sizes carried by the values instead of a bias on the logits:
    softmax(qk + log s) v = (sum_j e^(qk_j) s_j v_j) / (sum_j e^(qk_j) s_j), i.e. plain attention over
    values [s_j v_j, s_j] (one more value column, padded to a multiple of 8; q and k keep the head dim),
    then the first d columns divided by the last. Case "value_column": the attention alone;
    "value_column_full": with building the values and the division; the error against the mask form
    (float32) is recorded once per shape."""
    ev = -(-(d + 1) // 8) * 8
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, d) each
    s = size.transpose(1, 2)[:, :, :, None]  # (B, 1, N, 1)

    def values() -> torch.Tensor:
        vs = torch.zeros(B, H, N, ev, device=qkv.device, dtype=qkv.dtype)
        vs[..., :d] = v * s
        vs[..., d : d + 1] = s
        return vs

    vs = values()

    def full(backend):
        o = sdpa(q, k, values(), None, d**-0.5, backend)
        return o[..., :d] / o[..., d : d + 1]

    ref = _fp32_reference(q, k, v, size, d)
    for backend in SDPA_BACKENDS:
        try:
            err = float((full(backend).float() - ref).abs().max())
        except Exception:  # noqa: BLE001 (the backend refuses; row() records why)
            err = None
        row(functools.partial(sdpa, q, k, vs, None, d**-0.5, backend), B=B, H=H, N=N, d=d, case="value_column",
            head_dim=ev, backend=backend, max_err=err)  # fmt: skip
        row(functools.partial(full, backend), B=B, H=H, N=N, d=d, case="value_column_full", head_dim=ev,
            backend=backend)  # fmt: skip


@functools.cache
def _flex():
    """`flex_attention` compiled (it runs unfused, and slowly, uncompiled), once for every shape."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=True)


def flex_bias(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, size: torch.Tensor, scale: float) -> torch.Tensor:
    """Proportional attention through PyTorch's FlexAttention: q, k, v (B, H, N, hd), size (B, N, 1) ->
    softmax(q kᵀ · scale + log size_j) v (B, H, N, hd), log(size) added to each key's score by a
    `score_mod` (a Triton kernel Inductor generates and tunes)."""
    logs = size[:, :, 0].float().log()  # (B, N)

    def score_mod(score, b, h, q_idx, kv_idx):
        return score + logs[b, kv_idx]

    return _flex()(q, k, v, score_mod=score_mod, scale=scale)


def _flex_rows(row, qkv: torch.Tensor, size: torch.Tensor, B: int, H: int, N: int, d: int) -> None:
    """Case "flex": `flex_bias` on q, k, v as strided views of the qkv output ("flex") and made contiguous
    first (backend "flex_contiguous", the copies not timed); the error against the mask form (fp32) once."""
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    qc, kc, vc = (t.contiguous() for t in (q, k, v))
    ref = _fp32_reference(q, k, v, size, d)
    for backend, (a, b, c) in (("flex", (q, k, v)), ("flex_contiguous", (qc, kc, vc))):
        try:
            err = float((flex_bias(a, b, c, size, d**-0.5).float() - ref).abs().max())
        except Exception:  # noqa: BLE001 (flex refuses these inputs; row() records why)
            err = None
        row(functools.partial(flex_bias, a, b, c, size, d**-0.5), B=B, H=H, N=N, d=d, case="bias", head_dim=d,
            backend=backend, max_err=err)  # fmt: skip


def timm_compile(name: str, model: AdaptiveViT, rec: Recorder, batches: list[int], deadline: float) -> None:
    """Stock timm under torch.compile(mode="reduce-overhead": Inductor kernels in CUDA graphs), from the same
    uint8 input, beside our γ = 0 graphs (`FastForward`: plain, with Triton LayerNorms, compiled), timed
    interleaved per batch. The batch dim is
    dynamic (one compile serves every batch > 1; batch 1 gets its own), so the phase fits a short run."""
    device = torch.device("cuda")
    stock = FastForward(model, device, FastConfig("graphs", tuple(sorted(batches)), torch.bfloat16, fused_norm=False))
    ours_compiled = FastForward(
        model, device, FastConfig("compiled-graphs", tuple(sorted(batches)), torch.bfloat16, fused_norm=False)
    )
    fused = FastForward(model, device, FastConfig("graphs", tuple(sorted(batches)), torch.bfloat16, fused_norm=True))
    vit, norm = stock.model.vit, Normalize.of(stock.model.preprocess, device)
    compiled = torch.compile(lambda u8: vit(norm(u8).to(torch.bfloat16)).float().softmax(-1), mode="reduce-overhead")
    size = vit.patch_embed.img_size
    for b in batches:
        if time.monotonic() > deadline:
            rec("skipped", model=name, batch=b, gamma=0, reason="time budget (timm compile)")
            continue
        x = torch.randint(0, 256, (b, *size, 3), dtype=torch.uint8, device=device)
        if b > 1:
            torch._dynamo.mark_dynamic(x, 0)
        t0 = time.monotonic()
        with torch.no_grad():
            for _ in range(3):
                compiled(x)
            torch.cuda.synchronize()
            build_s = time.monotonic() - t0
            cells = {"timm_compile": lambda x=x: compiled(x), "stock": _cell(stock, 0, b, device)}
            for label, make in (("stock@compiled-graphs", lambda: ours_compiled), ("stock/fusednorm", lambda: fused)):
                try:
                    cells[label] = _cell(make(), 0, b, device)
                except Exception as e:  # the comparison with timm stands without it
                    rec("error", model=name, batch=b, cell=label, error=f"{type(e).__name__}: {e}"[:300])
            ms = time_interleaved(cells, device, rounds=15)
        rec("timm_compile", model=name, batch=b, ms=ms, build_s=round(build_s, 1), compile='mode="reduce-overhead"')
