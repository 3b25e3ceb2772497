"""The living-cell mask of Growing Neural Cellular Automata.

Reference: Mordvintsev et al., Distill 2020, section "Model", "Living cell masking": a cell is
alive if any cell of its 3x3 neighbourhood (itself included) has alpha above 0.1; empty
cells outside the living region are forced to zero so they cannot carry hidden state.
"""

import jax.numpy as jnp

from nca_lab.perceive.stencil import max_pool3x3

ALPHA = 3
#: The paper's threshold: alpha above it in a 3x3 neighbourhood makes the cell alive.
ALIVE_THRESHOLD = 0.1


def alive_mask(state: jnp.ndarray, threshold: float = ALIVE_THRESHOLD) -> jnp.ndarray:
    """Boolean ``(..., H, W, 1)``: the 3x3 max-pool of alpha exceeds ``threshold``.

    Padding never wins the max (it is ``-inf``), as in TensorFlow's SAME max-pool.
    """
    return max_pool3x3(state[..., ALPHA : ALPHA + 1], -jnp.inf) > threshold


def keep_living(new: jnp.ndarray, alive_before: jnp.ndarray, threshold: float) -> tuple[jnp.ndarray, jnp.ndarray]:
    """``new`` zeroed where a cell was not alive both before the step (``alive_before``) and
    after it, and that mask: the paper's pre- and post-update masks, combined by AND."""
    alive = alive_before & alive_mask(new, threshold)
    return new * alive.astype(new.dtype), alive
