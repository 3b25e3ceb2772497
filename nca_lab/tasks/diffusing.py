"""Denoising with an NCA (the "diffusing NCA"): restore a target from a noised copy of it.

Reference: CAX's "Diffusing Neural Cellular Automata" example (Faldor and Cully,
``maxencefaldor/cax`` ``examples/43_diffusing_nca.ipynb``): the NCA starts from ``(1 - a) *
target + a * noise``, a straight mix of target and noise (not the ``sqrt(alpha_bar)`` mix of
denoising diffusion models, Ho et al., NeurIPS 2020), with one ``a ~ U[noise_range]`` (default
[0, 1]) per sample and hidden channels at zero, runs without a seed or an alive mask (CAX's
example keeps its ``NCAUpdate`` alive mask; a denoiser must keep every pixel), and is scored on
the RGBA of its final state.
At ``a = 1`` nothing of the target is left and the NCA must generate it. CAX draws standard
normal noise and clips the mix to [0, 1]; here the default noise is uniform in [0, 1] (so the
mix stays in [0, 1] without clipping), and ``noise="normal"`` gives unclipped standard normal
noise. CAX's example also trains another model another way (64 channels, hidden 256, 64-step
rollouts, Adam 1e-3 with a linear decay, global-norm clipping, a target not premultiplied);
here the model and trainer are nca_lab's defaults, those of the growing task.

With ``fixed_input=True`` each cell also keeps the noised RGBA in its last 4 channels, which no
step changes, as ViTCA keeps its input (Tesfaldet et al., "Attention-based Neural Cellular
Automata", NeurIPS 2022); its RGBA starts from the noised target, or with ``output_init="grey"``
at opaque mid-grey (RGB 0.5), ViTCA's constant start.
"""

from decimal import ROUND_HALF_UP, Decimal
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from nca_lab.data.images import load_target
from nca_lab.errors import numbers_of, require
from nca_lab.nca import NCA, grow
from nca_lab.render import rgba, tile, to_rgb, to_uint8
from nca_lab.tasks.base import Batch, Rendering, Task, input_channels, input_of, psnr, rgba_mse, with_input

NOISES = ("uniform", "normal")


def corrupt(target: jax.Array, a: jax.Array, noise: jax.Array) -> jax.Array:
    """``(1 - a) * target + a * noise``; ``a`` broadcasts against ``target`` (``a = 0``: the target)."""
    return (1.0 - a) * target + a * noise


@partial(jax.jit, static_argnames=("num_channels", "noise"))
def _noisy_states(key: jax.Array, target: jax.Array, a: jax.Array, num_channels: int, noise: str) -> jax.Array:
    """States ``(N, H, W, C)``: RGBA ``corrupt(target, a, noise)`` for levels ``a (N,)``, hidden channels zero.

    ``noise`` is ``"uniform"`` (each value uniform in [0, 1]) or ``"normal"`` (standard normal).
    """
    shape = (a.shape[0], *target.shape)
    draw = jax.random.uniform if noise == "uniform" else jax.random.normal
    rgba = corrupt(target, a[:, None, None, None], draw(key, shape))
    hidden = jnp.zeros((*shape[:-1], num_channels - 4), rgba.dtype)
    return jnp.concatenate([rgba, hidden], axis=-1)


class DiffusingTask(Task):
    """Restore ``target`` (an emoji or an image path) from ``(1 - a) * target + a * noise``."""

    alive_threshold = None
    free_on_resume = ("eval_levels",)
    added_later = {"fixed_input": False, "output_init": "input"}

    def __init__(
        self,
        num_channels: int,
        *,
        target: str = "🦎",
        target_size: int = 40,
        padding: int = 8,
        noise: str = "uniform",
        noise_range: tuple[float, float] = (0.0, 1.0),
        eval_levels: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0),
        fixed_input: bool = False,
        output_init: str = "input",
        render_scale: int = 4,
    ):
        """Load the target and set the noise.

        Args:
            num_channels: state channels (at least 4: RGBA).
            target: an emoji character or the path of an image file.
            target_size: a larger target is shrunk to fit this square (a smaller one is used as is).
            padding: empty cells around the target on every side.
            noise: ``"uniform"`` (each RGBA value uniform in [0, 1], the range of images) or
                ``"normal"`` (standard normal, as in diffusion models).
            noise_range: ``[low, high]``; each training sample draws ``a`` uniformly from it.
            eval_levels: the fixed ``a`` at which evaluation reports PSNR.
            fixed_input: keep the noised RGBA in the last 4 channels too, unchanged by every
                step (ViTCA's input channels; needs ``num_channels >= 8``).
            output_init: with ``fixed_input``, what the RGBA starts at: ``"input"`` (the
                noised target) or ``"grey"`` (opaque, RGB 0.5: ViTCA's constant start).
            render_scale: pixels per cell in the rendered pictures.
        """
        super().__init__(num_channels, render_scale)
        self.fixed_channels = input_channels(fixed_input, num_channels, output_init)
        self.output_init = output_init
        require(noise in NOISES, f"task.noise must be one of {NOISES}, got {noise!r}")
        what = "[low, high] with 0 <= low <= high <= 1"
        low_high = numbers_of(noise_range, "task.noise_range", what)
        require(
            len(low_high) == 2 and 0.0 <= low_high[0] <= low_high[1] <= 1.0,
            f"task.noise_range must be {what}, got {list(low_high)}",
        )
        what = "a list of noise levels in (0, 1]"
        levels = numbers_of(eval_levels, "task.eval_levels", what)
        require(
            len(levels) > 0 and all(0.0 < a <= 1.0 for a in levels),
            f"task.eval_levels must be {what}, got {list(levels)}",
        )
        #: Each level's metric names' suffix, in percent, half up: ``a25`` for 0.25, ``a13`` for 0.125.
        self.level_names = [f"a{Decimal(str(a)).scaleb(2).quantize(Decimal(1), ROUND_HALF_UP)}" for a in levels]
        require(
            len(set(self.level_names)) == len(levels),  # else one level's metrics replaced another's
            f"task.eval_levels must differ in percent (each is reported as psnr_a<percent>), got {list(levels)}",
        )
        self.target = jnp.asarray(load_target(target, int(target_size), int(padding), False))
        self.noise = noise
        self.noise_range = low_high
        self.eval_levels = levels

    def noisy_states(self, key: jax.Array, a: jax.Array) -> jax.Array:
        """States ``(N, H, W, C)`` whose RGBA is the target corrupted at levels ``a (N,)``, hidden
        zero (with ``fixed_input``, but for the last 4 channels: the noised RGBA, kept; see
        :func:`~nca_lab.tasks.base.with_input`)."""
        noisy = _noisy_states(key, self.target, a, self.num_channels, self.noise)
        return with_input(noisy, self.fixed_channels, self.output_init)

    def sample(self, key: jax.Array, n: int) -> Batch:
        """``n`` noised targets, each at its own level ``a ~ U[noise_range]``."""
        level_key, noise_key = jax.random.split(key)
        a = jax.random.uniform(level_key, (n,), minval=self.noise_range[0], maxval=self.noise_range[1])
        return Batch(self.noisy_states(noise_key, a), jnp.broadcast_to(self.target, (n, *self.target.shape)))

    def loss(self, state: jax.Array, target: jax.Array) -> jax.Array:
        """RGBA mean squared error per sample."""
        return rgba_mse(state, target)

    def _levels(self, key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
        """The levels ``(L * n,)`` and states of ``n`` noisy samples per evaluation level, level-major."""
        a = np.repeat(np.asarray(self.eval_levels, np.float32), n)
        return a, self.noisy_states(key, a)

    def evaluate(self, model: NCA, key: jax.Array, horizon: int, n: int = 8) -> dict[str, float]:
        """PSNR against the clean target at each level of ``eval_levels``, and of the noisy input.

        For each level ``a``, ``n`` noisy copies run ``horizon`` steps; ``psnr_a<100a>`` is
        the PSNR of their state's RGBA channels (premultiplied, alpha included; clipped to [0, 1])
        against the target's, over the whole grid and all samples, and ``psnr_input_a<100a>`` that
        of the noisy inputs themselves, clipped the same way (the do-nothing baseline; with
        ``noise=normal`` the model gets them unclipped). Not the PSNR of the pictures, which
        composite RGB over white.
        """
        noise_key, rollout_key = jax.random.split(key)
        a, noisy = self._levels(noise_key, n)
        restored, _ = grow(model, noisy, jax.random.split(rollout_key, a.shape[0]), horizon)
        target = np.asarray(self.target)
        shown = {"psnr": np.asarray(restored)[..., :4], "psnr_input": np.asarray(input_of(noisy, self.fixed_channels))}
        metrics = {}
        for i, name in enumerate(self.level_names):
            for prefix, states in shown.items():
                error = np.clip(states[i * n : (i + 1) * n], 0.0, 1.0) - target
                metrics[f"{prefix}_{name}"] = psnr(np.mean(np.square(error)))
        return metrics

    def render(self, model: NCA, key: jax.Array, horizon: int) -> Rendering:
        """GIF: one sample per evaluation level, side by side, for twice the horizon.

        Final picture: top row the target and the noisy inputs, bottom row the target and
        the states after ``horizon`` steps.
        """
        noise_key, rollout_key = jax.random.split(key)
        a, noisy = self._levels(noise_key, 1)
        keys = jax.random.split(rollout_key, a.shape[0])
        _, frames = grow(model, noisy, keys, 2 * horizon, frame_every=1, frame_fn=rgba)
        scale = self.render_scale
        frames = to_uint8(to_rgb(np.asarray(frames)), scale)
        gif = np.stack([tile(list(f)) for f in frames])
        target = to_uint8(to_rgb(np.asarray(self.target)), scale)
        # the inputs: frame 0, unless it starts grey
        inputs = to_uint8(to_rgb(np.asarray(input_of(noisy, self.fixed_channels))), scale)
        columns = len(self.eval_levels) + 1
        final = tile([target, *inputs, target, *frames[horizon]], columns=columns)
        return Rendering(frames=gif, final=final)
