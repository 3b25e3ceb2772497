"""The living-cell mask of Growing Neural Cellular Automata.

Reference: Mordvintsev et al., Distill 2020, section "Experiment 1": a cell is alive if any
cell of its 3x3 neighbourhood (itself included) has alpha above 0.1; empty cells outside
the living region are forced to zero so they cannot carry hidden state.
"""

import jax.numpy as jnp

from nca_lab.perceive.stencil import neighbours

ALPHA = 3


def alive_mask(state: jnp.ndarray, threshold: float = 0.1) -> jnp.ndarray:
    """Boolean ``(..., H, W, 1)``: the 3x3 max-pool of alpha exceeds ``threshold``.

    Padding never wins the max (it is ``-inf``), as in TensorFlow's SAME max-pool.
    """
    alpha = state[..., ALPHA : ALPHA + 1]
    pooled = None
    for _, nb in neighbours(alpha, value=-jnp.inf):
        pooled = nb if pooled is None else jnp.maximum(pooled, nb)
    return pooled > threshold
