"""The fused kernels lower to Triton without a GPU.

``jax.export`` for the ``cuda`` platform runs Pallas' Triton lowering on this machine, so a
kernel that uses an operation or a shape the Triton backend does not take fails here, in CI,
rather than on the first GPU that runs it. (The Triton compiler's own passes, which run on
the GPU machine, are not exercised; experiments/gpu/fused_check.py does that.)
"""

import re

import jax
import jax.numpy as jnp
import pytest
from jax import export

from nca_lab.kernels.fused_rollout import fused_rollout
from nca_lab.kernels.sobel_mlp_step import FlatLayout

C, HIDDEN, BATCH, STEPS = 16, 128, 2, 3
LAYOUT = FlatLayout(12, 12)
TRITON = "__gpu$xla.gpu.triton"


def spec(*shape, dtype=jnp.float32):
    return jax.ShapeDtypeStruct(shape, dtype)


PACKED, STATE, FIRE, COUNT = (
    spec(4 * C + 2, HIDDEN),
    spec(BATCH, LAYOUT.length, C),
    spec(STEPS, BATCH, LAYOUT.length),
    spec(dtype=jnp.int32),
)


def triton_kernels(fn, *args) -> list[str]:
    """Names of the Triton kernels in ``fn``'s module exported for CUDA, in order of appearance."""
    exported = export.export(
        jax.jit(fn), platforms=["cuda"], disabled_checks=[export.DisabledSafetyCheck.custom_call(TRITON)]
    )(*args)
    text = exported.mlir_module()
    assert TRITON in text
    return re.findall(r'name = "(_\w+_kernel)"', text)


def rollout(alive_threshold):
    return fused_rollout(LAYOUT, angle=0.3, step_size=1.0, alive_threshold=alive_threshold)


@pytest.mark.parametrize("alive_threshold", [0.1, None], ids=["alive", "no_alive"])
def test_forward_kernels_lower_to_triton(alive_threshold):
    """The rollout without differentiation: its loop of update (and alive) kernels."""
    names = triton_kernels(rollout(alive_threshold), PACKED, STATE, FIRE, COUNT)
    assert names == ["_update_kernel", "_alive_kernel"] if alive_threshold is not None else ["_update_kernel"]


@pytest.mark.parametrize("alive_threshold", [0.1, None], ids=["alive", "no_alive"])
def test_backward_kernels_lower_to_triton(alive_threshold):
    """The rollout's custom VJP: the forward loop that keeps every state, then the backward loop."""

    def gradients(packed, flat, fire, count):
        return jax.grad(lambda p, f: rollout(alive_threshold)(p, f, fire, count).sum(), argnums=(0, 1))(packed, flat)

    names = triton_kernels(gradients, PACKED, STATE, FIRE, COUNT)
    forward = ["_update_kernel", "_alive_kernel"] if alive_threshold is not None else ["_update_kernel"]
    assert names == [*forward, "_grads_kernel", "_stencil_transpose_kernel"]
