"""Growing a pattern from a single cell (Growing NCA, experiment 1).

Reference: Mordvintsev et al., "Growing Neural Cellular Automata", Distill 2020,
"Experiment 1: Learning to Grow": every batch starts from the seed (one living cell), the
loss is the RGBA mean squared error against the target after a rollout of random length.
"""

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from nca_lab.alive import ALIVE_THRESHOLD
from nca_lab.data.images import load_target
from nca_lab.errors import require
from nca_lab.nca import NCA, grow
from nca_lab.render import rgba, tile, to_rgb, to_uint8
from nca_lab.tasks.base import Batch, Rendering, Task, rgba_mse

#: The seed cell's alpha and hidden channels; an alive threshold must be below it.
SEED_ALPHA = 1.0


def seed_state(grid_shape: tuple[int, int], num_channels: int) -> np.ndarray:
    """The standard seed: zeros, except the centre cell ``(H // 2, W // 2)`` whose channels 3.. are 1."""
    require(
        np.shape(grid_shape) == (2,),
        f"grid_shape must be (H, W), got {grid_shape!r} (a batch of n seeds: np.stack([seed] * n))",
    )
    require(num_channels >= 4, f"num_channels must be at least 4 (RGBA), got {num_channels}")
    h, w = grid_shape
    seed = np.zeros((h, w, num_channels), np.float32)
    seed[h // 2, w // 2, 3:] = SEED_ALPHA
    return seed


class GrowingTask(Task):
    """Grow ``target`` (an emoji or an image path) from the seed."""

    def __init__(
        self,
        num_channels: int,
        *,
        target: str | Image.Image = "🦎",
        target_size: int = 40,
        padding: int = 16,
        centre_on_body: bool = True,
        alive_threshold: float | None = ALIVE_THRESHOLD,
        render_scale: int = 4,
    ):
        """Load the target and build the seed.

        Args:
            num_channels: state channels (at least 4: RGBA).
            target: an emoji character or the path of an image file; from Python also a PIL
                image, so that a task of one's own can grow a picture it draws (subclass this one).
            target_size: a larger target is shrunk to fit this square (a smaller one is used as is).
            padding: empty cells around the target on every side.
            centre_on_body: shift the target so the seed (centre cell) lies on it
                (see :func:`~nca_lab.data.images.body_at_centre`).
            alive_threshold: alpha threshold of the alive mask; ``None`` turns masking off (an ablation).
            render_scale: pixels per cell in the rendered pictures.
        """
        super().__init__(num_channels, render_scale)
        self.target = jnp.asarray(load_target(target, int(target_size), int(padding), bool(centre_on_body)))
        self.grid_shape = tuple(self.target.shape[:2])
        require(  # at or above it (or NaN, which fails every comparison) every cell is masked to zero at once
            alive_threshold is None or alive_threshold < SEED_ALPHA,
            f"task.alive_threshold must be below the seed's alpha ({SEED_ALPHA:g}: else nothing lives) or null, "
            f"got {alive_threshold}",
        )
        self.alive_threshold = None if alive_threshold is None else float(alive_threshold)
        self.seed = jnp.asarray(seed_state(self.grid_shape, self.num_channels))

    def sample(self, key: jax.Array, n: int) -> Batch:
        """``n`` seeds, all with the same target."""
        del key
        return Batch(
            jnp.broadcast_to(self.seed, (n, *self.seed.shape)),
            jnp.broadcast_to(self.target, (n, *self.target.shape)),
        )

    def loss(self, state: jax.Array, target: jax.Array) -> jax.Array:
        """RGBA mean squared error per sample."""
        return rgba_mse(state, target)

    def evaluate(self, model: NCA, key: jax.Array, horizon: int, n: int = 8) -> dict[str, float]:
        """MSE after ``horizon`` steps from the seed, and after twice as long (persistence)."""
        batch = self.sample(key, n)
        keys = jax.random.split(key, n)
        _, frames = grow(model, batch.state, keys, 2 * horizon, frame_every=horizon)
        return {
            "mse": float(jnp.mean(self.loss(frames[1], batch.target))),
            "mse_2x": float(jnp.mean(self.loss(frames[2], batch.target))),
        }

    def render(self, model: NCA, key: jax.Array, horizon: int, n: int = 4) -> Rendering:
        """GIF: sample 0 growing for twice the horizon (does it stay?).

        Final picture: the target, then ``n`` samples after ``horizon`` steps, the trained length.
        """
        batch = self.sample(key, n)
        _, frames = grow(model, batch.state, jax.random.split(key, n), 2 * horizon, frame_every=1, frame_fn=rgba)
        frames = np.asarray(frames)
        scale = self.render_scale
        gif = to_uint8(to_rgb(frames[:, 0]), scale)
        pictures = to_uint8(to_rgb(np.concatenate([self.target[None], frames[horizon]])), scale)
        return Rendering(frames=gif, final=tile(list(pictures)))
