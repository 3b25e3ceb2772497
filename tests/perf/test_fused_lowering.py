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
from nca_lab.kernels.sobel_mlp_backward import backward_step, weight_partials
from nca_lab.kernels.sobel_mlp_step import FlatLayout, Launch, forward_step

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
    assert names == (["_update_kernel", "_alive_kernel"] if alive_threshold is not None else ["_update_kernel"])


@pytest.mark.parametrize("alive_threshold", [0.1, None], ids=["alive", "no_alive"])
def test_backward_kernels_lower_to_triton(alive_threshold):
    """The rollout's custom VJP: the forward loop that keeps every state, then the backward loop."""

    def gradients(packed, flat, fire, count):
        return jax.grad(lambda p, f: rollout(alive_threshold)(p, f, fire, count).sum(), argnums=(0, 1))(packed, flat)

    names = triton_kernels(gradients, PACKED, STATE, FIRE, COUNT)
    forward = ["_update_kernel", "_alive_kernel"] if alive_threshold is not None else ["_update_kernel"]
    assert names == [*forward, "_grads_kernel", "_stencil_transpose_kernel"]


def loop_bodies(jaxpr) -> list:
    """The bodies of every ``scan`` in ``jaxpr``, nested ones included."""
    bodies = []
    for eqn in jaxpr.eqns:
        for param in eqn.params.values():
            inner = getattr(param, "jaxpr", param)
            if hasattr(inner, "eqns"):
                if eqn.primitive.name == "scan":
                    bodies.append(inner)
                bodies.extend(loop_bodies(inner))
    return bodies


@pytest.mark.parametrize("differentiate", [False, True], ids=["forward", "gradients"])
def test_the_loops_over_steps_run_nothing_but_the_kernels(differentiate):
    """Issue 7's GPU profile of a per-step custom VJP: ~20 launches per CA step besides the
    kernels (stacking residuals, reductions of the weight-gradient partials, fire draws). In
    the fused rollout, a loop over CA steps runs its two Pallas kernels, increments its counter
    and reshapes scalars (free), nothing else: stacking the step index with the rollout length,
    or computing the step from the counter, was one more kernel per step on an H100
    (``experiments/gpu/aot.py``). The last kernel writes in place into the buffer the loop
    carries, or XLA copies its result there every step. The loops have a static length (a
    ``scan``), so XLA:GPU does not sync the host per iteration."""
    fn = rollout(0.1)
    if differentiate:
        fn = jax.grad(lambda p, f, fire, n: rollout(0.1)(p, f, fire, n).sum(), argnums=(0, 1))
    jaxpr = jax.make_jaxpr(fn)(PACKED, STATE, FIRE, COUNT).jaxpr
    bodies = loop_bodies(jaxpr)
    assert len(bodies) == (2 if differentiate else 1)
    assert not any(eqn.primitive.name == "while" for eqn in jaxpr.eqns)
    for body in bodies:
        kernels = [eqn for eqn in body.eqns if eqn.primitive.name == "pallas_call"]
        assert len(kernels) == 2
        others = [eqn.primitive.name for eqn in body.eqns if eqn not in kernels]
        assert set(others) <= {"add", "reshape", "convert_element_type"} and others.count("add") == 1, others
        assert kernels[-1].params["input_output_aliases"]


def test_a_hidden_layer_in_chunks_lowers_to_triton():
    """Diffusing's sizes (C=64, hidden 256): the kernels take the hidden layer in two chunks
    of 128 columns, loading and storing column blocks of the packed weights and partials."""
    channels, hidden = 64, 256
    assert len(Launch().hidden_columns(hidden)) == 2
    packed, state = spec(4 * channels + 2, hidden), spec(BATCH, LAYOUT.length, channels)

    def gradients(packed, flat, fire, count):
        return jax.grad(lambda p, f: rollout(None)(p, f, fire, count).sum(), argnums=(0, 1))(packed, flat)

    names = triton_kernels(gradients, packed, state, FIRE, COUNT)
    assert names == ["_update_kernel", "_grads_kernel", "_stencil_transpose_kernel"]


def test_chunks_in_a_loop_lower_to_triton():
    """``Launch(chunk_loop=True)``: the hidden layer's chunks in a ``fori_loop`` inside the
    update and gradient kernels, with column offsets computed in the loop."""
    channels, hidden = 64, 256
    launch = Launch(hidden_chunk=64, chunk_loop=True)
    packed, state = spec(4 * channels + 2, hidden), spec(BATCH, LAYOUT.length, channels)
    states = spec(2, BATCH, LAYOUT.length, channels)

    def step_and_back(packed, states, fire, grad):
        kwargs = {"angle": 0.0, "step_size": 1.0, "launch": launch}
        states, _ = forward_step(states, None, fire, packed, 0, 1, LAYOUT, history=True, alive_threshold=None, **kwargs)
        partials = weight_partials(BATCH, LAYOUT, packed, launch)
        return backward_step(states, fire, None, grad, partials, packed, 0, 1, LAYOUT, **kwargs)

    names = triton_kernels(step_and_back, packed, states, spec(1, BATCH, LAYOUT.length), state)
    assert names == ["_update_kernel", "_grads_kernel", "_stencil_transpose_kernel"]
