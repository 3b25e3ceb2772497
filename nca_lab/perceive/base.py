"""The perceive interface: what each cell sees of its neighbourhood."""

import jax.numpy as jnp
from flax import nnx


class Perceive(nnx.Module):
    """Maps a state ``(..., H, W, C)`` to a perception ``(..., H, W, out_features)``.

    Subclasses take ``__init__(self, num_channels, *, <options>, rngs)`` (the composition
    root passes ``num_channels`` and ``rngs`` by keyword; accept ``rngs`` even without
    parameters), set ``num_channels`` and ``out_features`` there (the update reads
    ``out_features`` to size its first layer; the app checks it against the output) and
    implement ``__call__``. The yaml in ``conf/perceive/`` names the class with ``_target_``
    and sets ``_partial_: true``, so the options come from the config and the rest from code.
    A perceive is a pure function of the state: no randomness, no mutation. Any perceive
    works with the manual step VJP and active cells (its own backward is ``jax.vjp``'s);
    ``kernel=pallas`` is Sobel only.
    """

    num_channels: int
    out_features: int

    def __call__(self, state: jnp.ndarray) -> jnp.ndarray:
        """Return the perception of every cell."""
        raise NotImplementedError
