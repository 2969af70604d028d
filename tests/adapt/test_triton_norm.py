"""The Triton LayerNorm (otas.adapt.triton_norm) against torch's, run on the CPU by Triton's interpreter
(this file reruns itself with TRITON_INTERPRET=1, as test_triton_merge.py does), and `fused_norm` in
the served path."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from otas.adapt.fast import FastConfig, FastForward

from .conftest import small_model
from .interpreter import INTERPRETING, kernel_tests

MODULE = "otas.adapt.triton_norm"


interpreted, test_kernels_in_the_interpreter = kernel_tests(MODULE, __file__)


@pytest.mark.parametrize("shape", [(2, 5, 192), (3, 7, 33), (1, 1, 768), (130, 24), (4, 2, 3, 1000)])
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_equals_torch(interpreted, shape, affine):
    """Rows over several programs and a ragged last one, channels not a power of two, with and without
    weight and bias, any number of leading dims."""
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(*shape, generator=g) * 3 + 1
    C = shape[-1]
    w, b = (torch.randn(C, generator=g), torch.randn(C, generator=g)) if affine else (None, None)
    want = F.layer_norm(x, (C,), w, b, 1e-6)
    torch.testing.assert_close(interpreted.layer_norm(x, w, b, 1e-6), want, rtol=1e-5, atol=1e-5)


def test_layer_norm_of_a_strided_input(interpreted):
    x = torch.randn(6, 40).t()  # (40, 6), last dim strided
    torch.testing.assert_close(interpreted.layer_norm(x, None, None, 1e-5), F.layer_norm(x, (6,)))
    with pytest.raises(ValueError, match="weight must be"):
        interpreted.layer_norm(x, torch.ones(5), None, 1e-5)


@torch.no_grad()
def test_fused_norms_serve_the_same_function(interpreted):
    """Every γ and a task mix through FastForward with `fused_norm`, against the plain one; the fused
    model shares the original's parameters and leaves the original's modules alone."""
    images = torch.randint(0, 256, (3, 16, 16, 3), dtype=torch.uint8)
    model = small_model()
    ref = FastForward(model, "cpu", FastConfig(mode="eager", dtype=torch.float32))
    fused = FastForward(model, "cpu", FastConfig(mode="eager", dtype=torch.float32, fused_norm=True))
    fused_mods = list(fused.model.modules())
    assert any(isinstance(m, interpreted.FusedLayerNorm) for m in fused_mods)
    assert not any(isinstance(m, nn.LayerNorm) for m in fused_mods)
    assert any(isinstance(m, nn.LayerNorm) for m in model.modules())  # the caller's model is untouched
    assert {id(p) for p in fused.model.parameters()} == {id(p) for p in model.parameters()}
    for g in model.config.gammas:
        torch.testing.assert_close(fused(images, g, ["a", "b", "a"]), ref(images, g, ["a", "b", "a"]))


@pytest.mark.skipif(INTERPRETING, reason="the interpreter runs CPU tensors")
def test_fused_norm_needs_cuda_on_a_cpu():
    pytest.importorskip(MODULE)
    with pytest.raises(ValueError, match="fused_norm needs a CUDA device"):
        FastForward(small_model(), "cpu", FastConfig(mode="eager", fused_norm=True))
