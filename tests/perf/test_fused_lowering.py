"""The fused kernels lower to Triton without a GPU.

``jax.export`` for the ``cuda`` platform runs Pallas' Triton lowering on this machine, so a
kernel that uses an operation or a shape the Triton backend does not take fails here, in CI,
rather than on the first GPU that runs it. (The Triton compiler's own passes, which run on
the GPU machine, are not exercised; experiments/gpu/fused_check.py does that.)
"""

import functools
import re

import jax
import jax.numpy as jnp
import pytest
from jax import export

from nca_lab.kernels.sobel_mlp_backward import fused_step_backward
from nca_lab.kernels.sobel_mlp_step import FlatLayout, fused_step

C, HIDDEN, BATCH = 16, 128, 2
LAYOUT = FlatLayout(12, 12)
TRITON = "__gpu$xla.gpu.triton"


def spec(*shape):
    return jax.ShapeDtypeStruct(shape, jnp.float32)


PARAMS = {"w1": spec(3 * C, HIDDEN), "b1": spec(HIDDEN), "w2": spec(HIDDEN, C), "b2": spec(C)}
STATE, MASK = spec(BATCH, LAYOUT.length, C), spec(BATCH, LAYOUT.length)


def triton_kernels(fn, *args) -> list[str]:
    """Names of the Triton kernels in ``fn``'s module exported for CUDA."""
    exported = export.export(
        jax.jit(fn), platforms=["cuda"], disabled_checks=[export.DisabledSafetyCheck.custom_call(TRITON)]
    )(*args)
    text = exported.mlir_module()
    assert TRITON in text
    return re.findall(r'name = "(_\w+_kernel)"', text)


@pytest.mark.parametrize("alive_threshold", [0.1, None], ids=["alive", "no_alive"])
def test_forward_kernels_lower_to_triton(alive_threshold):
    step = functools.partial(fused_step, layout=LAYOUT, angle=0.3, step_size=1.0, alive_threshold=alive_threshold)
    names = triton_kernels(step, STATE, MASK, PARAMS)
    assert names == ["_update_kernel", "_alive_kernel"] if alive_threshold is not None else ["_update_kernel"]


@pytest.mark.parametrize("masked", [True, False], ids=["alive", "no_alive"])
def test_backward_kernels_lower_to_triton(masked):
    def backward(flat, fire, alive, grad_out, params):
        return fused_step_backward(
            flat, fire, alive if masked else None, grad_out, params, LAYOUT, angle=0.3, step_size=1.0
        )

    names = triton_kernels(backward, STATE, MASK, MASK, STATE, PARAMS)
    assert names == ["_grads_kernel", "_stencil_transpose_kernel"]
