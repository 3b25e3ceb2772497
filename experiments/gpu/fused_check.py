"""GPU check of the fused Pallas step against the XLA path.

    python experiments/gpu/fused_check.py

Compares, on the GPU's compiled kernels, a growing (C=16, hidden 128, alive mask; also with a
drawn length, 27 of 32 steps) and a diffusing (C=64, hidden 256) model with a random non-zero
last layer: the final state of a rollout, with and without differentiation, and the gradients
of a loss on it, XLA path vs fused path (same weights, same fire draws), as relative errors
(norm of the difference over the norm of the XLA result).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from nca_lab.nca import NCA
from nca_lab.perceive.sobel import SobelPerceive
from nca_lab.update.residual import ResidualUpdate


def make(kernel, channels, hidden, threshold):
    rngs = nnx.Rngs(0)
    update = ResidualUpdate(3 * channels, channels, hidden_sizes=[hidden], rngs=rngs, zero_init=False)
    update.out.kernel.set_value(update.out.kernel[...] * 0.1)
    return NCA(SobelPerceive(channels), update, alive_threshold=threshold, kernel=kernel)


def state(batch, grid, channels):
    x = jax.random.uniform(jax.random.key(1), (batch, grid, grid, channels))
    blob = jax.random.uniform(jax.random.key(2), (batch, grid, grid, 1)) > 0.5
    return x * blob


def rel(a, b):
    return float(jnp.linalg.norm((a - b).ravel()) / (jnp.linalg.norm(b.ravel()) + 1e-30))


def check(name, channels, hidden, threshold, steps=32, active=None, batch=4, grid=72):
    """Gradients of a rollout of ``steps`` (of which ``active`` run, if given), and the rollout
    without differentiation (its own loop: two alternating state buffers)."""
    x = state(batch, grid, channels)
    keys = jax.random.split(jax.random.key(3), batch)
    active = None if active is None else jnp.int32(active)
    out = {}
    for kernel in ("xla", "pallas"):
        model = make(kernel, channels, hidden, threshold)

        @nnx.jit
        def loss_and_grad(model):
            def loss_fn(model):
                final, _ = model.rollout(x, keys, steps, active_steps=active)
                return jnp.mean(final[..., :4] ** 2), final

            return nnx.value_and_grad(loss_fn, has_aux=True)(model)

        (_, final), grads = loss_and_grad(model)
        forward = nnx.jit(lambda model: model.rollout(x, keys, steps, active_steps=active)[0])(model)
        out[kernel] = (final, grads, forward)
    final_err = rel(out["pallas"][0], out["xla"][0])
    forward_err = rel(out["pallas"][2], out["xla"][2])
    grad_errs = [
        rel(a, b) for a, b in zip(jax.tree.leaves(out["pallas"][1]), jax.tree.leaves(out["xla"][1]), strict=True)
    ]
    finite = all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(out["pallas"][1]))
    print(
        f"{name}: final state rel err {final_err:.2e} (undifferentiated {forward_err:.2e}); "
        f"grad rel errs {[f'{e:.1e}' for e in grad_errs]}; finite {finite}"
    )


if __name__ == "__main__":
    print(jax.devices())
    check("growing C16 h128 alive", 16, 128, 0.1)
    check("growing C16 h128 alive, 27 of 32 steps", 16, 128, 0.1, active=27)
    check("diffusing C64 h256", 64, 256, None)
