"""3x3 neighbourhood access by shifted slices of a padded grid.

XLA fuses slices and elementwise arithmetic, while a depthwise convolution becomes a
separate (and, on XLA:CPU, very slow to differentiate) kernel. Every stencil in nca_lab
therefore reads its 9 neighbours as slices of one padded array, padded with what the
stencil needs off the grid (zeros for the Sobel perception, ``-inf`` for the alive mask's
max-pool, ``perceive.padding`` for attention).
"""

from collections.abc import Iterator

import jax.numpy as jnp

#: The 3x3 (Moore) offsets in row-major order, ``(row, col)`` each in ``{-1, 0, 1}``.
OFFSETS: tuple[tuple[int, int], ...] = tuple((dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1))


def pad_grid(x: jnp.ndarray, value: float = 0.0) -> jnp.ndarray:
    """Pad the two spatial axes of ``x`` with shape ``(..., H, W, C)`` by one cell."""
    pad = [(0, 0)] * (x.ndim - 3) + [(1, 1), (1, 1), (0, 0)]
    return jnp.pad(x, pad, constant_values=value)


def shifted(padded: jnp.ndarray, dr: int, dc: int) -> jnp.ndarray:
    """The neighbour at offset ``(dr, dc)`` of every cell, from a :func:`pad_grid` output.

    ``shifted(p, dr, dc)[..., i, j, :] == x[..., i + dr, j + dc, :]`` (padding outside).
    """
    h, w = padded.shape[-3] - 2, padded.shape[-2] - 2
    return padded[..., 1 + dr : 1 + dr + h, 1 + dc : 1 + dc + w, :]


def neighbours(x: jnp.ndarray, value: float = 0.0) -> Iterator[tuple[tuple[int, int], jnp.ndarray]]:
    """Yield ``((dr, dc), neighbour)`` for the 9 offsets of :data:`OFFSETS`."""
    padded = pad_grid(x, value)
    for dr, dc in OFFSETS:
        yield (dr, dc), shifted(padded, dr, dc)


def max_pool3x3(x: jnp.ndarray, value: float = 0.0) -> jnp.ndarray:
    """The maximum over each cell's 3x3 neighbourhood (stride 1), outside the grid ``value``."""
    pooled = None
    for _, nb in neighbours(x, value):
        pooled = nb if pooled is None else jnp.maximum(pooled, nb)
    return pooled


def correlate3x3(x: jnp.ndarray, kernel) -> jnp.ndarray:
    """Cross-correlate every channel with one constant 3x3 kernel, zero padding.

    ``out[i, j] = sum_ab kernel[a, b] * x[i + a - 1, j + b - 1]`` (TensorFlow's convention).
    Zero taps of a constant (NumPy) kernel are skipped at trace time.
    """
    out = None
    for (dr, dc), nb in neighbours(x):
        weight = float(kernel[dr + 1][dc + 1])
        if weight == 0.0:
            continue
        term = nb if weight == 1.0 else weight * nb
        out = term if out is None else out + term
    return jnp.zeros_like(x) if out is None else out
