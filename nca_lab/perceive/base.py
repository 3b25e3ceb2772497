"""The perceive interface: what each cell sees of its neighbourhood."""

import jax.numpy as jnp
from flax import nnx


class Perceive(nnx.Module):
    """Maps a state ``(..., H, W, C)`` to a perception ``(..., H, W, out_features)``.

    Subclasses set ``num_channels`` and ``out_features`` in ``__init__`` (the update reads
    ``out_features`` to size its first layer) and implement ``__call__``. A perceive is a
    pure function of the state: no randomness, no mutation.
    """

    num_channels: int
    out_features: int

    def __call__(self, state: jnp.ndarray) -> jnp.ndarray:
        """Return the perception of every cell."""
        raise NotImplementedError
