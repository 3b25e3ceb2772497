"""Random circular damage, the perturbation of the regeneration experiments.

Reference: Mordvintsev et al., "Growing Neural Cellular Automata", Distill 2020,
"Experiment 3: Learning to regenerate" and ``make_circle_masks`` of the authors' notebook:
a disc with centre uniform in ``[-0.5, 0.5]^2`` and radius uniform in ``[0.1, 0.4]``, in
grid coordinates that run from -1 to 1 across each axis, has every channel set to zero.
Both functions are jitted so that evaluation, which calls them outside the train step,
compiles the random draws once (an eager draw compiles on every new shape).
"""

from functools import partial

import jax
import jax.numpy as jnp


@partial(jax.jit, static_argnames=("n", "grid_shape", "radius", "circles"))
def circle_masks(
    key: jax.Array,
    n: int,
    grid_shape: tuple[int, int],
    radius: tuple[float, float] = (0.1, 0.4),
    circles: int = 1,
) -> jax.Array:
    """Boolean ``(n, H, W, 1)`` masks, true inside the union of ``circles`` random discs per grid.

    Args:
        key: PRNG key.
        n: number of grids.
        grid_shape: ``(H, W)``.
        radius: ``(low, high)`` range of radii, in units of half the grid size (the paper's
            ``[0.1, 0.4]``).
        circles: discs per grid.
    """
    h, w = grid_shape
    centre_key, radius_key = jax.random.split(key)
    centre = jax.random.uniform(centre_key, (2, n, circles, 1, 1), minval=-0.5, maxval=0.5)
    r = jax.random.uniform(radius_key, (n, circles, 1, 1), minval=radius[0], maxval=radius[1])
    y = jnp.linspace(-1.0, 1.0, h)[:, None]
    x = jnp.linspace(-1.0, 1.0, w)[None, :]
    inside = jnp.square((x - centre[1]) / r) + jnp.square((y - centre[0]) / r) < 1.0
    return jnp.any(inside, axis=1)[..., None]


@partial(jax.jit, static_argnames=("radius", "circles"))
def damage_circles(
    state: jax.Array, key: jax.Array, radius: tuple[float, float] = (0.1, 0.4), circles: int = 1
) -> jax.Array:
    """Zero every channel of ``state (N, H, W, C)`` inside :func:`circle_masks`; other cells are untouched."""
    mask = circle_masks(key, state.shape[0], state.shape[-3:-1], radius, circles)
    return jnp.where(mask, jnp.zeros((), state.dtype), state)
