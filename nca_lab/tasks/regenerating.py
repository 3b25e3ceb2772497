"""Persisting and regenerating a grown pattern (Growing NCA, experiments 2 and 3).

Reference: Mordvintsev et al., "Growing Neural Cellular Automata", Distill 2020,
"Experiment 2: What persists, exists" and "Experiment 3: Learning to regenerate": training
batches come from a pool of earlier results (sorted by loss, the worst replaced by the seed,
see :mod:`nca_lab.train.pool`) so the pattern must stay stable, and the ``damage_n``
lowest-loss samples of each batch lose random discs of cells so it must also regrow.
``damage_n=0`` is the "persistent" experiment 2.
"""

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from nca_lab.alive import ALIVE_THRESHOLD
from nca_lab.errors import numbers_of, require
from nca_lab.nca import NCA, grow
from nca_lab.render import rgba, tile, to_rgb, to_uint8
from nca_lab.tasks.base import Rendering
from nca_lab.tasks.damage import damage_circles
from nca_lab.tasks.growing import GrowingTask

#: Horizons, in multiples of the training rollout, at which long-term stability is measured.
LONG_HORIZONS = (2, 5, 10)
#: Frames the damaged state is held in ``rollout.gif`` so the damage is visible.
DAMAGE_HOLD_FRAMES = 10


class RegeneratingTask(GrowingTask):
    """Grow ``target`` from the seed, keep it, and regrow it after circular damage."""

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
        pool_size: int = 1024,
        damage_n: int = 3,
        damage_radius: tuple[float, float] = (0.1, 0.4),
        damage_circles: int = 1,
    ):
        """Load the target and set the pool and damage.

        Args:
            num_channels: state channels (at least 4: RGBA).
            target: an emoji character or the path of an image file; from Python also a PIL image.
            target_size: a larger target is shrunk to fit this square (a smaller one is used as is).
            padding: empty cells around the target on every side.
            centre_on_body: shift the target so the seed (centre cell) lies on it.
            alive_threshold: alpha threshold of the alive mask; ``None`` turns masking off (an ablation).
            render_scale: pixels per cell in the rendered pictures.
            pool_size: states in the sample pool (the paper: 1024).
            damage_n: lowest-loss samples of each batch that are damaged (the paper: 3);
                0 trains persistence only.
            damage_radius: ``[low, high]`` radius range of the damage discs, in units of half
                the grid size (the authors' notebook, ``make_circle_masks``: ``[0.1, 0.4]``).
            damage_circles: discs cut out of each damaged sample.
        """
        super().__init__(
            num_channels,
            target=target,
            target_size=target_size,
            padding=padding,
            centre_on_body=centre_on_body,
            alive_threshold=alive_threshold,
            render_scale=render_scale,
        )
        require(int(pool_size) > 0, f"task.pool_size must be positive, got {pool_size}")
        require(int(damage_n) >= 0, f"task.damage_n must be non-negative, got {damage_n}")
        what = "[low, high] with 0 < low <= high"
        radius = numbers_of(damage_radius, "task.damage_radius", what)
        require(
            len(radius) == 2 and 0.0 < radius[0] <= radius[1], f"task.damage_radius must be {what}, got {list(radius)}"
        )
        require(int(damage_circles) > 0, f"task.damage_circles must be positive, got {damage_circles}")
        self.pool_size = int(pool_size)
        self.damage_n = int(damage_n)
        self.damage_radius = radius
        self.damage_circles = int(damage_circles)

    def damage(self, state: jax.Array, key: jax.Array) -> jax.Array:
        """Zero all channels inside ``damage_circles`` random discs of each state ``(N, H, W, C)``."""
        return damage_circles(state, key, self.damage_radius, self.damage_circles)

    def evaluate(self, model: NCA, key: jax.Array, horizon: int, n: int = 8) -> dict[str, float]:
        """Grow, damage, recover; and the long-horizon stability of undamaged growth.

        ``n`` samples grow from the seed for ``10 * horizon`` steps. The state at ``horizon``
        gives ``mse`` (before damage); it is then damaged (``mse_damaged``, right after) and
        runs ``horizon`` more steps (``mse_recovered``). ``mse_2x``, ``mse_5x`` and
        ``mse_10x`` are the undamaged samples at 2, 5 and 10 times the horizon. All are the
        RGBA mean squared error against the target, averaged over samples.
        """
        sample_key, grow_key, damage_key, recover_key = jax.random.split(key, 4)
        batch = self.sample(sample_key, n)
        long_run = max(LONG_HORIZONS) * horizon
        _, frames = grow(model, batch.state, jax.random.split(grow_key, n), long_run, frame_every=horizon)
        damaged = self.damage(frames[1], damage_key)
        recovered, _ = grow(model, damaged, jax.random.split(recover_key, n), horizon)

        def mse(state: jax.Array) -> float:
            return float(jnp.mean(self.loss(state, batch.target)))

        metrics = {"mse": mse(frames[1]), "mse_damaged": mse(damaged), "mse_recovered": mse(recovered)}
        metrics.update({f"mse_{k}x": mse(frames[k]) for k in LONG_HORIZONS})
        return metrics

    def render(self, model: NCA, key: jax.Array, horizon: int, n: int = 3) -> Rendering:
        """GIF: sample 0 grows for ``horizon`` steps, is damaged, recovers for ``horizon`` steps.

        Final picture: one row per sample, columns target, grown, damaged, recovered.
        """
        sample_key, grow_key, damage_key, recover_key = jax.random.split(key, 4)
        batch = self.sample(sample_key, n)
        grow_keys, recover_keys = jax.random.split(grow_key, n), jax.random.split(recover_key, n)
        grown, grow_frames = grow(model, batch.state, grow_keys, horizon, frame_every=1, frame_fn=rgba)
        damaged = self.damage(grown, damage_key)
        recovered, recover_frames = grow(model, damaged, recover_keys, horizon, frame_every=1, frame_fn=rgba)
        held = np.repeat(np.asarray(recover_frames[:1, 0]), DAMAGE_HOLD_FRAMES, axis=0)
        states = np.concatenate([np.asarray(grow_frames[:, 0]), held, np.asarray(recover_frames[1:, 0])])
        scale = self.render_scale
        gif = to_uint8(to_rgb(states), scale)
        target = np.broadcast_to(np.asarray(self.target), (n, *self.target.shape))
        columns = [target, *(rgba(np.asarray(s)) for s in (grown, damaged, recovered))]
        pictures = to_uint8(to_rgb(np.stack(columns, axis=1)), scale)
        return Rendering(frames=gif, final=tile(list(pictures.reshape(-1, *pictures.shape[-3:])), columns=4))
