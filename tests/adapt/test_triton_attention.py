"""Proportional attention in one Triton kernel (otas.adapt.triton_attention) against the explicit
softmax, run on the CPU by Triton's interpreter (this file reruns itself with TRITON_INTERPRET=1, as
test_triton_merge.py does), and the "bias" option in the served path."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from timm.models.vision_transformer import Attention

from otas.adapt.attention import attention_reference
from otas.adapt.fast import FastConfig, FastForward
from otas.adapt.ops import check_merge_impl

from .conftest import small_model
from .interpreter import INTERPRETING, kernel_tests

MODULE = "otas.adapt.triton_attention"


interpreted, test_kernels_in_the_interpreter = kernel_tests(MODULE, __file__)


def _explicit(qkv: torch.Tensor, size: torch.Tensor | None, scale: float) -> torch.Tensor:
    """softmax(q kᵀ · scale + log size) v in float64, (B, N, H · hd)."""
    q, k, v = qkv.double().permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, hd)
    logits = q @ k.transpose(-1, -2) * scale
    if size is not None:
        logits = logits + size.double().log().transpose(1, 2)[:, None]  # (B, 1, 1, N)
    out = logits.softmax(-1) @ v  # (B, H, N, hd)
    return out.transpose(1, 2).flatten(2)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    B=st.integers(1, 3),
    N=st.integers(1, 150),
    H=st.integers(1, 3),
    hd=st.sampled_from([8, 24, 64, 72]),
    sizes=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_attention_equals_the_explicit_softmax(interpreted, B, N, H, hd, sizes, seed):
    """Any token count (ragged last query and key tiles, fewer keys than one tile), heads, head dims that
    are not powers of two, with and without sizes; q, k and v read as views of one qkv buffer."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(B, N, 3, H, hd, generator=g) * 2
    size = torch.randint(1, 9, (B, N, 1), generator=g).float() if sizes else None
    scale = hd**-0.5
    out = interpreted.attention_qkv(qkv, size, scale)
    assert out.shape == (B, N, H * hd)
    torch.testing.assert_close(out.double(), _explicit(qkv, size, scale), rtol=1e-4, atol=1e-4)


def test_sizes_weigh_keys_as_that_many_copies(interpreted):
    """A key of size s attends as s copies of itself would: the defining property of proportional attention."""
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(2, 5, 3, 2, 16, generator=g)
    size = torch.tensor([1.0, 3.0, 1.0, 2.0, 1.0]).expand(2, 5)[..., None].contiguous()
    copies = torch.cat([qkv[:, i : i + 1].expand(-1, int(s), -1, -1, -1) for i, s in enumerate(size[0, :, 0])], 1)
    got = interpreted.attention_qkv(qkv, size, 0.25)
    q_rows = [0, 1, 4, 5, 7]  # each token's first copy in `copies`
    want = _explicit(copies, None, 0.25)[:, q_rows]
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)


def test_half_precision(interpreted):
    """float16 in, fp32 statistics: within half-precision rounding of the float64 softmax."""
    g = torch.Generator().manual_seed(1)
    qkv = torch.randn(2, 70, 3, 3, 64, generator=g)
    size = torch.randint(1, 5, (2, 70, 1), generator=g).float()
    out = interpreted.attention_qkv(qkv.half(), size.half(), 0.125)
    torch.testing.assert_close(out.double(), _explicit(qkv.half(), size.half(), 0.125), rtol=2e-2, atol=2e-3)


def test_attention_bias_equals_the_reference_module(interpreted):
    """`attention_bias` on a timm `Attention`: the reference's output and its keys per head."""
    torch.manual_seed(0)
    attn = Attention(48, num_heads=3, qkv_bias=True).eval()
    x = torch.randn(2, 33, 48)
    size = torch.randint(1, 6, (2, 33, 1)).float()
    with torch.no_grad():
        out, keys = interpreted.attention_bias(attn, x, size)
        want = attention_reference(attn, x, size)
        k = attn.qkv(x).view(2, 33, 3, 3, 16)[:, :, 1].transpose(1, 2)
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(keys, k)


@pytest.mark.parametrize("gamma", [-8, -4, 0])
def test_bias_option_serves_the_same_function(interpreted, gamma):
    """The served forward with "triton+bias" equals the reference merge path at every γ (float32)."""
    model = small_model()
    x = torch.randint(0, 256, (3, *model.vit.patch_embed.img_size, 3), dtype=torch.uint8)
    ref = FastForward(model, "cpu", FastConfig("eager", (4,), torch.float32, merge_impl="reference"))
    fast = FastForward(model, "cpu", FastConfig("eager", (4,), torch.float32, merge_impl="triton+bias"))
    with torch.no_grad():
        torch.testing.assert_close(fast(x, gamma, "source"), ref(x, gamma, "source"), rtol=1e-4, atol=1e-4)


def test_bias_excludes_column():
    with pytest.raises(ValueError, match="column"):
        check_merge_impl("triton+bias+column")
    assert check_merge_impl("triton+bias") == "triton+bias"


def test_bias_needs_cuda_on_a_cpu():
    pytest.importorskip("triton")
    if INTERPRETING:
        pytest.skip("the interpreter runs kernels on the CPU")
    model = small_model()
    with pytest.raises(ValueError, match="CUDA"):
        FastForward(model, "cpu", FastConfig("eager", (4,), torch.float32, merge_impl="matmul+bias"))


@pytest.mark.gpu
@pytest.mark.parametrize("B,N,H", [(256, 257, 3), (8, 161, 6), (2, 197, 12), (1, 7, 3)])
def test_gpu_attention_in_bfloat16_and_in_a_graph(B, N, H):
    """The compiled kernel in bf16 (the served dtype) within bf16 rounding of the float64 softmax, and
    a CUDA graph replays it."""
    from otas.adapt.triton_attention import attention_qkv

    g = torch.Generator().manual_seed(N)
    qkv = torch.randn(B, N, 3, H, 64, generator=g).cuda().bfloat16()
    size = torch.randint(1, 9, (B, N, 1), generator=g).cuda().bfloat16()
    want = _explicit(qkv, size, 0.125)
    torch.testing.assert_close(attention_qkv(qkv, size, 0.125).double(), want, rtol=2e-2, atol=2e-2)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = attention_qkv(qkv, size, 0.125)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out.double(), want, rtol=2e-2, atol=2e-2)
