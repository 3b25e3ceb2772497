"""The update interface: how a cell changes its state from what it perceives."""

import jax
import jax.numpy as jnp
from flax import nnx


class Update(nnx.Module):
    """Maps ``(state (..., H, W, C), perception (..., H, W, F), key)`` to the next state.

    Subclasses take ``__init__(self, perception_size, num_channels, *, <options>, rngs)``
    (the composition root passes the perceive's ``out_features``, ``num_channels`` and
    ``rngs`` by keyword) and implement ``__call__``, whose ``key`` is one PRNG key per grid
    (shape ``state.shape[:-3]``, a scalar key for one grid): a stochastic update draws its
    per-cell randomness from it, so a sample's trajectory does not depend on its batch. The
    yaml in ``conf/update/`` names the class with ``_target_`` and sets ``_partial_: true``.
    An update with a fire rate keeps it in ``fire_rate`` and reads it when called
    (``nca_lab.grow --fire-rate`` sets it). The :class:`~nca_lab.nca.NCA` applies the alive
    mask afterwards.

    The fast paths (the manual step VJP, active cells, ``kernel=pallas``) are written for
    :class:`~nca_lab.update.residual.ResidualUpdate`; a subclass that keeps its ``apply`` and
    ``__call__`` has the manual step VJP (its ``delta`` differentiated by autodiff there) and,
    with ``compact_cells=true``, active cells. Any other update trains with autodiff of its
    ``__call__`` (dense steps; ``trainer.remat=true`` recomputes each step in the backward pass).
    """

    def __call__(self, state: jnp.ndarray, perception: jnp.ndarray, key: jax.Array) -> jnp.ndarray:
        """Return the updated state."""
        raise NotImplementedError
